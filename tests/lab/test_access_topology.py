"""The lab's access routers as data: addresses, rulesets and refusals (no root)."""

from __future__ import annotations

from ipaddress import IPv4Interface
from pathlib import Path

import pytest

from dmvpn.lab import Lab, Topology, TopologyError
from dmvpn.lab.access import ruleset


def _topo(*spokes: dict[str, object], **top: object) -> Topology:
    return Topology.from_data(
        {"nodes": {"hubs": [{"name": "hub1"}], "spokes": list(spokes)}, **top}
    )


def test_a_spoke_with_an_access_router_keeps_its_address() -> None:
    topo = _topo(
        {"name": "spoke1", "access": {"mtu": 1380, "drop_icmp": True}},
        {"name": "spoke2"},
        {"name": "spoke3", "access": {"firewall": True}},
    )
    one, three = topo.access_routers
    assert (one.name, one.spoke, one.mtu, one.drop_icmp, one.firewall) == (
        "spoke1acc",
        "spoke1",
        1380,
        True,
        False,
    )
    assert one.address == IPv4Interface("172.30.0.151/24")
    assert (three.name, three.mtu, three.firewall) == ("spoke3acc", None, True)
    assert three.address == IPv4Interface("172.30.0.153/24")
    assert topo.plan("spoke1").access == "spoke1acc" and topo.plan("spoke2").access is None
    assert topo.plan("spoke1").nbma == IPv4Interface("172.30.0.11/24")


def test_the_lab_makes_a_namespace_per_access_router(tmp_path: Path) -> None:
    topo = _topo({"name": "spoke1", "access": {"mtu": 1400}})
    lab = Lab(topo, prefix="acct-", state_path=tmp_path / "lab.json")
    assert "acct-spoke1acc" in lab.namespaces
    assert lab.namespace("spoke1acc") == "acct-spoke1acc"


def test_rulesets_follow_the_keys() -> None:
    topo = _topo(
        {"name": "spoke1", "access": {"mtu": 1380}},
        {"name": "spoke2", "access": {"drop_icmp": True}},
        {"name": "spoke3", "access": {"firewall": True}},
    )
    plain, hole, wall = topo.access_routers
    assert ruleset(plain) is None
    rules = ruleset(hole)
    assert rules is not None and rules.count("frag-needed counter drop") == 2  # forward, output
    assert "policy accept" in rules and "gre" not in rules
    rules = ruleset(wall)
    assert rules is not None and "frag-needed counter drop" not in rules
    for allowed in ("ip protocol { gre, esp }", "udp dport { 500, 4500 }", "established,related"):
        assert allowed in rules
    assert rules.rstrip().count("counter drop") == 1  # everything else


@pytest.mark.parametrize(
    ("spoke", "top", "problem"),
    [
        (
            {"name": "spoke1", "nat": "home", "access": {"mtu": 1380}},
            {},
            "nodes.spokes.0.access: not with nat",
        ),
        ({"name": "spoke1", "access": {"mtu": 9000}}, {}, "nodes.spokes.0.access.mtu"),
        ({"name": "spoke1", "access": {"mtu": 500}}, {}, "nodes.spokes.0.access.mtu"),
        ({"name": "spoke1", "access": {"icmp": False}}, {}, "nodes.spokes.0.access.icmp"),
        (
            {"name": "spoke1", "access": {}},
            {"front_door_vrf": True},
            "nodes.spokes.0.access: not yet with front_door_vrf",
        ),
        (
            {"name": "spoke1", "access": {}, "nbma": "172.30.0.151"},
            {},
            "access router spoke1acc takes 172.30.0.151, which is spoke1's address",
        ),
        ({"name": "spoke1acc"}, {}, "name 'spoke1acc' is already used"),
    ],
)
def test_bad_access_keys_are_refused_with_the_field(
    spoke: dict[str, object], top: dict[str, object], problem: str
) -> None:
    spokes = [spoke] if spoke["name"] != "spoke1acc" else [{"name": "spoke1", "access": {}}, spoke]
    with pytest.raises(TopologyError) as exc:
        _topo(*spokes, **top)
    assert problem in str(exc.value), str(exc.value)
