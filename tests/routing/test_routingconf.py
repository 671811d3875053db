"""The lab's `routing:` key and the FRR configs it generates (no root)."""

from __future__ import annotations

import pytest

from dmvpn.config import parse_config
from dmvpn.lab.routingconf import daemon_configs, daemons_for
from dmvpn.lab.topology import Topology, TopologyError


def topo(routing: object, **more: object) -> Topology:
    return Topology.from_data({"routing": routing, **more})


def test_static_is_the_default_and_keeps_todays_routes() -> None:
    t = Topology.default()
    assert t.routing.protocol == "static" and daemons_for(t.routing) == []
    assert parse_config(t.node_config("spoke1")).routes


def test_a_protocol_replaces_the_static_routes() -> None:
    t = topo("ospf")
    assert daemons_for(t.routing) == ["zebra", "ospfd"]
    for node in ("hub1", "spoke1"):
        assert parse_config(t.node_config(node)).routes == []
    assert daemons_for(topo({"protocol": "bgp", "bfd": True}).routing) == ["zebra", "bgpd", "bfdd"]


def test_ospf_broadcast_makes_the_hub_dr_and_spokes_priority_0() -> None:
    t = topo({"protocol": "ospf"})
    hub = daemon_configs(t, "hub1", "/logs")["ospfd"]
    spoke = daemon_configs(t, "spoke1", "/logs")["ospfd"]
    assert " ip ospf network broadcast" in hub and " ip ospf priority 255" in hub
    assert " ip ospf priority 0" in spoke and " network 192.168.1.0/24 area 0" in spoke
    assert "log file /logs/ospfd.log" in spoke
    p2mp = daemon_configs(
        topo({"protocol": "ospf", "ospf_network": "point-to-multipoint"}), "hub1", "/l"
    )
    assert "priority" not in p2mp["ospfd"]
    nbma = daemon_configs(topo({"protocol": "ospf", "ospf_network": "non-broadcast"}), "hub1", "/l")
    assert " neighbor 10.0.0.11" in nbma["ospfd"]  # no multicast hellos: named neighbours


def test_rip_split_horizon_is_switched_on_the_hub_only() -> None:
    off = topo({"protocol": "rip", "split_horizon": False})
    assert " no ip rip split-horizon" in daemon_configs(off, "hub1", "/l")["ripd"]
    assert "split-horizon" not in daemon_configs(off, "spoke1", "/l")["ripd"]
    on = topo({"protocol": "rip"})
    assert "split-horizon" not in daemon_configs(on, "hub1", "/l")["ripd"]


def test_bgp_hub_listens_for_dynamic_neighbours() -> None:
    t = topo({"protocol": "bgp", "summary_only": True, "bfd": True})
    hub = daemon_configs(t, "hub1", "/l")
    assert " bgp listen range 10.0.0.0/24 peer-group SPOKES" in hub["bgpd"]
    assert "  aggregate-address 192.168.0.0/16 summary-only" in hub["bgpd"]
    assert " neighbor SPOKES bfd" in hub["bgpd"] and "bfdd" in hub
    spoke = daemon_configs(t, "spoke2", "/l")["bgpd"]
    assert " neighbor 10.0.0.1 remote-as 65000" in spoke and "  network 192.168.2.0/24" in spoke


@pytest.mark.parametrize(
    ("routing", "problem"),
    [
        ({"protocol": "eigrp", "split_horizon": False}, "FRR's eigrpd does not implement"),
        ({"protocol": "rip", "ospf_network": "non-broadcast"}, "ospf_network applies to"),
        ({"protocol": "ospf", "summary_only": True}, "OSPF summarises only between areas"),
        ({"protocol": "static", "bfd": True}, "need a routing protocol"),
        ("isis", "routing.protocol"),
    ],
)
def test_bad_routing_is_refused_naming_why(routing: object, problem: str) -> None:
    with pytest.raises(TopologyError) as info:
        topo(routing)
    assert any(problem in p for p in info.value.problems), info.value.problems


def test_dual_hub_labs_route_via_whichever_nhs_is_up() -> None:
    t = Topology.from_data({"nodes": {"hubs": [{"name": "hub1"}, {"name": "hub2"}]}})
    spoke = parse_config(t.node_config("spoke1"))
    assert [(str(r.prefix), r.via) for r in spoke.routes] == [("192.168.0.0/16", "nhs")]
    live = spoke.interfaces[0].nhrp.nhs_liveness
    assert live is not None and (live.interval, live.multiplier) == (0.5, 3)
    # One hub: the fixed route of before, no liveness echoes.
    single = parse_config(Topology.default().node_config("spoke1"))
    assert str(single.routes[0].via) == "10.0.0.1"
    assert single.interfaces[0].nhrp.nhs_liveness is None


def test_dual_cloud_gives_spokes_one_interface_per_hub() -> None:
    hubs = {"hubs": [{"name": "hub1"}, {"name": "hub2"}]}
    t = Topology.from_data({"dual_cloud": True, "nodes": hubs})
    spoke = parse_config(t.node_config("spoke2"))
    assert [(i.name, str(i.address), i.tunnel.key) for i in spoke.interfaces] == [
        ("dmvpn0", "10.0.0.12/24", 42),
        ("dmvpn1", "10.0.1.12/24", 43),
    ]
    assert [str(n.address) for i in spoke.interfaces for n in i.nhrp.nhs] == [
        "10.0.0.1",
        "10.0.1.2",
    ]
    assert [str(h) for h in spoke.routes[0].via] == ["10.0.0.1", "10.0.1.2"]  # type: ignore[union-attr]
    hub2 = parse_config(t.node_config("hub2"))
    assert str(hub2.interfaces[0].address) == "10.0.1.2/24" and hub2.interfaces[0].tunnel.key == 43
    assert ("192.168.1.0/24", "10.0.1.11") in {(str(r.prefix), str(r.via)) for r in hub2.routes}
    assert str(t.plan("hub2").tunnel) == "10.0.1.2/24"


@pytest.mark.parametrize(
    ("more", "problem"),
    [
        ({}, "dual_cloud needs at least two hubs"),
        ({"phase": 2, "nodes": {"hubs": [{"name": "a"}, {"name": "b"}]}}, "phases 1 and 3"),
        ({"routing": "ospf", "nodes": {"hubs": [{"name": "a"}, {"name": "b"}]}}, "static routing"),
    ],
)
def test_dual_cloud_refusals(more: dict[str, object], problem: str) -> None:
    with pytest.raises(TopologyError) as info:
        Topology.from_data({"dual_cloud": True, **more})
    assert any(problem in p for p in info.value.problems), info.value.problems
