"""The lab's NAT routers as data: addresses, configs and refusals (no root)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface

import pytest

from dmvpn.lab import Lab, Topology, TopologyError
from dmvpn.lab.nat import ruleset


def _topo(*spokes: dict[str, object]) -> Topology:
    return Topology.from_data({"nodes": {"hubs": [{"name": "hub1"}], "spokes": list(spokes)}})


def test_spokes_behind_nat_routers_get_inside_addresses_and_share_a_public_one() -> None:
    topo = _topo(
        {"name": "spoke1", "nat": "home"},
        {"name": "spoke2"},
        {"name": "spoke3", "nat": "home"},
        {"name": "spoke4", "nat": "office"},
    )
    home, office = topo.nat_routers
    assert (home.name, home.spokes, office.spokes) == ("home", ("spoke1", "spoke3"), ("spoke4",))
    assert home.public == IPv4Interface("172.30.0.201/24")
    assert office.public == IPv4Interface("172.30.0.202/24")
    assert home.inside == IPv4Interface("172.31.1.1/24")
    assert topo.plan("spoke1").nbma == IPv4Interface("172.31.1.11/24")
    assert topo.plan("spoke3").nbma == IPv4Interface("172.31.1.13/24")
    assert topo.plan("spoke4").nbma == IPv4Interface("172.31.2.14/24")
    assert (
        topo.public_address("spoke1")
        == topo.public_address("spoke3")
        == IPv4Address("172.30.0.201")
    )
    assert topo.public_address("spoke2") == IPv4Address("172.30.0.12")
    # The spoke's daemon speaks from its inside address, to the hub's public one.
    tunnel = topo.node_config("spoke1")["interfaces"][0]
    assert tunnel["tunnel"]["source"] == "172.31.1.11"
    assert tunnel["nhrp"]["nhs"][0]["nbma"] == "172.30.0.1"
    # The NAT routers' namespaces belong to the lab (taken down with it).
    lab = Lab(topo, prefix="t-")
    assert "t-home" in lab.namespaces and lab.namespace("office") == "t-office"


def test_the_nat_ruleset_masquerades_and_lets_in_only_answers() -> None:
    rules = ruleset()
    assert 'oifname "wan0" masquerade' in rules
    assert rules.count('iifname "wan0" ct state new,invalid counter drop') == 2


@pytest.mark.parametrize(
    ("spoke", "message"),
    [
        ({"name": "spoke1", "nat": "home", "nbma": "172.30.0.11"}, "leave nbma out"),
        ({"name": "spoke1", "nat": "home", "kind": "frr"}, "only dmvpn spokes"),
        ({"name": "spoke1", "nat": "hub1"}, "already used"),
        ({"name": "spoke1", "nat": "Home"}, "nodes.spokes.0.nat"),
    ],
)
def test_bad_nat_settings_are_refused(spoke: dict[str, object], message: str) -> None:
    with pytest.raises(TopologyError) as info:
        _topo(spoke)
    assert message in str(info.value)


def test_a_hub_cannot_sit_behind_nat() -> None:
    with pytest.raises(TopologyError) as info:
        Topology.from_data({"nodes": {"hubs": [{"name": "hub1", "nat": "home"}]}})
    assert "nodes.hubs.0.nat" in str(info.value)
