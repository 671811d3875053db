"""Path MTU discovery through the cloud (Cisco `tunnel path-mtu-discovery`,
Linux ip_gre's `pmtudisc`), free of sockets and clocks.

With it on, DF is copied from the inner IPv4 packet to the outer one (IPv6
inner packets above 1280 bytes always leave with DF: RFC 4213 3.2 lets a
tunnel fragment only what is within IPv6's minimum MTU). The path MTU to
each peer is learned from:

- a local EMSGSIZE (our own underlay link is smaller than the packet);
- ICMP Fragmentation Needed for our own GRE, which the kernel hands to the
  GRE socket's error queue with the packet it quotes. It is believed only
  when the quote is a GRE packet we could have sent to that peer (our key,
  a data protocol) and the MTU is sane: not below 576 (RFC 791's minimum
  datagram every host must accept; a lower value is the classic forged-ICMP
  attack that makes a tunnel fragment everything), not above what we sent.

A learned value ages out after 10 minutes (Linux's `mtu_expires`, RFC 1191
section 6.3's suggestion), so a path that grows back is found again. A DF
packet that no longer fits is not sent: its sender gets ICMP Fragmentation
Needed (IPv6: Packet Too Big) with the learned MTU less the tunnel's
overhead, as a router would.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from dmvpn.wire.checksum import internet_checksum

__all__ = [
    "AGE",
    "IPV4_MIN",
    "IPV6_MIN",
    "PathMtuCache",
    "frag_needed",
    "packet_too_big",
    "wants_df",
]

AGE = 600.0
IPV4_MIN = 576
IPV6_MIN = 1280
# What the sender of an ICMP error quotes at most: the whole error within
# 576 bytes (RFC 1812 4.3.2.3) / 1280 (RFC 4443 2.4 (c)).
_QUOTE4 = IPV4_MIN - 20 - 8
_QUOTE6 = IPV6_MIN - 40 - 8


def wants_df(inner: bytes) -> bool:
    """Does this inner packet (IPv4 or IPv6) leave with DF on the outer header?"""
    if inner[0] >> 4 == 4:
        return bool(inner[6] & 0x40)
    return len(inner) > IPV6_MIN


@dataclass
class PathMtu:
    mtu: int
    learned: float  # when (the caller's clock)
    source: str  # "icmp" or "local"
    reporter: IPv4Address | None  # the router that sent the ICMP


class PathMtuCache:
    """Per-peer path MTU (outer packet size) learned, with its age."""

    def __init__(self, age: float = AGE) -> None:
        self.age = age
        self._peers: dict[IPv4Address, PathMtu] = {}

    def learn(
        self,
        nbma: IPv4Address,
        mtu: int,
        now: float,
        source: str,
        reporter: IPv4Address | None = None,
    ) -> bool:
        """Record ``mtu`` for ``nbma`` if it is sane; False (nothing changes)
        if it is below IPv4's minimum."""
        if mtu < IPV4_MIN:
            return False
        self._peers[nbma] = PathMtu(mtu, now, source, reporter)
        return True

    def get(self, nbma: IPv4Address, now: float) -> int | None:
        """The learned MTU towards ``nbma``, or None (unknown or aged out)."""
        entry = self._peers.get(nbma)
        if entry is None:
            return None
        if now - entry.learned >= self.age:
            del self._peers[nbma]
            return None
        return entry.mtu

    def entries(self, now: float) -> dict[IPv4Address, PathMtu]:
        """Every live entry (aged ones dropped), for show."""
        for nbma in [n for n, e in self._peers.items() if now - e.learned >= self.age]:
            del self._peers[nbma]
        return dict(self._peers)

    def forget(self, nbma: IPv4Address) -> None:
        self._peers.pop(nbma, None)


def frag_needed(inner: bytes, mtu: int) -> bytes:
    """ICMP Destination Unreachable, Fragmentation Needed (RFC 792, RFC 1191
    section 4: next-hop MTU in the second word) quoting ``inner``: the ICMP
    message, for a raw ICMP socket (the kernel adds the IP header)."""
    quote = inner[:_QUOTE4]
    head = struct.pack("!BBHHH", 3, 4, 0, 0, mtu)
    checksum = internet_checksum(head + quote)
    return head[:2] + struct.pack("!H", checksum) + head[4:] + quote


def packet_too_big(inner: bytes, mtu: int) -> bytes:
    """ICMPv6 Packet Too Big (RFC 4443 3.2) quoting ``inner``; the checksum is
    left 0: the kernel fills it in on a raw ICMPv6 socket (RFC 3542 3.1)."""
    return struct.pack("!BBHI", 2, 0, 0, max(mtu, IPV6_MIN)) + inner[:_QUOTE6]
