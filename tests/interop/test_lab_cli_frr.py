"""`dmvpn lab` with frr nodes, through the command line: up, status, show and
exec in the guest, and down leaving nothing behind (no QEMU process, tap,
namespace or file)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from .mixed import DMVPN

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, guest taps)")

PREFIX = f"dlf{os.getpid() % 10000}-"
TOPOLOGY = {
    "holdtime": 30,
    "key": 77,
    "nodes": {
        "hubs": [{"name": "hub1", "kind": "frr"}],
        "spokes": [{"name": "spoke1", "kind": "frr"}, {"name": "spoke2"}],
    },
}


def lab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DMVPN, "lab", *args], capture_output=True, text=True, timeout=120)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_lab_up_show_exec_down_with_frr_nodes(tmp_path: Path) -> None:
    topo = tmp_path / "topo.yaml"
    topo.write_text(yaml.safe_dump(TOPOLOGY))
    qemu_pids: list[int] = []
    try:
        up = lab("up", str(topo), "--prefix", PREFIX)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "booting QEMU guests with FRR nhrpd on hub1, spoke1" in up.stdout
        assert "every spoke registered" in up.stdout

        status = json.loads(lab("status", "--prefix", PREFIX, "--json").stdout)
        nodes = {n["name"]: n for n in status["nodes"]}
        assert [nodes[n]["kind"] for n in ("hub1", "spoke1", "spoke2")] == ["frr", "frr", "dmvpn"]
        qemu_pids += nodes["hub1"]["pids"] + nodes["spoke1"]["pids"]
        # The guest's console and nhrpd's own log land in the lab's run directory.
        assert "NHRP" in Path(nodes["spoke1"]["log"]).read_text()
        assert "up: kernel 6.1.0-" in Path(nodes["spoke1"]["console"]).read_text()
        assert len(qemu_pids) == 2 and all(_alive(p) for p in qemu_pids)
        table = lab("status", "--prefix", PREFIX).stdout
        assert "FRR nhrpd in QEMU running" in table

        # `show` speaks vtysh on an frr node: nhrpd's hub lists both spokes.
        # Polled, not read once: an nhrpd hub drops a fresh nhrpd spoke's
        # first registration ~1 s after accepting it, and the spoke's next
        # refresh (holdtime / 3 = 10 s) restores it (docs/INTEROP.md).
        deadline = time.monotonic() + 25
        while True:
            cache = lab("show", "--prefix", PREFIX, "hub1", "nhrp")
            assert cache.returncode == 0, cache.stderr
            both = all(f"dynamic  10.0.0.1{n}" in cache.stdout for n in (1, 2))
            if both or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert both, cache.stdout
        nhs = json.loads(lab("show", "--prefix", PREFIX, "spoke1", "nhrp", "nhs", "--json").stdout)
        assert nhs["table"][0]["protocol"] == "10.0.0.1"
        bad = lab("show", "--prefix", PREFIX, "spoke1", "nhrp", "traffic")
        assert bad.returncode == 2 and "no nhrpd equivalent" in bad.stderr

        # `exec` runs in the guest: the kernel's mGRE with the topology's key.
        link = lab("exec", "--prefix", PREFIX, "spoke1", "--", "ip", "-d", "link", "show", "mgre0")
        assert link.returncode == 0 and "ikey 0.0.0.77" in link.stdout, link.stdout
        assert lab("exec", "--prefix", PREFIX, "spoke1", "--", "false").returncode == 1
        # The hosts behind an nhrpd spoke and ours reach each other.
        ping = lab(
            "exec", "--prefix", PREFIX, "host1", "--", "ping", "-c", "2", "-W", "2", "192.168.2.10"
        )
        assert ping.returncode == 0, ping.stdout
    finally:
        down = lab("down", "--prefix", PREFIX)
    assert down.returncode == 0, down.stderr
    assert not any(_alive(p) for p in qemu_pids)
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert PREFIX not in netns
    assert not Path(f"/run/dmvpn-lab/{PREFIX}").exists()
    assert not Path(f"/run/dmvpn-lab/{PREFIX}.json").exists()
    # No QEMU whose files were in the lab's run directory.
    leftovers = subprocess.run(
        ["pgrep", "-f", f"/run/dmvpn-lab/{PREFIX}/"], capture_output=True, text=True
    )
    assert leftovers.stdout == "", leftovers.stdout
