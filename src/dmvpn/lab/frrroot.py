"""A Debian root with a newer FRR for the lab's frr nodes, made with debootstrap.

Debian 12's FRR (8.4) lacks `ip nhrp authentication` (and ignores the line);
Debian 13 ("trixie") has FRR 10.3. A lab guest (`dmvpn.lab.vm`) boots such a
directory as its root (the topology's `frr_root`). Building one takes about a
minute with a reachable mirror; it is kept in a cache directory and reused.

    python -m dmvpn.lab.frrroot [CACHE_DIR]   build (or find) it, print its path
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .netns import LabError

__all__ = ["DEFAULT_CACHE", "PACKAGES", "SUITE", "ensure_root"]

SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
DEFAULT_CACHE = Path(os.environ.get("DMVPN_FRR_ROOT_CACHE", "/var/cache/dmvpn-lab"))
# What the guest runs beyond minbase: its init and boot script (dmvpn.lab.vm,
# dmvpn.lab.frrnode) and the agent (python3).
PACKAGES = ["frr", "iproute2", "kmod", "iptables", "procps", "python3-minimal"]
_STAMP = ".dmvpn-frr-root"


def ensure_root(
    cache: Path | str = DEFAULT_CACHE, suite: str = SUITE, mirror: str = MIRROR
) -> Path:
    """The root directory, built first if the cache has none (LabError if that fails)."""
    root = Path(cache) / f"{suite}-frr"
    stamp = f"{suite} {' '.join(PACKAGES)}\n"
    with contextlib.suppress(OSError):
        if (root / _STAMP).read_text() == stamp:
            return root  # built with the same packages
    if shutil.which("debootstrap") is None:
        raise LabError("building an FRR root needs debootstrap: apt-get install debootstrap")
    if os.geteuid() != 0:
        raise LabError("building an FRR root needs root (debootstrap, chroot)")
    work = root.with_name(root.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    work.parent.mkdir(parents=True, exist_ok=True)
    # minbase first, FRR second: with --include, debootstrap unpacks systemd
    # (which frr pulls in) before its libraries are configured, and fails.
    _run(["debootstrap", "--variant=minbase", suite, str(work), mirror], "debootstrap")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    _run(["chroot", str(work), *install], "install FRR in the root", env)
    _run(["chroot", str(work), "apt-get", "clean"], "clean the apt cache")
    (work / _STAMP).write_text(stamp)
    shutil.rmtree(root, ignore_errors=True)
    work.rename(root)
    return root


def _run(argv: list[str], what: str, env: dict[str, str] | None = None) -> None:
    res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).splitlines()[-15:])
        raise LabError(f"could not {what} (exit {res.returncode}):\n{tail}")


if __name__ == "__main__":
    print(ensure_root(*sys.argv[1:2]))
