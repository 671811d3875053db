"""The IPv6 underlay below the engine: NHRP with 16-byte NBMA addresses
(ar$afn 2) decoded from bytes laid out by hand and re-encoded byte for byte;
the config's one-family rule; TAP MACs for IPv6 NBMA addresses."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest

from dmvpn.config import ConfigError, parse_config
from dmvpn.dataplane import nd
from dmvpn.dataplane.nbmamac import mac_nbma, nbma_mac
from dmvpn.wire import (
    AddressFamily,
    Cie,
    NatAddressExtension,
    NhrpPacket,
    PacketType,
    decode_nhrp,
    internet_checksum,
)

SPOKE = IPv6Address("2001:db8:30::11")
HUB = IPv6Address("2001:db8:30::1")


def _cie(nbma: bytes, proto: bytes, code: int = 0, prefix: int = 32) -> bytes:
    head = struct.pack("!BBHHHBBBB", code, prefix, 0, 1400, 600, len(nbma), 0, len(proto), 0)
    return head + nbma + proto


def _registration_request_bytes() -> bytes:
    """A Registration Request over an IPv6 underlay, laid out by hand from
    RFC 2332 5.2.0.1/5.2.1 (not by the encoder): afn 2, shtl 16."""
    src_nbma = SPOKE.packed
    src_proto = IPv4Address("10.0.0.11").packed
    dst_proto = IPv4Address("10.0.0.1").packed
    cies = _cie(b"", b"", prefix=0xFF)
    nat = _cie(HUB.packed, dst_proto)
    mandatory = struct.pack("!BBHI", 4, 4, 0x8002, 77) + src_nbma + src_proto + dst_proto + cies
    ext = struct.pack("!HH", 9, len(nat)) + nat + struct.pack("!HH", 0x8000, 0)
    extoff = 20 + len(mandatory)
    size = extoff + len(ext)
    fixed = struct.pack("!HH5sBHHHBBBB", 2, 0x0800, bytes(5), 255, size, 0, extoff, 1, 3, 16, 0)
    data = bytearray(fixed + mandatory + ext)
    data[12:14] = internet_checksum(bytes(data)).to_bytes(2, "big")
    return bytes(data)


def test_hand_built_ipv6_nbma_registration_decodes_and_round_trips() -> None:
    data = _registration_request_bytes()
    pkt = decode_nhrp(data)
    assert pkt.type == PacketType.REGISTRATION_REQUEST
    assert pkt.afn == AddressFamily.IPV6
    assert pkt.src_nbma == SPOKE
    assert pkt.src_proto == IPv4Address("10.0.0.11")
    assert pkt.cies[0].nbma == b"" and pkt.cies[0].prefix_length == 0xFF
    nat = pkt.extension(NatAddressExtension)
    assert isinstance(nat, NatAddressExtension)
    assert nat.cies[0].nbma == HUB and nat.cies[0].protocol == IPv4Address("10.0.0.1")
    assert pkt.encode() == data


@pytest.mark.parametrize("ptype", list(PacketType))
def test_every_type_with_ipv6_nbma_round_trips(ptype: PacketType) -> None:
    fields: dict[str, Any] = dict(
        type=ptype,
        afn=AddressFamily.IPV6,
        src_nbma=SPOKE,
        src_proto=IPv4Address("10.0.0.11"),
        dst_proto=IPv4Address("10.0.0.12"),
        extensions=(NatAddressExtension(cies=(Cie(nbma=HUB, protocol=IPv4Address("10.0.0.1")),)),),
    )
    if ptype >= PacketType.ERROR_INDICATION:
        fields["contents"] = bytes(28)
    else:
        fields["cies"] = (
            Cie(nbma=IPv6Address("2001:db8:30::12"), protocol=IPv4Address("10.0.0.12")),
        )
    data = NhrpPacket(**fields).encode()
    assert data[0:2] == b"\x00\x02" and data[18] == 16  # ar$afn, ar$shtl
    assert data[28:44] == SPOKE.packed  # the source NBMA right after the mandatory part
    again = decode_nhrp(data)
    assert again == NhrpPacket(**fields)
    assert again.encode() == data


def _node(source: str, nhs_nbma: str, **itf: Any) -> dict[str, Any]:
    return {
        "node": "spoke1",
        "interfaces": [
            {
                "name": "dmvpn0",
                "address": "10.0.0.11/24",
                "tunnel": {"source": source, "key": 42},
                "nhrp": {"network_id": 1, "nhs": [{"address": "10.0.0.1", "nbma": nhs_nbma}]},
                **itf,
            }
        ],
    }


def test_ipv6_underlay_config_loads_into_engine_config() -> None:
    cfg = parse_config(_node("2001:db8:30::11", "2001:db8:30::1"))
    itf = cfg.interfaces[0]
    assert itf.underlay_ipv6
    ec = itf.engine_config()
    assert ec.nbma_address == SPOKE and ec.nhs[0].nbma == HUB


def _problem(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return "\n".join(info.value.problems)


def test_mixing_underlay_families_is_refused_with_field_and_reason() -> None:
    text = _problem(_node("2001:db8:30::11", "172.30.0.1"))
    assert "nhrp.nhs.0.nbma 172.30.0.1 is IPv4 but tunnel.source 2001:db8:30::11 is IPv6" in text
    text = _problem(_node("172.30.0.11", "2001:db8:30::1"))
    assert "nhrp.nhs.0.nbma 2001:db8:30::1 is IPv6 but tunnel.source 172.30.0.11 is IPv4" in text
    data = _node("2001:db8:30::11", "2001:db8:30::1")
    data["interfaces"][0]["nhrp"]["map"] = [{"address": "10.0.0.12", "nbma": "172.30.0.12"}]
    assert "nhrp.map.0.nbma 172.30.0.12 is IPv4" in _problem(data)
    data = _node("2001:db8:30::11", "2001:db8:30::1")
    data["interfaces"][0]["nhrp"]["map_multicast"] = ["nhs", "172.30.0.1"]
    assert "nhrp.map_multicast.1 172.30.0.1 is IPv4" in _problem(data)


@pytest.mark.parametrize("plane", ["ebpf", "kernel"])
def test_ipv6_underlay_on_kernel_planes_is_refused(plane: str) -> None:
    text = _problem(_node("2001:db8:30::11", "2001:db8:30::1", dataplane=plane))
    assert (
        f"dataplane: {plane} does not do an IPv6 underlay (tunnel.source 2001:db8:30::11)" in text
    )


def test_ipv6_underlay_refusals_name_the_field() -> None:
    data = _node("2001:db8:30::11", "2001:db8:30::1")
    data["interfaces"][0]["tunnel"]["path_mtu_discovery"] = True
    assert "tunnel.path_mtu_discovery is IPv4 only" in _problem(data)
    data = _node("2001:db8:30::11", "2001:db8:30::1")
    data["ipsec"] = {"psk": "x" * 20}
    assert "interfaces.0.tunnel.source: IPsec over an IPv6 underlay" in _problem(data)
    assert "tunnel.source: 'nope' is not an IPv4 or IPv6 address" in _problem(_node("nope", "::1"))


def test_tap_macs_for_ipv6_nbma_map_back_and_through_link_local() -> None:
    mac = nbma_mac(SPOKE)
    assert len(mac) == 6 and mac[:2] == b"\x06\x00"
    assert mac[0] & 1 == 0 and mac[0] & 2  # unicast, locally administered
    assert nbma_mac(SPOKE) == mac  # the same every time (and on every node)
    assert mac_nbma(mac) == SPOKE
    assert mac_nbma(nbma_mac(IPv4Address("172.30.0.11"))) == IPv4Address("172.30.0.11")
    assert mac_nbma(b"\x06\x00\x00\x00\x00\x00") is None  # never made
    # The kernel's EUI-64 link-local address for that MAC (U/L bit flipped).
    eui = bytes([mac[0] ^ 2]) + mac[1:3] + b"\xff\xfe" + mac[3:]
    assert nd.link_local_nbma(IPv6Address(b"\xfe\x80" + bytes(6) + eui)) == SPOKE


def test_show_dmvpn_puts_a_long_ipv6_nbma_address_on_its_own_line() -> None:
    from dmvpn.cli.show import render_dmvpn

    entry = {"tunnel_address": "10.0.0.12", "state": "UP", "updn": "00:00:05", "attrb": "D"}
    peers = [
        {"entry_count": 1, "nbma": "2001:db8:30::112", "entries": [entry]},
        {
            "entry_count": 1,
            "nbma": "fd30::13",
            "entries": [entry | {"tunnel_address": "10.0.0.13"}],
        },
    ]
    itf = {"interface": "dmvpn0", "family": 4, "type": "hub", "peer_count": 2, "peers": peers}
    lines = render_dmvpn({"interfaces": [itf]}).splitlines()
    at = lines.index("     1 2001:db8:30::112")
    assert lines[at + 1] == "                             10.0.0.12    UP 00:00:05     D"
    assert lines[at + 2] == "     1 fd30::13              10.0.0.13    UP 00:00:05     D"
