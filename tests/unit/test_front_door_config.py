"""Front-door VRF in the config and the lab topology: what is accepted,
what is refused (with its path and why). Pure; milliseconds."""

from __future__ import annotations

from typing import Any

import pytest

from dmvpn.config import ConfigError, parse_config
from dmvpn.lab.topology import Topology, TopologyError


def _node(**itf: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "dmvpn0",
        "address": "10.0.0.11/24",
        "tunnel": {"source": "172.30.0.11", "namespace": "dmvpn-spoke1-ul"},
        "nhrp": {"network_id": 1, "nhs": [{"address": "10.0.0.1", "nbma": "172.30.0.1"}]},
    }
    return {"node": "spoke1", "interfaces": [base | itf]}


def test_tunnel_namespace_loads() -> None:
    itf = parse_config(_node()).interfaces[0]
    assert itf.tunnel.namespace == "dmvpn-spoke1-ul"
    with_ipsec = parse_config(_node() | {"ipsec": {"psk": "0123456789abcdef"}})
    assert with_ipsec.ipsec is not None


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (_node(dataplane="ebpf"), "use userspace or auto"),
        (_node(tunnel={"source": "172.30.0.11", "namespace": "a/b"}), "tunnel.namespace"),
    ],
)
def test_refused(data: dict[str, Any], why: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert any(why in p for p in exc.value.problems), exc.value.problems


def test_lab_topology() -> None:
    topo = Topology.from_data({"front_door_vrf": True})
    rows = {r["name"]: r for r in topo.describe("x-")}
    assert rows["spoke1"]["underlay"] == "172.30.0.11/24 (in x-spoke1-ul)"
    assert rows["host1"]["underlay"] is None
    with pytest.raises(TopologyError, match="front_door_vrf: not yet"):
        Topology.from_data({"front_door_vrf": True, "dataplane": "ebpf"})
