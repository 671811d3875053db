"""`underlay: ipv6` in the lab topology: the IPv6 NBMA plan, the node
configs it gives (loaded by the daemon's own config), `lab status` rows,
and what it refuses (no root needed)."""

from __future__ import annotations

from ipaddress import IPv6Address
from typing import Any

import pytest

from dmvpn.config import parse_config
from dmvpn.lab.text import summary
from dmvpn.lab.topology import Topology, TopologyError


def test_ipv6_underlay_plan_and_node_configs() -> None:
    topo = Topology.from_data({"underlay": "ipv6", "ipv6": True})
    rows = {r["name"]: r["underlay"] for r in topo.describe()}
    assert rows == {
        "hub1": "fd30::1/64",
        "spoke1": "fd30::11/64",
        "spoke2": "fd30::12/64",
        "spoke3": "fd30::13/64",
        "host1": None,
        "host2": None,
        "host3": None,
    }
    spoke = parse_config(topo.node_config("spoke2")).interfaces[0]
    assert spoke.tunnel.source == IPv6Address("fd30::12") and spoke.underlay_ipv6
    assert {(str(n.address), str(n.nbma)) for n in spoke.nhrp.nhs} == {
        ("10.0.0.1", "fd30::1"),
        ("fd00::1", "fd30::1"),
    }
    hub = parse_config(topo.node_config("hub1")).interfaces[0]
    assert hub.tunnel.source == IPv6Address("fd30::1") and hub.is_hub
    assert summary(topo).endswith("holdtime 60 s, IPv6 underlay (GRE over IPv6)")


def test_ipv4_underlay_is_unchanged() -> None:
    topo = Topology.default()
    assert topo.plan("spoke1").nbma6 is None
    assert topo.node_config("spoke1")["interfaces"][0]["tunnel"]["source"] == "172.30.0.11"
    assert summary(topo).endswith("holdtime 60 s")


@pytest.mark.parametrize(
    ("extra", "what"),
    [
        ({"dataplane": "ebpf"}, "dataplane: ebpf"),
        ({"ipsec_psk": "x" * 20}, "ipsec_psk"),
        ({"path_mtu_discovery": True}, "path_mtu_discovery"),
        ({"front_door_vrf": True}, "front_door_vrf"),
        (
            {"nodes": {"hubs": [{"name": "hub1"}], "spokes": [{"name": "s1", "nat": "home"}]}},
            "spokes behind a lab NAT",
        ),
    ],
)
def test_ipv6_underlay_refuses_what_it_does_not_build(extra: dict[str, Any], what: str) -> None:
    with pytest.raises(TopologyError) as info:
        Topology.from_data({"underlay": "ipv6", **extra})
    assert f"underlay: ipv6 is not built with {what}" in "\n".join(info.value.problems)
