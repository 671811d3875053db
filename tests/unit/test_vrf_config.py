"""Overlay VRFs (an interface's `namespace`, Cisco `ip vrf forwarding`) in
the config: several clouds on one daemon, what is refused and why (with its
path). Pure but for a temporary directory standing in for /run/netns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dmvpn.config import ConfigError, missing_namespaces, parse_config
from dmvpn.daemon.reload import plan_reload


def _itf(n: int, **extra: Any) -> dict[str, Any]:
    """Cloud n: key n, hub 172.30.0.n; the same tunnel address in every VRF."""
    return {
        "name": f"dmvpn{n}",
        "namespace": f"spoke1-vrf{n}",
        "address": "10.0.0.11/24",
        "tunnel": {"source": "172.30.0.11", "key": n},
        "nhrp": {"network_id": n, "nhs": [{"address": "10.0.0.1", "nbma": f"172.30.0.{n}"}]},
    } | extra


def _node(*itfs: dict[str, Any]) -> dict[str, Any]:
    return {"node": "spoke1", "interfaces": list(itfs)}


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    return exc.value.problems


def test_two_clouds_in_two_vrfs_load() -> None:
    cfg = parse_config(_node(_itf(1), _itf(2)))
    assert [i.namespace for i in cfg.interfaces] == ["spoke1-vrf1", "spoke1-vrf2"]
    # Overlapping tunnel addresses are fine: each lives in its own VRF.
    assert cfg.interfaces[0].address == cfg.interfaces[1].address
    # With a front-door VRF too: the underlay in a third namespace.
    fvrf = {"source": "172.30.0.11", "namespace": "spoke1-ul"}
    both = parse_config(_node(_itf(1, tunnel=fvrf | {"key": 1}), _itf(2, tunnel=fvrf | {"key": 2})))
    assert {i.tunnel.namespace for i in both.interfaces} == {"spoke1-ul"}


def test_same_key_twice_on_one_underlay_refused() -> None:
    problems = _problems(_node(_itf(1), _itf(2, tunnel={"source": "172.30.0.11", "key": 1})))
    assert any(
        "interfaces.1.tunnel.key: key 1 is already used by interfaces.0" in p for p in problems
    ), problems
    # Neither key: the same.
    no_key = {"source": "172.30.0.11"}
    problems = _problems(_node(_itf(1, tunnel=no_key), _itf(2, tunnel=no_key)))
    assert any("no key is already used" in p for p in problems), problems
    # The same key on another source, or in another underlay namespace, is fine.
    parse_config(_node(_itf(1), _itf(2, tunnel={"source": "172.30.0.12", "key": 1})))
    other_ul = {"source": "172.30.0.11", "key": 1, "namespace": "ul2"}
    parse_config(_node(_itf(1), _itf(2, tunnel=other_ul)))


@pytest.mark.parametrize(
    ("itf", "where", "why"),
    [
        (_itf(1, vrf="blue"), "interfaces.0", "vrf: VRF devices are not supported"),
        (
            _itf(1, tunnel={"source": "172.30.0.11", "vrf": "blue"}),
            "interfaces.0",
            "tunnel.vrf: VRF devices are not supported",
        ),
        (_itf(1, dataplane="ebpf"), "interfaces.0", "with namespace (overlay VRF) use userspace"),
        (_itf(1, namespace="a/b"), "interfaces.0.namespace", "should match pattern"),
    ],
)
def test_refused(itf: dict[str, Any], where: str, why: str) -> None:
    problems = _problems(_node(itf))
    assert any(p.startswith(where) and why in p for p in problems), problems


def test_vrf_refusal_names_the_reason_and_the_way() -> None:
    (problem,) = _problems(_node(_itf(1, vrf="blue")))
    assert "has none" in problem and "use namespace: NAME" in problem


def test_unknown_namespace_refused(tmp_path: Path) -> None:
    cfg = parse_config(
        _node(_itf(1), _itf(2, tunnel={"source": "172.30.0.11", "key": 2, "namespace": "ul"}))
    )
    (tmp_path / "spoke1-vrf1").touch()
    problems = missing_namespaces(cfg, tmp_path)
    assert len(problems) == 2, problems
    assert problems[0].startswith("interfaces.1.namespace: no network namespace 'spoke1-vrf2'")
    assert problems[1].startswith("interfaces.1.tunnel.namespace: no network namespace 'ul'")
    assert "ip netns add" in problems[0]
    for name in ("spoke1-vrf2", "ul"):
        (tmp_path / name).touch()
    assert missing_namespaces(cfg, tmp_path) == []


def test_reload_refuses_moving_an_interface_to_another_vrf() -> None:
    old = parse_config(_node(_itf(1)))
    new = parse_config(_node(_itf(1, namespace="elsewhere")))
    plan = plan_reload(old, new)
    assert not plan.ok and "namespace" in plan.refused[0]


def test_routes_of_a_vrf() -> None:
    """`ip route vrf`: an interface's own routes, checked against it."""
    routes = [
        {"prefix": "192.168.0.0/16", "via": "nhs"},
        {"prefix": "10.9.0.0/16", "via": "10.0.0.1"},
    ]
    itf = parse_config(_node(_itf(1, routes=routes))).interfaces[0]
    assert [str(r.prefix) for r in itf.routes] == ["192.168.0.0/16", "10.9.0.0/16"]
    hub = _itf(1, routes=[{"prefix": "192.168.1.0/24", "via": "nhs"}])
    hub["nhrp"] = {"network_id": 1}
    problems = _problems(_node(hub))
    assert any("routes.0.via: nhs, but this interface has no IPv4 NHS" in p for p in problems)
    v6 = _itf(1, routes=[{"prefix": "fd01::/64", "via": "fd00::1"}])
    assert any("routes.0: IPv6 routes need" in p for p in _problems(_node(v6)))


def test_lab_vrf_clouds_configs() -> None:
    from dmvpn.lab.topology import Topology, TopologyError, vrf_namespace

    topo = Topology.from_data({"vrf_clouds": True, "key": 1})
    spoke = parse_config(topo.node_config("spoke1", "x-"))
    assert [(i.name, i.namespace, i.tunnel.key, i.nhrp.network_id) for i in spoke.interfaces] == [
        ("dmvpn1", "x-spoke1-vrf1", 1, 1),
        ("dmvpn2", "x-spoke1-vrf2", 2, 2),
    ]
    # The same addresses in both VRFs; the routes go with each interface.
    assert {str(i.address) for i in spoke.interfaces} == {"10.0.0.11/24"}
    assert spoke.routes == [] and all(i.routes for i in spoke.interfaces)
    hub = parse_config(topo.node_config("hub1", "x-"))
    assert [str(r.prefix) for r in hub.interfaces[1].routes] == [
        "192.168.1.0/24",
        "192.168.2.0/24",
        "192.168.3.0/24",
    ]
    assert vrf_namespace("x-", "host1", 1, host=True) == "x-host1"
    assert vrf_namespace("x-", "host1", 2, host=True) == "x-host1-vrf2"
    # With a front-door VRF as well: allowed (the runner adds tunnel.namespace).
    Topology.from_data({"vrf_clouds": True, "front_door_vrf": True})
    # With IPsec too: both interfaces share the one SA to each peer.
    psk = "0123456789abcdef"
    cfg = parse_config(
        Topology.from_data({"vrf_clouds": True, "ipsec_psk": psk}).node_config("hub1")
    )
    assert cfg.ipsec is not None and len({i.tunnel.source for i in cfg.interfaces}) == 1
    for extra in ({"qos": {"g": "1mbit"}}, {"ipv6": True}):
        with pytest.raises(TopologyError, match="vrf_clouds: not with"):
            Topology.from_data({"vrf_clouds": True, **extra})


def test_show_dmvpn_names_the_vrf() -> None:
    from dmvpn.cli.show import render_dmvpn

    itf = {"interface": "dmvpn1", "family": 4, "type": "spoke", "peer_count": 0, "peers": []}
    text = render_dmvpn({"interfaces": [itf | {"vrf": "spoke1-blue"}, itf | {"vrf": None}]})
    assert text.count("VRF: spoke1-blue\n") == 1 and text.count("VRF:") == 1


def test_qos_on_two_interfaces_of_one_underlay_refused() -> None:
    def hub(n: int) -> dict[str, Any]:
        itf = _itf(n, qos={"groups": {"small": {"rate": "10mbit"}}})
        itf["nhrp"] = {"network_id": n}
        return itf

    problems = _problems(_node(hub(1), hub(2)))
    assert any("interfaces.1.qos: interfaces.0 already shapes this underlay" in p for p in problems)
    other = hub(2)
    other["tunnel"] = {"source": "172.30.0.11", "key": 2, "namespace": "ul2"}
    parse_config(_node(hub(1), other))
