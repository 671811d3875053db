"""Several clouds in separate VRFs on ONE daemon per router (the lab's
`vrf_clouds: true`): every router runs one dmvpn with dmvpn1 (GRE key 1) in
the namespace `<router>-vrf1` and dmvpn2 (key 2) in `<router>-vrf2`, both
sending GRE from the router's one underlay address. The two clouds use the
same tunnel addresses and the same LANs (192.168.1.0/24 behind spoke1 in
both); nothing leaks from one into the other, and phase 3 makes a shortcut
in each."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmvpn.lab.netns import Lab
from dmvpn.lab.runner import Runner, dmvpn_command
from dmvpn.lab.topology import Topology

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root for network namespaces (CI runs as root)"
)

HOST1, HOST2 = "192.168.1.10", "192.168.2.10"


def ns_run(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True)


def echoes(ns: str) -> int:
    """ICMP echo requests this namespace has received (its own /proc/net/snmp)."""
    lines = ns_run(ns, "cat", "/proc/net/snmp").stdout.splitlines()
    head, values = [line.split() for line in lines if line.startswith("Icmp:")][:2]
    return int(values[head.index("InEchos")])


@pytest.fixture
def vrf_lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Lab, Runner]]:
    psk = getattr(request, "param", None)  # indirect: the lab's ipsec_psk
    topo = Topology.from_data(
        {
            "phase": 3,
            "key": 1,
            "vrf_clouds": True,
            **({"ipsec_psk": psk} if psk else {}),
            "nodes": {
                "hubs": [{"name": "hub1"}],
                "spokes": [{"name": "spoke1"}, {"name": "spoke2"}],
            },
        }
    )
    lab = Lab(topo, prefix=f"dmw{os.getpid() % 100000}-", state_path=tmp_path / "lab.json")
    try:
        lab.up()
        runner = Runner(lab)
        runner.start()
        runner.wait_registered(timeout=20)
        yield lab, runner
    finally:
        lab.down()  # the daemons (by PID) and every namespace, the VRFs' too


def test_two_vrfs_on_one_daemon(vrf_lab: tuple[Lab, Runner]) -> None:
    lab, runner = vrf_lab
    vrf = lab.vrf_namespace
    # Each hub VRF reaches the host of its own VRF only (the same address in both).
    for k, other in ((1, 2), (2, 1)):
        before = echoes(vrf("host1", k)), echoes(vrf("host1", other))
        res = ns_run(vrf("hub1", k), "ping", "-c", "3", "-i", "0.2", "-W", "2", HOST1)
        assert res.returncode == 0, res.stdout + res.stderr
        after = echoes(vrf("host1", k)), echoes(vrf("host1", other))
        assert after[0] - before[0] >= 3 and after[1] == before[1], (k, before, after)
    # Phase 3 in each cloud: host1 -> host2 first via the hub, then a shortcut
    # (a route of protocol 177 in spoke1's VRF), the traffic staying in its VRF.
    for k, other in ((1, 2), (2, 1)):
        before = echoes(vrf("host2", other))
        deadline = time.monotonic() + 10
        while True:
            ping = ns_run(vrf("host1", k), "ping", "-c", "2", "-i", "0.2", "-W", "1", HOST2)
            assert ping.returncode == 0, ping.stdout + ping.stderr
            routes = ns_run(vrf("spoke1", k), "ip", "route", "show", "proto", "177").stdout
            if "192.168.2.0/24 via 10.0.0.12" in routes:
                break
            assert time.monotonic() < deadline, f"no shortcut in VRF {k}: {routes!r}"
        assert echoes(vrf("host2", other)) == before, f"VRF {k}'s pings reached VRF {other}"
    # One daemon per router; `show dmvpn` lists both interfaces with their VRF.
    assert len(runner.running()) == 3
    out = ns_run(
        lab.namespace("spoke1"),
        *dmvpn_command(),
        "show",
        "dmvpn",
        "--json",
        "--socket",
        str(runner.socket_path("spoke1")),
    )
    assert out.returncode == 0, out.stderr
    itfs = json.loads(out.stdout)["interfaces"]
    assert [(i["interface"], i["vrf"]) for i in itfs] == [
        ("dmvpn1", vrf("spoke1", 1)),
        ("dmvpn2", vrf("spoke1", 2)),
    ]
    for itf in itfs:
        assert {p["nbma"] for p in itf["peers"]} == {"172.30.0.1", "172.30.0.12"}, itf
    # The VRFs have no route to the underlay; the router's own namespace has.
    hub_nbma = "172.30.0.1"
    assert ns_run(vrf("spoke1", 1), "ip", "route", "get", hub_nbma).returncode != 0
    assert ns_run(lab.namespace("spoke1"), "ip", "route", "get", hub_nbma).returncode == 0


def show_ipsec(lab: Lab, runner: Runner, node: str) -> dict[str, dict[str, object]]:
    """`show ipsec`'s peers of a node, by remote NBMA address."""
    out = ns_run(
        lab.namespace(node),
        *dmvpn_command(),
        "show",
        "ipsec",
        "--json",
        "--socket",
        str(runner.socket_path(node)),
    )
    assert out.returncode == 0, out.stderr
    return {p["remote"]: p for p in json.loads(out.stdout)["peers"]}


@pytest.mark.parametrize("vrf_lab", ["0123456789abcdef0123"], indirect=True)
def test_two_vrfs_share_each_peers_sa(vrf_lab: tuple[Lab, Runner]) -> None:
    """With IPsec, both clouds of a router use one underlay address, so one
    GRE child SA per peer carries both keys: counted once per interface
    (bindings 2) and kept while either cloud still needs it."""
    lab, runner = vrf_lab
    vrf = lab.vrf_namespace
    hub, spoke2 = "172.30.0.1", "172.30.0.12"
    for k in (1, 2):  # both clouds' traffic over the shared SAs, phase 3 too
        deadline = time.monotonic() + 20
        while True:
            ping = ns_run(vrf("host1", k), "ping", "-c", "2", "-i", "0.2", "-W", "1", HOST2)
            routes = ns_run(vrf("spoke1", k), "ip", "route", "show", "proto", "177").stdout
            if ping.returncode == 0 and "192.168.2.0/24 via 10.0.0.12" in routes:
                break
            assert time.monotonic() < deadline, f"VRF {k}: {ping.stdout}{routes!r}"
    deadline = time.monotonic() + 10
    while True:
        peers = show_ipsec(lab, runner, "spoke1")
        got = {r: (p["state"], p["bindings"]) for r, p in peers.items()}
        # One SA to the hub and one to spoke2, each wanted by both interfaces.
        if got == {hub: ("up", 2), spoke2: ("up", 2)}:
            break
        assert time.monotonic() < deadline, got
    hub_peers = show_ipsec(lab, runner, "hub1")
    assert {r: p["bindings"] for r, p in hub_peers.items()} == {
        "172.30.0.11": 2,
        "172.30.0.12": 2,
    }
