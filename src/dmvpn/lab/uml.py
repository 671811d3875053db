"""The frr nodes of a lab: FRR zebra + nhrpd on a real kernel mGRE, in User-Mode Linux.

Each frr router is one `linux.uml` process, started inside the router's
namespace (where `Lab.up` put the taps UML opens by name) and registered with
`Lab.register_pid`, so `Lab.down` stops it by PID like any daemon. Everything
else it uses sits in its directory in the lab's run directory, which
`Lab.down` removes:

    <node>.frr/setup.sh, zebra.conf, nhrpd.conf   written here (dmvpn.lab.frrconf)
    <node>.frr/kernel.log    UML's own console (boot messages, panics)
    <node>.frr/console.log   the guest init's output
    <node>.frr/ready         nhrpd is running
    <node>.frr/ctl/          the control channel: ID.cmd in, ID.out + ID.rc back
    <node>.frr/uml/          UML's uml_dir and TMPDIR

The guest's root is a hostfs: the host's / (Debian 12, FRR 8.4) by default,
or a directory holding another Debian (the topology's `frr_root`, e.g. one
made by `dmvpn.lab.frrroot` with a newer FRR). The control channel is a directory
rather than a console or network, so it needs no pty and no address.
"""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .frrconf import guest_setup, nhrpd_conf, vtysh_command, zebra_conf
from .netns import FRR_LAN_TAP, FRR_NBMA_TAP, Lab, LabError
from .runner import REGISTRATION_TIMEOUT, Runner

__all__ = ["BOOT_TIMEOUT", "INIT", "GuestResult", "UmlNodes", "nhs_in_cache", "wait_registered"]

INIT = Path(__file__).with_name("frr") / "uml-init.sh"
# Boot to nhrpd ready takes 3-5 s per guest on an idle machine; several boot
# at once on two shared cores.
BOOT_TIMEOUT = 90.0
_MEM = "256M"  # nhrpd guests use 60-80 MiB


@dataclass(frozen=True, slots=True)
class GuestResult:
    """What a command run in a guest gave back."""

    returncode: int
    output: str  # stdout and stderr, interleaved


class UmlNodes:
    """Boots, talks to and stops the frr routers of one lab."""

    def __init__(self, lab: Lab, root: Path | str | None = None) -> None:
        self.lab = lab
        self.root = Path(root if root is not None else lab.topology.frr_root)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._ids = itertools.count(1)

    @property
    def nodes(self) -> list[str]:
        return [p.name for p in self.lab.topology.frr_routers]

    def dir(self, node: str) -> Path:
        return self.lab.run_dir / f"{node}.frr"

    # -- starting -------------------------------------------------------------

    def start(self, nodes: Iterable[str] | None = None) -> None:
        """Write each guest's files and boot it (all frr routers by default); no wait."""
        if shutil.which("linux.uml") is None:
            raise LabError("frr nodes need User-Mode Linux: apt-get install user-mode-linux kmod")
        init = self._init_path()
        topo = self.lab.topology
        for node in self.nodes if nodes is None else nodes:
            plan = topo.plan(node)
            work = self.dir(node)
            shutil.rmtree(work, ignore_errors=True)
            (work / "uml").mkdir(parents=True, mode=0o700)
            (work / "setup.sh").write_text(guest_setup(topo, node))
            (work / "zebra.conf").write_text(zebra_conf(node))
            conf = work / "nhrpd.conf"
            conf.touch(mode=0o600)  # it may hold the NHRP password
            conf.write_text(nhrpd_conf(topo, node))
            nics = [f"vec0:transport=tap,ifname={FRR_NBMA_TAP}"]
            if plan.lan is not None:
                nics.append(f"vec1:transport=tap,ifname={FRR_LAN_TAP}")
            argv = [
                "linux.uml", f"umid={self.lab.prefix}{node}", f"uml_dir={work / 'uml'}",
                f"mem={_MEM}", "root=/dev/root", "rootfstype=hostfs", f"rootflags={self.root}",
                "rw", f"init={init}", "con0=fd:0,fd:1", "con=null", *nics, f"DIR={work}",
            ]  # fmt: skip
            with (work / "kernel.log").open("wb") as log:
                self.procs[node] = self.lab.popen(
                    node,
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    # UML's memory file goes to TMPDIR: keep it in the run dir.
                    env={**os.environ, "TMPDIR": str(work / "uml")},
                )

    def _init_path(self) -> Path:
        """The init script as the guest sees it (inside its root)."""
        if self.root == Path("/"):
            return INIT
        # Another root: the script must be inside it.
        target = self.root / "usr/local/sbin/dmvpn-uml-init"
        target.parent.mkdir(parents=True, exist_ok=True)
        # Renamed into place: another lab may be booting from this root.
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.copyfile(INIT, tmp)
        tmp.chmod(0o755)
        tmp.rename(target)
        return Path("/usr/local/sbin/dmvpn-uml-init")

    def ready(self, node: str) -> bool:
        return (self.dir(node) / "ready").exists()

    def wait_ready(
        self, nodes: Iterable[str] | None = None, timeout: float = BOOT_TIMEOUT
    ) -> float:
        """Wait until nhrpd runs in every guest; the seconds it took. LabError with
        the guest's console if one dies or the time runs out."""
        todo = list(self.nodes if nodes is None else nodes)
        start = time.monotonic()
        while todo:
            for node in list(todo):
                if self.ready(node):
                    todo.remove(node)
                    problem = self.config_errors(node)
                    if problem:
                        raise LabError(f"nhrpd on {node} refused its configuration: {problem}")
                elif node in self.procs and self.procs[node].poll() is not None:
                    raise LabError(f"UML for {node} exited before nhrpd ran\n{self.tail(node)}")
            if todo and time.monotonic() - start > timeout:
                tails = "\n".join(self.tail(n) for n in todo)
                raise LabError(f"timed out after {timeout:g} s booting {', '.join(todo)}\n{tails}")
            time.sleep(0.1)
        return time.monotonic() - start

    def config_errors(self, node: str) -> str:
        """Lines nhrpd did not understand in its config ("" if none).

        nhrpd only logs unknown lines and runs on without them: FRR 8.4 has no
        `ip nhrp authentication`, and would silently run unauthenticated.
        """
        res = self.run(node, "grep -ihE 'unknown command|error occurred' /run/frr/*.log || true")
        return " | ".join(line.strip() for line in res.output.splitlines() if line.strip())

    def tail(self, node: str, lines: int = 20) -> str:
        out = []
        for name in ("console.log", "kernel.log"):
            try:
                text = (self.dir(node) / name).read_text(errors="replace")
            except FileNotFoundError:
                continue
            out.append(f"--- {node} {name}:\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(out) or f"--- {node}: no output"

    # -- talking to a guest ---------------------------------------------------

    def run(self, node: str, script: str, timeout: float = 30.0) -> GuestResult:
        """Run a shell script in the guest (as root); its exit status and output."""
        if node not in self.nodes:
            raise LabError(f"{node} is not an frr node")
        ctl = self.dir(node) / "ctl"
        if not self.ready(node):
            raise LabError(f"the guest of {node} is not running (no {self.dir(node)}/ready)")
        ident = f"{os.getpid()}-{next(self._ids)}"
        tmp = ctl / f"{ident}.tmp"
        tmp.write_text(script + "\n")
        tmp.rename(ctl / f"{ident}.cmd")  # the guest never sees half a script
        rc = ctl / f"{ident}.rc"
        deadline = time.monotonic() + timeout
        while not rc.exists():
            if time.monotonic() > deadline:
                raise LabError(f"`{script}` on {node} did not finish in {timeout:g} s")
            proc = self.procs.get(node)
            if proc is not None and proc.poll() is not None:
                raise LabError(f"UML for {node} exited\n{self.tail(node)}")
            time.sleep(0.05)
        out = (ctl / f"{ident}.out").read_text(errors="replace")
        code = int(rc.read_text().strip() or "255")
        for suffix in ("run", "out", "rc"):
            (ctl / f"{ident}.{suffix}").unlink(missing_ok=True)
        return GuestResult(code, out)

    def vtysh(self, node: str, *commands: str, timeout: float = 30.0) -> str:
        """nhrpd's answer to vtysh commands (LabError if vtysh fails)."""
        argv = ["vtysh", "--vty_socket", "/run/frr"]
        for c in commands:
            argv += ["-c", c]
        res = self.run(node, shlex.join(argv), timeout)
        if res.returncode != 0:
            raise LabError(f"vtysh on {node} failed ({res.returncode}): {res.output.strip()}")
        return res.output

    def show(self, node: str, args: list[str] | tuple[str, ...]) -> str:
        """`dmvpn show ARGS` as nhrpd's matching vtysh command (ValueError if none)."""
        return self.vtysh(node, vtysh_command(args))

    def stop_nhrpd(self, node: str) -> None:
        """Kill nhrpd without a word (SIGKILL): the peer simply vanishes."""
        res = self.run(node, "kill -9 $(cat /run/frr/nhrpd.pid) && rm -f /run/frr/nhrpd.vty")
        if res.returncode != 0:
            raise LabError(f"could not stop nhrpd on {node}: {res.output.strip()}")

    def start_nhrpd(self, node: str) -> None:
        """Start nhrpd again (after `stop_nhrpd`), with the same configuration."""
        res = self.run(node, "sh /run/frr/start-nhrpd && test -S /run/frr/nhrpd.vty")
        if res.returncode != 0:
            raise LabError(f"could not start nhrpd on {node}: {res.output.strip()}")

    def registered(self, spoke: str) -> bool:
        """True once the frr spoke's registration with every hub was answered."""
        hubs = {str(h.tunnel.ip) for h in self.lab.topology.hubs if h.tunnel is not None}
        return hubs <= nhs_in_cache(self.vtysh(spoke, "show ip nhrp cache"))

    # -- stopping -------------------------------------------------------------

    def stop(self, node: str, timeout: float = 15.0) -> None:
        """Ask the guest to power off; kill UML by PID if it does not."""
        ctl = self.dir(node) / "ctl"
        if ctl.is_dir():
            (ctl / "halt").touch()
        proc = self.procs.get(node)
        if proc is None:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop_all(self) -> None:
        for node in self.nodes:
            (self.dir(node) / "ctl").mkdir(parents=True, exist_ok=True)
            (self.dir(node) / "ctl" / "halt").touch()
        for node in self.nodes:
            self.stop(node)


def nhs_in_cache(show_cache: str) -> set[str]:
    """The NHS protocol addresses in nhrpd's `show ip nhrp cache` text.

    nhrpd 8.4's `show ip nhrp nhs` has no state column: an NHS is up (its
    registration answered) once the cache holds an entry of type `nhs` for it.
    """
    up = set()
    for line in show_cache.splitlines():
        words = line.split()
        if len(words) >= 3 and words[1] == "nhs":
            up.add(words[2])
    return up


def wait_registered(runner: Runner, uml: UmlNodes, timeout: float = REGISTRATION_TIMEOUT) -> float:
    """Wait until every spoke, of either kind, has registered with every hub."""
    topo = runner.lab.topology
    native = [p.name for p in topo.spokes if p.kind == "dmvpn"]
    waiting = {p.name for p in topo.spokes if p.kind == "frr"}

    def check() -> bool:
        for spoke in sorted(waiting):
            if uml.registered(spoke):  # a vtysh round trip: ~1 s, so one at a time
                waiting.discard(spoke)
            break
        return not waiting and all(runner.registered(s) for s in native)

    return runner.wait_for("every spoke to register with every hub", check, timeout)
