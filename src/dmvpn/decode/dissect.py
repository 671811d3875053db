"""From a captured frame to the GRE/NHRP it carries (pure: no file I/O).

Link types follow the tcpdump.org LINKTYPE_ registry: Ethernet (with VLAN
tags), raw IP, Linux cooked v1 and v2, BSD loopback. GRE over IPv4 and IPv6;
NHRP directly over IP (protocol 54) is also recognised, as tcpdump does.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from dmvpn.wire import (
    DecodeError,
    EtherType,
    GrePacket,
    NhrpPacket,
    decode_ethernet,
    decode_gre,
    decode_ipv4,
    decode_ipv6,
    decode_nhrp,
)
from dmvpn.wire.ip import PROTO_GRE, PROTO_NHRP


class LinkType(IntEnum):
    NULL = 0
    ETHERNET = 1
    RAW_BSD = 12  # DLT_RAW as numbered on OpenBSD; raw IP
    RAW_BSD_ALT = 14
    LOOP = 108
    RAW = 101
    LINUX_SLL = 113
    IPV4 = 228
    IPV6 = 229
    LINUX_SLL2 = 276


# Extension headers we step over to reach GRE (RFC 8200 4.1).
_IPV6_SKIPPABLE = {0, 43, 60}


@dataclass(frozen=True, slots=True)
class GreRecord:
    """One GRE (or NHRP-over-IP) packet found in a capture."""

    frame: int
    timestamp: float
    outer_src: str
    outer_dst: str
    gre: GrePacket | None  # None for NHRP carried directly in IP
    nhrp_bytes: bytes | None  # what the NHRP decoder was given
    nhrp: NhrpPacket | None
    error: DecodeError | None
    error_layer: str | None  # "gre" or "nhrp"
    roundtrip: bool | None  # None when there is no NHRP


def _network_layer(linktype: int, data: bytes) -> tuple[int, bytes] | None:
    """(ethertype, network-layer bytes) of a frame, or None if not IP."""
    if linktype == LinkType.ETHERNET:
        try:
            eth = decode_ethernet(data)
        except DecodeError:
            return None
        return eth.ethertype, eth.payload
    if linktype in (LinkType.RAW, LinkType.RAW_BSD, LinkType.RAW_BSD_ALT):
        if not data:
            return None
        version = data[0] >> 4
        return (EtherType.IPV4 if version == 4 else EtherType.IPV6), data
    if linktype == LinkType.IPV4:
        return EtherType.IPV4, data
    if linktype == LinkType.IPV6:
        return EtherType.IPV6, data
    if linktype == LinkType.LINUX_SLL:
        if len(data) < 16:
            return None
        return int.from_bytes(data[14:16], "big"), data[16:]
    if linktype == LinkType.LINUX_SLL2:
        if len(data) < 20:
            return None
        return int.from_bytes(data[0:2], "big"), data[20:]
    if linktype in (LinkType.NULL, LinkType.LOOP):
        if len(data) < 4:
            return None
        family = int.from_bytes(data[:4], "little" if linktype == LinkType.NULL else "big")
        if family == 2:
            return EtherType.IPV4, data[4:]
        if family in (10, 24, 28, 30):
            return EtherType.IPV6, data[4:]
        return None
    return None


def dissect_frame(linktype: int, frame: int, timestamp: float, data: bytes) -> GreRecord | None:
    """The GRE/NHRP record of a frame, or None when it carries neither."""
    net = _network_layer(linktype, data)
    if net is None:
        return None
    ethertype, packet = net
    try:
        if ethertype == EtherType.IPV4:
            ip4, payload = decode_ipv4(packet)
            if ip4.flags_fragment & 0x3FFF:
                return None  # a fragment: the GRE header may not be here
            proto, src, dst = ip4.protocol, str(ip4.src), str(ip4.dst)
        elif ethertype == EtherType.IPV6:
            ip6, payload = decode_ipv6(packet)
            proto, src, dst = ip6.next_header, str(ip6.src), str(ip6.dst)
            while proto in _IPV6_SKIPPABLE and len(payload) >= 8:
                proto, hlen = payload[0], (payload[1] + 1) * 8
                payload = payload[hlen:]
        else:
            return None
    except DecodeError:
        return None
    if proto == PROTO_NHRP:
        return _nhrp_record(frame, timestamp, src, dst, None, payload)
    if proto != PROTO_GRE:
        return None
    try:
        gre = decode_gre(payload)
    except DecodeError as exc:
        return GreRecord(frame, timestamp, src, dst, None, None, None, exc, "gre", None)
    if gre.protocol != EtherType.NHRP:
        return GreRecord(frame, timestamp, src, dst, gre, None, None, None, None, None)
    return _nhrp_record(frame, timestamp, src, dst, gre, gre.payload)


def _nhrp_record(
    frame: int, timestamp: float, src: str, dst: str, gre: GrePacket | None, data: bytes
) -> GreRecord:
    try:
        pkt = decode_nhrp(data)
    except DecodeError as exc:
        return GreRecord(frame, timestamp, src, dst, gre, data, None, exc, "nhrp", False)
    encoded = pkt.encode()
    return GreRecord(
        frame, timestamp, src, dst, gre, data, pkt, None, None, encoded == data[: len(encoded)]
    )
