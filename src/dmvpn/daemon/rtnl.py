"""Just enough rtnetlink to follow the kernel's routes, rules and links:
the messages of a datagram, route and rule messages as values, dump
requests (linux/rtnetlink.h, linux/fib_rules.h).

Hand-written rather than pyroute2's: a hub's table is tens of thousands of
routes, dumped again after an overrun, on the event loop, and these few
structs parse it an order of magnitude faster.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import NamedTuple

Network = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address

AF_INET = 2
AF_INET6 = 10

NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTM_NEWRULE = 32
RTM_DELRULE = 33
RTM_GETRULE = 34

NLM_F_REQUEST = 0x1
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_APPEND = 0x800

# Route types (rtm_type).
RTN_UNICAST = 1
RTN_LOCAL = 2
RTN_BROADCAST = 3
RTN_ANYCAST = 4
RTN_MULTICAST = 5
RTN_BLACKHOLE = 6
RTN_UNREACHABLE = 7
RTN_PROHIBIT = 8
RTN_THROW = 9

RT_TABLE_DEFAULT = 253
RT_TABLE_MAIN = 254
RT_TABLE_LOCAL = 255

RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_MULTIPATH = 9
RTA_TABLE = 15

RTM_F_CLONED = 0x200  # a cached clone (PMTU, redirect), not a route
RTNH_F_DEAD = 0x1
IFF_UP = 0x1

# Rule actions and attributes.
FR_ACT_TO_TBL = 1
FR_ACT_NOP = 3
FR_ACT_BLACKHOLE = 6
FR_ACT_UNREACHABLE = 7
FR_ACT_PROHIBIT = 8
FIB_RULE_INVERT = 0x2
FRA_PRIORITY = 6
FRA_FWMARK = 10
FRA_SUPPRESS_IFGROUP = 13
FRA_SUPPRESS_PREFIXLEN = 14
FRA_TABLE = 15
FRA_FWMASK = 16
FRA_PROTOCOL = 21  # who added the rule: no selector
NO_SUPPRESS = 0xFFFFFFFF  # suppress_* unset (-1)

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# rtmsg: family dst_len src_len tos table protocol scope type, flags; a
# fib_rule_hdr has the same layout (family dst_len src_len tos table res res action, flags).
RTMSG = struct.Struct("=BBBBBBBBI")
RTATTR = struct.Struct("=HH")  # len, type
RTNEXTHOP = struct.Struct("=HBBi")  # len, flags, hops, ifindex
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
U32 = struct.Struct("=I")


class Message(NamedTuple):
    type: int
    flags: int
    seq: int
    payload: bytes


def parse(data: bytes) -> Iterator[Message]:
    """The netlink messages of one datagram."""
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, kind, flags, seq, _ = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            return  # truncated: nothing after it can be trusted
        yield Message(kind, flags, seq, data[offset + NLMSGHDR.size : offset + length])
        offset += (length + 3) & ~3


def attributes(data: bytes, offset: int = 0, end: int | None = None) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    end = len(data) if end is None else end
    while offset + RTATTR.size <= end:
        length, kind = RTATTR.unpack_from(data, offset)
        if length < RTATTR.size or offset + length > end:
            break
        # NLA_F_NESTED and NLA_F_NET_BYTEORDER ride in the top bits.
        found[kind & 0x3FFF] = data[offset + RTATTR.size : offset + length]
        offset += (length + 3) & ~3
    return found


def _u32(attrs: dict[int, bytes], kind: int, default: int) -> int:
    raw = attrs.get(kind)
    return U32.unpack(raw[:4])[0] if raw is not None and len(raw) >= 4 else default


def _address(raw: bytes) -> IPAddress | None:
    if len(raw) == 4:
        return IPv4Address(raw)
    if len(raw) == 16:
        return IPv6Address(raw)
    return None


@dataclass(frozen=True, slots=True)
class NextHop:
    oif: int | None
    gateway: IPAddress | None
    dead: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    """One kernel route (an IPv4 fib alias; an IPv6 route with its siblings)."""

    table: int
    network: Network
    type: int = RTN_UNICAST
    priority: int = 0
    tos: int = 0
    src_len: int = 0
    # The message's own RTA_OIF and RTA_GATEWAY; a multipath route has
    # neither: its nexthops are in `nexthops`.
    oif: int | None = None
    gateway: IPAddress | None = None
    nexthops: tuple[NextHop, ...] = ()

    @property
    def key(self) -> tuple[int, int, int]:
        """What the kernel tells routes of one prefix apart by (and orders them by)."""
        return (self.tos, self.priority, self.src_len)

    @property
    def paths(self) -> frozenset[tuple[int | None, IPAddress | None]]:
        return frozenset((nh.oif, nh.gateway) for nh in self.nexthops)

    def same(self, other: Route) -> bool:
        return self.key == other.key and self.type == other.type and self.paths == other.paths


def parse_route(payload: bytes) -> Route | None:
    """An RTM_NEWROUTE/RTM_DELROUTE payload, or None for what is not a route
    of the FIB (a cached clone, another family, a short message)."""
    if len(payload) < RTMSG.size:
        return None
    family, dst_len, src_len, tos, table, _, _, kind, flags = RTMSG.unpack_from(payload)
    if flags & RTM_F_CLONED or family not in (AF_INET, AF_INET6):
        return None
    attrs = attributes(payload, RTMSG.size)
    value = int.from_bytes(attrs.get(RTA_DST, b""), "big")
    try:
        network: Network = (
            IPv4Network((value, dst_len)) if family == AF_INET else IPv6Network((value, dst_len))
        )
    except ValueError:
        return None  # host bits set: not something the kernel sends
    oif = _u32(attrs, RTA_OIF, 0) or None
    gateway = _address(attrs[RTA_GATEWAY]) if RTA_GATEWAY in attrs else None
    if RTA_MULTIPATH in attrs:
        nexthops = tuple(_multipath(attrs[RTA_MULTIPATH]))
    else:
        nexthops = (NextHop(oif, gateway, bool(flags & RTNH_F_DEAD)),)
    return Route(
        table=_u32(attrs, RTA_TABLE, table),
        network=network,
        type=kind,
        priority=_u32(attrs, RTA_PRIORITY, 0),
        tos=tos,
        src_len=src_len,
        oif=oif,
        gateway=gateway,
        nexthops=nexthops,
    )


def _multipath(data: bytes) -> Iterator[NextHop]:
    offset = 0
    while offset + RTNEXTHOP.size <= len(data):
        length, flags, _, ifindex = RTNEXTHOP.unpack_from(data, offset)
        if length < RTNEXTHOP.size or offset + length > len(data):
            return
        attrs = attributes(data, offset + RTNEXTHOP.size, offset + length)
        gateway = _address(attrs[RTA_GATEWAY]) if RTA_GATEWAY in attrs else None
        yield NextHop(ifindex or None, gateway, bool(flags & RTNH_F_DEAD))
        offset += (length + 3) & ~3


@dataclass(frozen=True, slots=True)
class Rule:
    """A policy routing rule. `simple` when its only selector is a firewall
    mark: what `ip route get DST` is matched against (mark 0, no source, no
    interface) can then be decided here; any other selector is not modelled."""

    priority: int
    action: int
    table: int
    fwmark: int = 0
    fwmask: int = 0
    invert: bool = False
    suppress_prefixlen: int = NO_SUPPRESS
    simple: bool = True
    raw: bytes = b""  # the message: what a deletion names it by

    def matches_unmarked(self) -> bool:
        """Whether a packet with mark 0 (and nothing else to match) hits it."""
        hit = (self.fwmark & self.fwmask) == 0
        return hit != self.invert


# Rule attributes that select nothing a `route get` flow could differ by.
_INERT = {FRA_PRIORITY, FRA_TABLE, FRA_FWMARK, FRA_FWMASK, FRA_SUPPRESS_PREFIXLEN, FRA_PROTOCOL}
_ACTIONS = {FR_ACT_TO_TBL, FR_ACT_NOP, FR_ACT_BLACKHOLE, FR_ACT_UNREACHABLE, FR_ACT_PROHIBIT}


def parse_rule(payload: bytes) -> Rule | None:
    if len(payload) < RTMSG.size:
        return None
    _, dst_len, src_len, tos, table, _, _, action, flags = RTMSG.unpack_from(payload)
    attrs = attributes(payload, RTMSG.size)
    mark = _u32(attrs, FRA_FWMARK, 0)
    extra = set(attrs) - _INERT
    if _u32(attrs, FRA_SUPPRESS_IFGROUP, NO_SUPPRESS) == NO_SUPPRESS:
        extra.discard(FRA_SUPPRESS_IFGROUP)
    return Rule(
        priority=_u32(attrs, FRA_PRIORITY, 0),
        action=action,
        table=_u32(attrs, FRA_TABLE, table),
        fwmark=mark,
        # A mark without a mask matches all 32 bits (the kernel's default).
        fwmask=_u32(attrs, FRA_FWMASK, 0xFFFFFFFF if FRA_FWMARK in attrs else 0),
        invert=bool(flags & FIB_RULE_INVERT),
        suppress_prefixlen=_u32(attrs, FRA_SUPPRESS_PREFIXLEN, NO_SUPPRESS),
        simple=not (dst_len or src_len or tos or extra) and action in _ACTIONS,
        raw=payload,
    )


def parse_link(payload: bytes) -> tuple[int, bool] | None:
    """An RTM_NEWLINK/RTM_DELLINK payload: (ifindex, administratively up)."""
    if len(payload) < IFINFOMSG.size:
        return None
    _, _, index, flags, _ = IFINFOMSG.unpack_from(payload)
    return index, bool(flags & IFF_UP)


def addr_family(payload: bytes) -> int | None:
    """The address family of an RTM_NEWADDR/RTM_DELADDR payload."""
    return payload[0] if payload else None


def dump_request(kind: int, family: int, seq: int) -> bytes:
    """A request to dump routes, rules (rtmsg-shaped header) or links."""
    if kind == RTM_GETLINK:
        body = IFINFOMSG.pack(family, 0, 0, 0, 0)
    else:
        body = RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
    header = NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    return header + body
