"""The eBPF plane's kernel side without a lab (root): clang builds the
programs, bpftool loads them, the maps answer through the raw bpf()
syscall, tcx links attach them, and the process's exit detaches them. A
bpffs a loader left behind (killed while loading) is unmounted by the next."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dmvpn.dataplane import bpfsys
from dmvpn.dataplane.ebpf import MAPS, PROGRAMS, build_object

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")

INSIDE = """
import json, socket, sys
from pathlib import Path
from dmvpn.dataplane import bpfsys
from dmvpn.dataplane.ebpf import MAPS, PEER_VALUE, PROGRAMS
loaded = bpfsys.load_object(Path(sys.argv[1]), PROGRAMS, MAPS)
v0 = socket.if_nametoindex("v0")
link = bpfsys.link_create(loaded.progs["dmvpn_ingress"], v0, bpfsys.BPF_TCX_INGRESS)
peers = bpfsys.BpfMap(loaded.maps["peers"], 4, PEER_VALUE.size)
key = bytes([172, 30, 0, 12])
fresh = peers.update(key, bytes(PEER_VALUE.size), bpfsys.BPF_NOEXIST)
again = peers.update(key, bytes(PEER_VALUE.size), bpfsys.BPF_NOEXIST)
items = [k.hex() for k, _ in peers.items()]
deleted, missing = peers.delete(key), peers.delete(key)
print(json.dumps({"fresh": fresh, "again": again, "items": items, "deleted": deleted,
                  "missing": missing, "lookup": peers.lookup(key),
                  "attached": bpfsys.query_tcx(v0, bpfsys.BPF_TCX_INGRESS)}))
"""

QUERY = """
import json, socket
from dmvpn.dataplane import bpfsys
print(json.dumps(bpfsys.query_tcx(socket.if_nametoindex("v0"), bpfsys.BPF_TCX_INGRESS)))
"""


def test_load_attach_maps_and_detach_on_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DMVPN_BPF_CACHE", str(tmp_path / "cache"))
    obj = build_object()
    assert obj.parent == tmp_path / "cache" and build_object() == obj  # cached
    ns = f"dmvt{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        run = ["ip", "netns", "exec", ns]
        subprocess.run([*run, "ip", "link", "add", "v0", "type", "veth", "peer", "v1"], check=True)
        subprocess.run([*run, "ip", "link", "set", "v0", "up"], check=True)
        out = subprocess.run(
            [*run, sys.executable, "-c", INSIDE, str(obj)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        got = json.loads(out)
        assert got["fresh"] is True and got["again"] is False
        assert got["items"] == ["ac1e000c"]
        assert got["deleted"] is True and got["missing"] is False and got["lookup"] is None
        assert len(got["attached"]) == 1
        # The process is gone: its link, and the program with it.
        after = subprocess.run(
            [*run, sys.executable, "-c", QUERY], capture_output=True, text=True, check=True
        ).stdout
        assert json.loads(after) == []
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_a_bpffs_left_by_a_dead_loader_goes_at_the_next_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DMVPN_BPF_CACHE", str(tmp_path))
    # No process has PID 4194304 + 1 (above pid_max's maximum).
    left = Path("/tmp") / f"{bpfsys.BPFFS_PREFIX}4194305-test"
    left.mkdir()
    try:
        subprocess.run(["mount", "-t", "bpf", "bpf", str(left)], check=True)
        assert left in bpfsys._stale_mounts()
        bpfsys.load_object(build_object(), PROGRAMS, MAPS).close()
        assert f" {left} " not in Path("/proc/self/mountinfo").read_text()
        assert not left.exists()
    finally:
        subprocess.run(["umount", "-l", str(left)], check=False, capture_output=True)
        if left.exists():
            left.rmdir()


NODE = """
node: xtest
socket: {sock}
interfaces:
  - name: dmvpn0
    address: 10.0.0.11/24
    dataplane: {plane}
    tunnel: {{source: 172.30.0.11, key: 42}}
    nhrp: {{network_id: 1, nhs: [{{address: 10.0.0.1, nbma: 172.30.0.1}}]}}
"""


@pytest.mark.parametrize("plane", ["auto", "ebpf"])
def test_a_plane_that_cannot_load(tmp_path: Path, plane: str) -> None:
    """`auto` runs on the userspace path and says why; `ebpf` refuses to
    run and leaves no interface (the cache directory cannot be made here)."""
    cfg = tmp_path / "node.yaml"
    cfg.write_text(NODE.format(sock=tmp_path / "x.sock", plane=plane))
    ns = f"dmvu{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    run = ["ip", "netns", "exec", ns]
    proc: subprocess.Popen[str] | None = None
    try:
        subprocess.run([*run, "ip", "link", "add", "v0", "type", "veth", "peer", "v1"], check=True)
        subprocess.run([*run, "ip", "addr", "add", "172.30.0.11/24", "dev", "v0"], check=True)
        subprocess.run([*run, "ip", "link", "set", "v0", "up"], check=True)
        dmvpn = str(Path(sys.executable).with_name("dmvpn"))
        env = {**os.environ, "DMVPN_BPF_CACHE": "/proc/no-such-dir"}
        proc = subprocess.Popen(
            [*run, dmvpn, "run", "-c", str(cfg)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        try:
            out, _ = proc.communicate(timeout=3)
        except subprocess.TimeoutExpired:
            links = subprocess.run([*run, "ip", "link"], capture_output=True, text=True).stdout
            proc.terminate()
            out, _ = proc.communicate(timeout=10)
        else:
            links = ""
        if plane == "auto":
            assert "dmvpn0: userspace data plane (eBPF: " in out, out
            assert "dmvpn0" in links  # running, on the userspace path
        else:
            assert proc.returncode != 0 and "eBPF data plane: " in out, out
            links = subprocess.run([*run, "ip", "link"], capture_output=True, text=True).stdout
            assert "dmvpn0" not in links
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)
