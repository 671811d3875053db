"""Hierarchical hubs as data: who registers with whom, the routes each hub
gets, and refusals (no root)."""

from __future__ import annotations

from typing import Any

import pytest

from dmvpn.config import parse_config
from dmvpn.lab import Topology, TopologyError

HUBS: list[dict[str, Any]] = [
    {"name": "central"},
    {"name": "west", "nhs": ["central"]},
    {"name": "east", "nhs": ["central"]},
]
SPOKES: list[dict[str, Any]] = [
    {"name": "spoke1", "nhs": ["west"]},
    {"name": "spoke2", "nhs": ["east"]},
    {"name": "spoke3", "nhs": ["central"]},
]


def _topo(hubs: list[dict[str, Any]] = HUBS, spokes: list[dict[str, Any]] = SPOKES) -> Topology:
    return Topology.from_data({"nodes": {"hubs": hubs, "spokes": spokes}})


def _routes(topo: Topology, node: str) -> dict[str, str]:
    return {r["prefix"]: r["via"] for r in topo.node_config(node)["routes"]}


def test_regional_hubs_register_with_the_central_one_and_route_through_it() -> None:
    topo = _topo()
    assert [h.name for h in topo.nhs_of("west")] == ["central"]
    assert topo.nhs_of("central") == []
    assert [h.name for h in topo.nhs_of("spoke1")] == ["west"]
    west = topo.node_config("west")["interfaces"][0]["nhrp"]
    # An NHS (answers and forwards) and an NHC of the central hub at once.
    assert west["server"] is True and west["redirect"] is True
    assert west["nhs"] == [{"address": "10.0.0.1", "nbma": "172.30.0.1", "priority": 1}]
    assert _routes(topo, "west") == {"192.168.1.0/24": "10.0.0.11", "192.168.0.0/16": "10.0.0.1"}
    # The central hub reaches each LAN through the hub of its region.
    assert _routes(topo, "central") == {
        "192.168.1.0/24": "10.0.0.2",
        "192.168.2.0/24": "10.0.0.3",
        "192.168.3.0/24": "10.0.0.13",
    }
    spoke1 = topo.node_config("spoke1")
    assert [n["address"] for n in spoke1["interfaces"][0]["nhrp"]["nhs"]] == ["10.0.0.2"]
    assert _routes(topo, "spoke1") == {"192.168.0.0/16": "10.0.0.2"}
    for node in topo.routers:  # every config is one the daemon takes
        parse_config(topo.node_config(node.name))


def test_without_nhs_nothing_changes() -> None:
    topo = Topology.from_data({"nodes": {"hubs": [{"name": "hub1"}, {"name": "hub2"}]}})
    assert [h.name for h in topo.nhs_of("spoke1")] == ["hub1", "hub2"]
    assert "nhs" not in topo.node_config("hub2")["interfaces"][0]["nhrp"]
    assert _routes(topo, "hub2")["192.168.3.0/24"] == "10.0.0.13"


@pytest.mark.parametrize(
    ("hubs", "spokes", "message"),
    [
        ([{"name": "hub1", "nhs": ["hub1"]}], [], "nodes.hubs.0.nhs: 'hub1' cannot register"),
        (HUBS, [{"name": "spoke1", "nhs": ["spoke2"]}, {"name": "spoke2"}], "is not a hub"),
        (HUBS, [{"name": "spoke1", "nhs": []}], "at least one hub"),
        (HUBS, [{"name": "spoke1", "nhs": ["west", "west"]}], "named twice"),
        (
            [{"name": "a", "nhs": ["b"]}, {"name": "b", "nhs": ["a"]}],
            [],
            "registers with itself through",
        ),
    ],
)
def test_bad_hierarchies_are_refused(
    hubs: list[dict[str, Any]], spokes: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(TopologyError, match=message):
        _topo(hubs, spokes)


def test_hierarchy_with_ipv6_is_refused() -> None:
    with pytest.raises(TopologyError, match="one IPv4 cloud"):
        Topology.from_data({"ipv6": True, "nodes": {"hubs": HUBS, "spokes": SPOKES}})
