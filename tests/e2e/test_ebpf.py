"""The eBPF data plane in network namespaces: a phase 3 cloud (hub1, spoke1,
spoke2, their hosts) with `dataplane: ebpf` on every router. host1 reaches
host2 via the hub, then directly, on the fast path; an unbound peer falls
back to the userspace path mid-flow; the programs are gone after SIGTERM
and after kill -9 (tcx links held only by the daemon's descriptors)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dmvpn.lab.netns import Lab
from dmvpn.lab.topology import Topology
from tests.e2e.test_cloud import Cloud

DMVPN = str(Path(sys.executable).with_name("dmvpn"))

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root for network namespaces (CI runs as root)"
)

# Run inside a node: the program ids on the underlay's tcx ingress and the
# TAP's tcx egress (the TAP may be gone: then none).
QUERY = """
import json, socket
from dmvpn.dataplane import bpfsys
def ids(dev, kind):
    try:
        return bpfsys.query_tcx(socket.if_nametoindex(dev), kind)
    except OSError:
        return []
print(json.dumps({"ingress": ids("nbma0", bpfsys.BPF_TCX_INGRESS),
                  "egress": ids("dmvpn0", bpfsys.BPF_TCX_EGRESS)}))
"""


class EbpfCloud(Cloud):
    def start(self, node: str) -> None:
        config = json.loads(json.dumps(self.topo.node_config(node), default=str))
        config["socket"] = str(self.logs / f"{node}.sock")
        path = self.logs / f"{node}.yaml"
        path.write_text(yaml.safe_dump(config))
        log = (self.logs / f"{node}.log").open("a")
        self.procs[node] = self.lab.popen(
            node, [DMVPN, "run", "-c", str(path)], stdout=log, stderr=log
        )

    def attached(self, node: str) -> dict[str, list[int]]:
        out = self.sh(node, sys.executable, "-c", QUERY)
        return json.loads(out)  # type: ignore[no-any-return]


def loaded_prog_ids() -> set[int]:
    argv = ["bpftool", "-j", "prog", "show"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return {p["id"] for p in json.loads(out.stdout)}


@pytest.fixture(params=[False, True], ids=["ipv4", "dual-stack"])
def cloud(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EbpfCloud]:
    topo = Topology.from_data(
        {
            "phase": 3,
            "dataplane": "ebpf",
            "ipv6": request.param,
            "nodes": {"spokes": [{"name": "spoke1"}, {"name": "spoke2"}]},
        }
    )
    lab = Lab(topo, prefix=f"dmb{os.getpid() % 100000}-", state_path=tmp_path / "lab.json")
    try:
        lab.up()
        c = EbpfCloud(lab, topo, tmp_path)
        for plan in topo.routers:
            c.start(plan.name)
        c.wait(
            "both spokes to register",
            lambda: all(c.events(s, "nhs-up") for s in ("spoke1", "spoke2")),
        )
        yield c
    finally:
        lab.down()


def iperf(cloud: EbpfCloud, address: str) -> float:
    """Mbit/s of one second of TCP host1 -> host2."""
    server = cloud.lab.popen(
        "host2", ["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(0.5)
        argv = ["iperf3", "-c", address, "-t", "1", "-J"]
        out = cloud.lab.exec("host1", argv, capture_output=True, text=True, check=True).stdout
    finally:
        server.wait(timeout=10)
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e6


def test_tcp_takes_the_fast_path_once_the_peer_is_proven(cloud: EbpfCloud) -> None:
    """TCP (super-segments, partial checksums) goes the fast way only to a
    peer whose kernel answered a probe; both families, GSO and the MTU."""
    host2 = cloud.topo.plan("host2")
    targets = [str(host2.lan.ip)]  # type: ignore[union-attr]
    if host2.lan6 is not None:
        targets.append(str(host2.lan6.ip))
    for dst in targets:  # the shortcuts (redirect, resolution)
        cloud.lab.exec("host1", ["ping", "-c", "5", "-i", "0.2", "-W", "1", dst], check=True)
    time.sleep(2.5)  # the probe round (each second) proves spoke2
    for dst in targets:
        before = cloud.dataplane("spoke1")
        mbit = iperf(cloud, dst)
        after = cloud.dataplane("spoke1")
        sent = after["fast.tx.bytes"] - before["fast.tx.bytes"]
        assert sent >= mbit * 1e6 / 8 * 0.9, (dst, mbit, before, after)
        assert after.get("tx.data", 0) - before.get("tx.data", 0) < 50, (dst, before, after)
    # Full-size packets fit (the TAP's MTU leaves room for IPv4 + GRE + key).
    big = ["ping", "-c", "3", "-i", "0.2", "-W", "1", "-M", "do", "-s", "1372", targets[0]]
    assert cloud.lab.exec("host1", big, capture_output=True).returncode == 0


def test_phase3_on_the_fast_path_then_clean_detach(cloud: EbpfCloud) -> None:
    for node in ("hub1", "spoke1", "spoke2"):
        said = [e["message"] for e in cloud.events(node, "dataplane")]
        assert any("eBPF fast path attached" in m for m in said), (node, said)
    spoke2 = str(cloud.topo.plan("spoke2").tunnel.ip)  # type: ignore[union-attr]
    hub = str(cloud.topo.plan("hub1").tunnel.ip)  # type: ignore[union-attr]
    host2 = str(cloud.topo.plan("host2").lan.ip)  # type: ignore[union-attr]
    first = cloud.hops("host1", host2)
    assert first[1] == hub and first[-1] == host2, first
    time.sleep(0.5)  # the redirect and the resolution
    later = cloud.hops("host1", host2)
    assert later[1] == spoke2 and hub not in later, later

    before = cloud.dataplane("spoke1")
    assert before["fast.attached"] == 1
    ping = ["ping", "-c", "20", "-i", "0.02", "-W", "1", host2]
    assert cloud.lab.exec("host1", ping, capture_output=True).returncode == 0
    after = cloud.dataplane("spoke1")
    # Echo requests out and replies in, without the userspace path.
    assert after["fast.tx.packets"] >= before["fast.tx.packets"] + 20, after
    assert after["fast.rx.packets"] >= before["fast.rx.packets"] + 20, after
    assert after.get("tx.data", 0) - before.get("tx.data", 0) < 5, (before, after)
    # A redirecting hub passes everything to its userspace path (hairpins).
    assert cloud.dataplane("hub1")["fast.attached"] == 0

    # Unbound mid-flow: the shortcut goes, traffic falls back via the hub
    # (userspace path, then a new resolution), and little is lost.
    flow = cloud.lab.popen(
        "host1",
        ["ping", "-c", "60", "-i", "0.05", "-W", "1", host2],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    cloud.sh("spoke1", DMVPN, "clear", "nhrp", "--socket", str(cloud.logs / "spoke1.sock"))
    out, _ = flow.communicate(timeout=30)
    received = int(out.split(" received")[0].rsplit(",", 1)[-1])
    assert received >= 55, out

    # SIGTERM: the daemon closes its descriptors, the kernel detaches.
    ids = cloud.attached("spoke1")
    assert len(ids["ingress"]) == 1 and len(ids["egress"]) == 1, ids
    cloud.stop("spoke1")
    assert cloud.attached("spoke1") == {"ingress": [], "egress": []}
    # kill -9: nothing runs the daemon's clean-up, and still nothing is left.
    ids2 = cloud.attached("spoke2")
    assert len(ids2["ingress"]) == 1, ids2
    proc = cloud.procs.pop("spoke2")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert cloud.attached("spoke2") == {"ingress": [], "egress": []}
    assert "dmvpn0" not in cloud.sh("spoke2", "ip", "link")
    # The programs themselves are unloaded (no pin, no link, no fd holds them).
    gone = set(ids["ingress"] + ids["egress"] + ids2["ingress"] + ids2["egress"])
    deadline = time.monotonic() + 5
    while gone & loaded_prog_ids() and time.monotonic() < deadline:
        time.sleep(0.1)  # the kernel frees programs after an RCU grace period
    assert not gone & loaded_prog_ids()
    tc = cloud.sh("spoke2", "tc", "filter", "show", "dev", "nbma0", "ingress")
    assert tc.strip() == "", tc
