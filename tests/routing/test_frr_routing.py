"""FRR routing daemons beside dmvpn in the lab (`routing:`), and the seed's
routing limitations shown with real daemons (docs/ROUTING.md):

- OSPF broadcast, hub DR, spokes priority 0: the next hop of another spoke's
  LAN is that spoke (the direct tunnel forms); point-to-multipoint: the hub.
- With point-to-multipoint and phase 3, NHRP's shortcut wins over OSPF's
  route for the same prefix while it lives (zebra takes it as a kernel
  route, distance 0) and OSPF's comes back when it is withdrawn.
- RIP split horizon on the hub's tunnel interface hides spoke routes from
  the other spokes; off, they are learnt.
- EIGRP (FRR's eigrpd): split horizon is always on (no switch in FRR 8.4):
  the hub learns every LAN, the spokes nothing from each other.
- BGP: the hub with dynamic neighbours (`bgp listen range`) sending only a
  summary; phase 3 shortcuts (more specific) live beside it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dmvpn.lab.netns import Lab
from dmvpn.lab.routingd import RoutingDaemons
from dmvpn.lab.runner import Runner
from dmvpn.lab.topology import Topology

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root for network namespaces (CI runs as root)"
)

SPOKES = [{"name": "spoke1"}, {"name": "spoke2"}]


class Cloud:
    def __init__(self, lab: Lab, runner: Runner, frr: RoutingDaemons) -> None:
        self.lab, self.runner, self.frr = lab, runner, frr

    def routes(self, node: str, prefix: str) -> str:
        out = self.lab.exec(node, ["ip", "route", "show", prefix], capture_output=True, text=True)
        return out.stdout.strip()

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
        self.runner.wait_for(what, check, timeout)

    def route_via(self, node: str, prefix: str) -> str | None:
        m = re.search(r" via (\S+) ", self.routes(node, prefix) + " ")
        return m.group(1) if m else None

    def hops(self, src: str, dst: str) -> list[str]:
        out = self.lab.exec(
            src,
            ["traceroute", "-n", "-q", "1", "-w", "1", "-m", "5", dst],
            capture_output=True,
            text=True,
        ).stdout
        return [line.split()[1] for line in out.splitlines()[1:] if len(line.split()) > 1]

    def clear_shortcuts(self, spoke: str) -> None:
        sock = str(self.runner.socket_path(spoke))
        argv = [*self.runner.dmvpn, "clear", "nhrp", "shortcut", "--socket", sock]
        assert self.lab.exec(spoke, argv, capture_output=True).returncode == 0


@pytest.fixture
def cloud() -> Iterator[Callable[[Any], Cloud]]:
    labs: list[Lab] = []

    def make(routing: Any) -> Cloud:
        topo = Topology.from_data({"routing": routing, "nodes": {"spokes": SPOKES}})
        # The default state path (/run/dmvpn-lab): FRR, as user frr, must
        # reach its directory, which a pytest tmp_path (0700) would not let it.
        lab = Lab(topo, prefix=f"rt{len(labs)}{os.getpid() % 100000}-")
        labs.append(lab)
        lab.up()
        runner = Runner(lab)
        runner.start()
        runner.wait_registered()
        frr = RoutingDaemons(lab)
        frr.start()
        return Cloud(lab, runner, frr)

    try:
        yield make
    finally:
        for lab in labs:
            lab.down()


def test_ospf_broadcast_hub_dr_next_hop_is_the_other_spoke(cloud: Callable[[Any], Cloud]) -> None:
    c = cloud({"protocol": "ospf", "ospf_network": "broadcast"})
    c.wait(
        "spoke1 to learn 192.168.2.0/24",
        lambda: c.route_via("spoke1", "192.168.2.0/24") is not None,
    )
    assert c.route_via("spoke1", "192.168.2.0/24") == "10.0.0.12"  # the other spoke
    neighbours = c.frr.vtysh("spoke1", "show ip ospf neighbor")
    assert re.search(r"10\.0\.0\.1\s+255\s+Full/DR", neighbours), neighbours
    hub = c.frr.vtysh("hub1", "show ip ospf neighbor")
    assert len(re.findall(r"\s0\s+Full/DROther", hub)) == 2, hub
    # Phase 2 behaviour: NHRP resolves the next hop and the tunnel is direct.
    c.wait("a direct path", lambda: c.hops("host1", "192.168.2.10")[1:2] == ["10.0.0.12"], 30)


def test_ospf_point_to_multipoint_next_hop_is_the_hub_and_shortcuts_win(
    cloud: Callable[[Any], Cloud],
) -> None:
    c = cloud({"protocol": "ospf", "ospf_network": "point-to-multipoint"})
    c.wait(
        "spoke1 to learn 192.168.2.0/24",
        lambda: c.route_via("spoke1", "192.168.2.0/24") is not None,
    )
    assert c.route_via("spoke1", "192.168.2.0/24") == "10.0.0.1"  # the hub: no phase 2 tunnel
    # Phase 3: the hub redirects, and the shortcut replaces OSPF's route for
    # the same prefix in the kernel (zebra takes it as a kernel route).
    assert c.lab.ping("host1", "192.168.2.10", timeout=5)
    c.wait("the shortcut", lambda: "proto 177" in c.routes("spoke1", "192.168.2.0/24"), 20)
    assert c.routes("spoke1", "192.168.2.0/24").startswith("192.168.2.0/24 via 10.0.0.12 ")
    rib = c.frr.vtysh("spoke1", "show ip route 192.168.2.0/24")
    assert 'Known via "kernel", distance 0, metric 0, best' in rib, rib
    assert 'Known via "ospf"' in rib, rib
    assert c.hops("host1", "192.168.2.10")[1] == "10.0.0.12"
    # Withdrawn cleanly: zebra puts OSPF's route back at once.
    c.clear_shortcuts("spoke1")
    c.wait("OSPF's route back", lambda: "proto ospf" in c.routes("spoke1", "192.168.2.0/24"), 10)
    assert c.route_via("spoke1", "192.168.2.0/24") == "10.0.0.1"


@pytest.mark.parametrize("split_horizon", [True, False])
def test_rip_split_horizon_on_the_hub(cloud: Callable[[Any], Cloud], split_horizon: bool) -> None:
    c = cloud({"protocol": "rip", "split_horizon": split_horizon})
    c.wait(
        "the hub to learn both LANs",
        lambda: all(c.route_via("hub1", f"192.168.{n}.0/24") is not None for n in (1, 2)),
    )
    if split_horizon:
        # Two update intervals (5 s) after the hub knew: still nothing.
        time.sleep(11)
        assert c.routes("spoke1", "192.168.2.0/24") == ""
        assert "192.168.2.0/24" not in c.frr.vtysh("spoke1", "show ip rip")
    else:
        c.wait(
            "spoke1 to learn spoke2's LAN",
            lambda: c.route_via("spoke1", "192.168.2.0/24") is not None,
        )
        # RIPv2's next hop field (RFC 2453 4.4): ripd on the hub passes the
        # spoke on as next hop, since it is on the tunnel's subnet (as
        # Cisco's `no ip next-hop-self eigrp`), so the direct tunnel forms.
        assert c.route_via("spoke1", "192.168.2.0/24") == "10.0.0.12"
        c.wait(
            "a direct path",
            lambda: c.hops("host1", "192.168.2.10")[1:2] == ["10.0.0.12"],
            30,
        )


def test_eigrp_split_horizon_always_on_spokes_learn_nothing(cloud: Callable[[Any], Cloud]) -> None:
    c = cloud("eigrp")
    c.wait(
        "the hub to learn both LANs",
        lambda: all(c.route_via("hub1", f"192.168.{n}.0/24") is not None for n in (1, 2)),
    )
    # The hub's next hop for each LAN is the spoke that advertised it.
    assert c.route_via("hub1", "192.168.1.0/24") == "10.0.0.11"
    assert "proto eigrp" in c.routes("hub1", "192.168.2.0/24")
    # Spokes peer with the hub only (their multicast goes to the NHS).
    neighbours = c.frr.vtysh("spoke1", "show ip eigrp neighbor")
    assert "10.0.0.1 " in neighbours and "10.0.0.12" not in neighbours, neighbours
    # The lab's fast timers took (applied after start): hello 1 s, hold 4 s.
    for node in ("hub1", "spoke1"):
        itf = c.frr.vtysh(node, "show ip eigrp interface")
        assert re.search(r"^dmvpn0\s.*\s1\s+4\s*$", itf, re.M), itf
    # EIGRP updates are triggered and reliable: had the hub sent spoke2's LAN
    # it would be here within milliseconds; 3 s is ample.
    time.sleep(3)
    assert c.routes("spoke1", "192.168.2.0/24") == ""
    assert "192.168.2.0/24" not in c.frr.vtysh("spoke1", "show ip eigrp topology")
    # No route, so no traffic crosses the hub: no redirect, no shortcut.
    ping = c.lab.exec(
        "host1", ["ping", "-c", "1", "-W", "1", "192.168.2.10"], capture_output=True, text=True
    )
    assert ping.returncode != 0 and "Unreachable" in ping.stdout, ping.stdout
    assert "proto 177" not in c.routes("spoke1", "192.168.2.0/24")


def test_bgp_dynamic_neighbours_summary_only_and_phase3(cloud: Callable[[Any], Cloud]) -> None:
    c = cloud({"protocol": "bgp", "summary_only": True})
    c.wait(
        "spoke1 to learn the summary", lambda: c.route_via("spoke1", "192.168.0.0/16") is not None
    )
    summary = c.frr.vtysh("hub1", "show bgp summary")
    assert "dynamic" in summary.lower() or "*10.0.0.11" in summary, summary
    assert "10.0.0.11" in summary and "10.0.0.12" in summary, summary
    assert c.route_via("spoke1", "192.168.0.0/16") == "10.0.0.1"
    assert c.routes("spoke1", "192.168.2.0/24") == ""  # summary only
    assert c.lab.ping("host1", "192.168.2.10", timeout=5)
    c.wait("the shortcut", lambda: "proto 177" in c.routes("spoke1", "192.168.2.0/24"), 20)
    assert c.route_via("spoke1", "192.168.0.0/16") == "10.0.0.1"  # the summary stays
    c.clear_shortcuts("spoke1")
    c.wait("the shortcut gone", lambda: c.routes("spoke1", "192.168.2.0/24") == "", 10)
    assert c.route_via("spoke1", "192.168.0.0/16") == "10.0.0.1"
    assert c.lab.ping("host1", "192.168.2.10", timeout=5)
