"""The eBPF data plane's pure parts, no root: the map values' layout (as
bpf/mgre.c declares them), the probe, config validation, choosing a plane."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address
from typing import Any

import pytest

from dmvpn.config import ConfigError, parse_config
from dmvpn.dataplane.ebpf import (
    CFG_IPV6,
    CFG_KEY,
    CFG_ON,
    PROBE_PAYLOAD,
    EbpfDataPlane,
    echo_request,
    pack_config,
    unpack_peer,
)
from dmvpn.lab.topology import Topology


def test_config_value_matches_struct_config() -> None:
    value = pack_config(
        local=IPv4Address("172.30.0.11"),
        key=42,
        flags=CFG_ON,
        tap_ifindex=7,
        underlay_ifindex=3,
        max_inner=1472,
    )
    assert len(value) == 32  # 6 x u32 + 6-byte MAC + 2 bytes padding
    local, key, flags, tap, underlay, max_inner = struct.unpack("=4s4sIIII", value[:24])
    assert local == bytes([172, 30, 0, 11]) and key == b"\x00\x00\x00\x2a"
    assert flags == CFG_ON | CFG_KEY and (tap, underlay, max_inner) == (7, 3, 1472)
    assert value[24:30] == b"\x02\x00" + bytes([172, 30, 0, 11])  # the TAP's MAC
    no_key = pack_config(
        local=IPv4Address("10.1.2.3"),
        key=None,
        flags=CFG_IPV6,
        tap_ifindex=1,
        underlay_ifindex=2,
        max_inner=1400,
    )
    assert struct.unpack("=I", no_key[8:12])[0] == CFG_IPV6
    assert no_key[4:8] == bytes(4)


def test_peer_value_is_five_counters_and_the_last_destination() -> None:
    # struct peer in bpf/mgre.c: five __u64, then the inner IPv4 destination
    # last sent (network order) and 4 bytes of padding.
    value = struct.pack("=QQQQQ", 1, 2, 3, 4, 5) + bytes([192, 168, 2, 10]) + bytes(4)
    c = unpack_peer(value)
    assert (c.tx_packets, c.tx_bytes, c.rx_packets, c.rx_bytes, c.capable_ns) == (1, 2, 3, 4, 5)
    assert c.last_dst == bytes([192, 168, 2, 10])


def test_probe_is_an_echo_request_with_a_valid_checksum() -> None:
    probe = echo_request(0x1234, 7)
    assert probe[0] == 8 and probe[1] == 0 and probe.endswith(PROBE_PAYLOAD)
    total = sum(struct.unpack(f"!{len(probe) // 2}H", probe))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    assert total == 0xFFFF


def _node(dataplane: str | None, ipsec: bool = False) -> dict[str, Any]:
    itf: dict[str, Any] = {
        "name": "dmvpn0",
        "address": "10.0.0.11/24",
        "tunnel": {"source": "172.30.0.11", "key": 42},
        "nhrp": {"network_id": 1, "nhs": [{"address": "10.0.0.1", "nbma": "172.30.0.1"}]},
    }
    if dataplane is not None:
        itf["dataplane"] = dataplane
    node: dict[str, Any] = {"node": "spoke1", "interfaces": [itf]}
    if ipsec:
        node["ipsec"] = {"psk": "a-pre-shared-key-of-16+"}
    return node


def test_dataplane_defaults_to_userspace_and_takes_ebpf_and_auto() -> None:
    assert parse_config(_node(None)).interfaces[0].dataplane == "userspace"
    for plane in ("userspace", "ebpf", "auto"):
        assert parse_config(_node(plane)).interfaces[0].dataplane == plane
    assert parse_config(_node("auto", ipsec=True)).interfaces[0].dataplane == "auto"


def test_bad_dataplanes_are_refused_with_field_and_reason() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(_node("xdp"))
    assert any("interfaces.0.dataplane" in p for p in exc.value.problems), exc.value.problems
    with pytest.raises(ConfigError) as exc:
        parse_config(_node("ebpf", ipsec=True))
    assert any(
        "interfaces.0.dataplane: ebpf cannot carry IPsec" in p for p in exc.value.problems
    ), exc.value.problems


def test_the_lab_topology_sets_every_routers_dataplane() -> None:
    topo = Topology.from_data({"dataplane": "ebpf"})
    for plan in topo.dmvpn_routers:
        assert topo.node_config(plan.name)["interfaces"][0]["dataplane"] == "ebpf"
    assert "dataplane" not in Topology.from_data({}).node_config("spoke1")["interfaces"][0]
    chosen = Topology.from_data({"dataplane": "userspace"}).node_config("spoke1")
    assert chosen["interfaces"][0]["dataplane"] == "userspace"


def test_construction_touches_nothing() -> None:
    cfg = parse_config(_node("ebpf")).interfaces[0]
    plane = EbpfDataPlane(cfg, ipr=None, log=lambda kind, msg: None)  # type: ignore[arg-type]
    assert not plane.active and plane.index == -1


def test_auto_picks_userspace_under_ipsec_and_says_why() -> None:
    from dmvpn.daemon.node import make_dataplane
    from dmvpn.dataplane.userspace import UserspaceDataPlane

    said: list[str] = []
    cfg = parse_config(_node("auto")).interfaces[0]
    plane = make_dataplane(cfg, None, lambda kind, msg, **_: said.append(msg), ipsec=True)  # type: ignore[arg-type]
    assert type(plane) is UserspaceDataPlane
    assert said == ["dmvpn0: userspace data plane (IPsec is on (bpf_redirect bypasses xfrm))"]
    assert isinstance(
        make_dataplane(parse_config(_node("ebpf")).interfaces[0], None, print), EbpfDataPlane
    )  # type: ignore[arg-type]
