"""Per-tunnel QoS end to end: spokes register their NHRP group, the hub
shapes what it sends each spoke of a group (tc HTB on its underlay egress,
keyed by the spoke's NBMA address), a spoke in no group or an unknown one
is served unshaped, and the shaper goes when its spoke leaves.

Rates are checked loosely here (the machine is shared); the exact ratio of
shaped to configured rate is measured in bench/bench_qos.py."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmvpn.lab.netns import Lab
from dmvpn.lab.topology import Topology

from .test_cloud import DMVPN, Cloud

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root for network namespaces (CI runs as root)"
)

RATE_MBIT = 8


def iperf_mbit(
    cloud: Cloud, client: str, server: str, address: str, seconds: int = 3, *extra: str
) -> float:
    """TCP goodput client -> address (the server node's), in Mbit/s."""
    srv = cloud.lab.popen(
        server, ["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # until the server listens
            if cloud.sh(server, "ss", "-Hltn", "sport = :5201").strip():
                break
            time.sleep(0.1)
        res = cloud.lab.exec(
            client,
            ["iperf3", "-c", address, "-t", str(seconds), "-J", *extra],
            capture_output=True,
            text=True,
        )
        out = res.stdout
        data = json.loads(out)
        assert "error" not in data, data["error"]
        return float(data["end"]["sum_received"]["bits_per_second"]) / 1e6
    finally:
        srv.kill()
        srv.wait(timeout=10)


class ClassCloud(Cloud):
    """The hub's policy for `gold` gets a DSCP class (the lab's topology
    only names rates)."""

    def config(self, node: str) -> dict:  # type: ignore[type-arg]
        cfg = super().config(node)
        if node == "hub1":
            cfg["interfaces"][0]["qos"] = {
                "groups": {
                    "gold": {
                        "rate": f"{RATE_MBIT}mbit",
                        "classes": [{"name": "voice", "dscp": ["ef"], "rate": "2mbit"}],
                    }
                }
            }
        return cfg


class FdCloud(Cloud):
    """Front-door VRF: the shaper goes on nbma0 in the hub's underlay namespace."""

    def config(self, node: str) -> dict:  # type: ignore[type-arg]
        cfg = super().config(node)
        cfg["interfaces"][0]["tunnel"]["namespace"] = self.lab.underlay_namespace(node)
        return cfg

    def sh(self, node: str, *argv: str) -> str:
        if argv and argv[0] == "tc":  # the shaper is where the underlay is
            argv = ("tc", "-n", self.lab.underlay_namespace(node), *argv[1:])
        return super().sh(node, *argv)


# The shaper sits on the underlay: the same for both data planes (the eBPF
# one redirects GRE to the underlay device's egress, through its qdisc).
@pytest.fixture(
    params=[
        (Cloud, "userspace"),
        (ClassCloud, "userspace"),
        (Cloud, "ebpf"),
        (FdCloud, "userspace"),
    ],
    ids=["group", "dscp-classes", "group-ebpf", "group-front-door-vrf"],
)
def qos_cloud(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cloud]:
    kind, dataplane = request.param
    topo = Topology.from_data(
        {
            "phase": 1,
            "dataplane": dataplane,
            "front_door_vrf": kind is FdCloud,
            "qos": {"gold": f"{RATE_MBIT}mbit"},
            "nodes": {
                "spokes": [
                    {"name": "spoke1", "group": "gold"},
                    {"name": "spoke2"},
                    {"name": "spoke3", "group": "nosuch"},
                ]
            },
        }
    )
    lab = Lab(topo, prefix=f"dmq{os.getpid() % 100000}-", state_path=tmp_path / "lab.json")
    try:
        lab.up()
        cloud = kind(lab, topo, tmp_path)
        for plan in topo.routers:
            cloud.start(plan.name)
        cloud.wait(
            "every spoke to register",
            lambda: all(cloud.events(s.name, "nhs-up") for s in topo.spokes),
        )
        yield cloud
    finally:
        lab.down()


def _nbma(cloud: Cloud, node: str) -> str:
    return str(cloud.topo.plan(node).nbma.ip)  # type: ignore[union-attr]


def _show_group(cloud: Cloud) -> dict:  # type: ignore[type-arg]
    sock = str(cloud.logs / "hub1.sock")
    res = cloud.lab.exec(
        "hub1",
        [DMVPN, "show", "nhrp", "group", "--socket", sock, "--json"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def test_group_shapes_its_spoke_and_leaves_the_others(qos_cloud: Cloud) -> None:
    cloud = qos_cloud
    s1, s2, s3 = (_nbma(cloud, s) for s in ("spoke1", "spoke2", "spoke3"))
    cloud.wait("spoke1 shaped", lambda: cloud.events("hub1", "qos-shaped"))
    cloud.wait("spoke3's group reported", lambda: cloud.events("hub1", "qos-unknown-group"))
    (shaped,) = cloud.events("hub1", "qos-shaped")
    assert shaped["nbma"] == s1 and shaped["group"] == "gold"
    (unknown,) = cloud.events("hub1", "qos-unknown-group")
    assert unknown["nbma"] == s3 and unknown["group"] == "nosuch"

    # The API (show nhrp group --json) and the kernel agree.
    view = _show_group(cloud)
    (itf,) = view["interfaces"]
    groups = {r["nbma"]: r["group"] for r in itf["registered"]}
    assert groups == {s1: "gold", s2: None, s3: "nosuch"}
    peers = {p["nbma"]: p for p in itf["qos"]["peers"]}
    assert peers[s1]["shaped"] and peers[s1]["rate"] == f"{RATE_MBIT}mbit"
    assert not peers[s3]["shaped"] and "no policy" in peers[s3]["why_unshaped"]
    device = peers[s1]["device"]
    classes = cloud.sh("hub1", "tc", "class", "show", "dev", device)
    assert f"class htb {peers[s1]['classid']} root" in classes and "rate 8Mbit" in classes

    # What the hub sends: to host1 (behind the shaped spoke) and host2 (not).
    host1 = str(cloud.topo.plan("host1").lan.ip)  # type: ignore[union-attr]
    host2 = str(cloud.topo.plan("host2").lan.ip)  # type: ignore[union-attr]
    shaped_mbit = iperf_mbit(cloud, "hub1", "host1", host1)
    free_mbit = iperf_mbit(cloud, "hub1", "host2", host2)
    assert 0.4 * RATE_MBIT < shaped_mbit < 1.25 * RATE_MBIT, shaped_mbit
    assert free_mbit > 3 * shaped_mbit, (free_mbit, shaped_mbit)
    view = _show_group(cloud)
    counters = {p["nbma"]: p.get("counters") for p in view["interfaces"][0]["qos"]["peers"]}
    assert counters[s1]["bytes"] > 1_000_000  # the iperf3 stream went through it

    if isinstance(cloud, ClassCloud):
        # EF inside GRE lands in the voice class (1:x1), the rest in the
        # default one (1:xf): the filters read the inner DSCP.
        base = int(peers[s1]["classid"].split(":")[1], 16)
        voice, rest = f"1:{base + 1:x}", f"1:{base + 15:x}"

        def sent(classid: str) -> int:
            out = cloud.sh("hub1", "tc", "-s", "class", "show", "dev", device)
            part = out.split(f"class htb {classid} ", 1)[1]
            return int(part.split("Sent ", 1)[1].split(" ", 1)[0])

        v0, r0 = sent(voice), sent(rest)
        iperf_mbit(cloud, "hub1", "host1", host1, 2, "-S", "184")  # TOS 0xb8: EF
        v1, r1 = sent(voice), sent(rest)
        assert v1 - v0 > 500_000 and r1 - r0 < (v1 - v0) / 10, (v0, v1, r0, r1)

    # The spoke leaves (deregisters on stop): its shaper goes.
    cloud.stop("spoke1")
    cloud.wait("spoke1's shaper removed", lambda: cloud.events("hub1", "qos-unshaped"))
    classes = cloud.sh("hub1", "tc", "class", "show", "dev", device)
    assert peers[s1]["classid"] not in classes
