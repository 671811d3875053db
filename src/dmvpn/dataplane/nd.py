"""IPv6 Neighbor Discovery on the TAP (RFC 4861), the IPv6 twin of ARP there.

The kernel's Neighbor Solicitations never leave the node: they are answered
here from NHRP, as ARP requests are (forwarding.py). What the kernel sends
that would only flood the cloud (router solicitations, MLD reports,
duplicate address detection probes) is dropped: an NBMA cloud has no
link-wide multicast to speak of beyond the `map multicast` set, and nothing
on it would answer a DAD probe, so dropping it lets DAD succeed.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Final

from dmvpn.wire import internet_checksum

from .nbmamac import Nbma, mac_nbma

ETH_IPV6: Final = b"\x86\xdd"
NEXT_ICMPV6: Final = 58
# ICMPv6 types (RFC 4861 section 4, RFC 3810 MLDv2, RFC 2710 MLDv1).
ROUTER_SOLICITATION: Final = 133
ROUTER_ADVERTISEMENT: Final = 134
NEIGHBOR_SOLICITATION: Final = 135
NEIGHBOR_ADVERTISEMENT: Final = 136
REDIRECT: Final = 137
MLD_TYPES: Final = frozenset({130, 131, 132, 143})
# Link-local traffic the cloud must not see (the `dropped.*` counters).
DROPPED: Final = {
    ROUTER_SOLICITATION: "router_solicitation",
    ROUTER_ADVERTISEMENT: "router_advertisement",
    NEIGHBOR_ADVERTISEMENT: "neighbor_advertisement",
    REDIRECT: "redirect",
    **dict.fromkeys(MLD_TYPES, "mld"),
}
ALL_NODES: Final = IPv6Address("ff02::1")
# NA flags (RFC 4861 4.4): Solicited, Override.
_SOLICITED = 0x40
_OVERRIDE = 0x20
_UNSPECIFIED = bytes(16)


@dataclass(frozen=True, slots=True)
class Solicitation:
    """A Neighbor Solicitation the kernel sent: who asks, for what."""

    src: IPv6Address  # :: for a DAD probe
    target: IPv6Address

    @property
    def is_dad(self) -> bool:
        return self.src.packed == _UNSPECIFIED


def icmpv6_type(packet: bytes) -> int | None:
    """The ICMPv6 type of an IPv6 packet without extension headers (what ND
    and MLD messages are, RFC 4861 / 3810 use no other header than
    hop-by-hop for MLD, taken into account here), else None."""
    if len(packet) < 41:
        return None
    nxt = packet[6]
    off = 40
    if nxt == 0 and len(packet) >= 48:  # hop-by-hop (MLD's router alert)
        nxt = packet[40]
        off = 40 + (packet[41] + 1) * 8
    if nxt != NEXT_ICMPV6 or len(packet) <= off:
        return None
    return packet[off]


def parse_solicitation(packet: bytes) -> Solicitation | None:
    """The NS in an IPv6 packet (hop limit 255 as RFC 4861 7.1.1 demands)."""
    if len(packet) < 64 or packet[6] != NEXT_ICMPV6 or packet[7] != 255:
        return None
    if packet[40] != NEIGHBOR_SOLICITATION or packet[41] != 0:
        return None
    return Solicitation(IPv6Address(packet[8:24]), IPv6Address(packet[48:64]))


def advertisement(
    target: IPv6Address, target_mac: bytes, dst: IPv6Address, *, solicited: bool = True
) -> bytes:
    """An IPv6 Neighbor Advertisement from ``target`` (with its link-layer
    address option) to ``dst``; Override set, as the answer is NHRP's."""
    flags = _OVERRIDE | (_SOLICITED if solicited else 0)
    body = bytes([NEIGHBOR_ADVERTISEMENT, 0, 0, 0, flags, 0, 0, 0]) + target.packed
    body += b"\x02\x01" + target_mac  # option 2: target link-layer address
    pseudo = target.packed + dst.packed + len(body).to_bytes(4, "big") + b"\x00\x00\x00\x3a"
    csum = internet_checksum(pseudo + body)
    body = body[:2] + csum.to_bytes(2, "big") + body[4:]
    header = (
        b"\x60\x00\x00\x00"
        + len(body).to_bytes(2, "big")
        + bytes([NEXT_ICMPV6, 255])
        + target.packed
        + dst.packed
    )
    return header + body


def multicast_mac(dst: bytes) -> bytes:
    """33:33 + the low 32 bits of an IPv6 multicast address (RFC 2464 7)."""
    return b"\x33\x33" + dst[12:16]


def link_local_nbma(addr: IPv6Address) -> Nbma | None:
    """The NBMA address behind a peer's link-local address. Peers' MACs are
    02:00 + NBMA (forwarding.nbma_mac), so the kernel's EUI-64 link-local
    address (RFC 4291 2.5.1: U/L bit flipped, ff:fe in the middle) is
    fe80::0:NNff:feNN:NNNN and names the NBMA address without NHRP, which
    only carries the global tunnel addresses (OSPFv3 hellos come from these)."""
    b = addr.packed
    if b[:8] != b"\xfe\x80" + bytes(6) or b[11:13] != b"\xff\xfe":
        return None
    if b[8:10] == b"\x00\x00":
        return IPv4Address(b[10:11] + b[13:16])
    if b[8:10] == b"\x04\x00":  # 06:00 + digest: an IPv6 underlay peer (nbma.py)
        return mac_nbma(b"\x06\x00" + b[10:11] + b[13:16])
    return None
