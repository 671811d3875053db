"""The kernel routing view's table, fed synthetic route and rule messages:
no root, no netlink socket. What each answer should be is what `ip route
get` answers on Linux (tests/daemon/test_routing_netns.py checks the same
against a real kernel)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest
from pyroute2.netlink.rtnl.fibmsg import fibmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from dmvpn.daemon.routetable import ASK, RouteTable
from dmvpn.daemon.rtnl import (
    FR_ACT_TO_TBL,
    FR_ACT_UNREACHABLE,
    NLM_F_APPEND,
    NLM_F_REPLACE,
    RT_TABLE_DEFAULT,
    RT_TABLE_LOCAL,
    RT_TABLE_MAIN,
    RTM_DELROUTE,
    RTM_DELRULE,
    RTM_NEWROUTE,
    RTM_NEWRULE,
    RTN_BROADCAST,
    RTN_LOCAL,
    RTN_THROW,
    RTN_UNICAST,
    RTN_UNREACHABLE,
    NextHop,
    Route,
    Rule,
    parse,
    parse_route,
    parse_rule,
)

TUN, LAN, WAN, LO = 3, 4, 5, 1


def route(
    prefix: str,
    via: str | None = None,
    dev: int | None = TUN,
    *,
    table: int = RT_TABLE_MAIN,
    kind: int = RTN_UNICAST,
    metric: int = 0,
    tos: int = 0,
    src_len: int = 0,
    nexthops: list[tuple[int, str | None]] | None = None,
    dead: bool = False,
) -> Route:
    gateway = ip_address(via) if via else None
    if nexthops is not None:
        hops = tuple(NextHop(oif, ip_address(gw) if gw else None) for oif, gw in nexthops)
        return Route(table, ip_network(prefix), kind, metric, tos, src_len, None, None, hops)
    return Route(
        table,
        ip_network(prefix),
        kind,
        metric,
        tos,
        src_len,
        dev,
        gateway,
        (NextHop(dev, gateway, dead),),
    )


def spoke(family: int = 4) -> RouteTable:
    """A spoke's table: tunnel 10.0.0.11/24 on TUN, LAN 192.168.1.0/24, underlay on WAN."""
    t = RouteTable(family, TUN)
    for r in (
        route("10.0.0.0/24", dev=TUN),
        route("192.168.1.0/24", dev=LAN),
        route("172.30.0.0/24", dev=WAN),
        route("0.0.0.0/0", "172.30.0.1", WAN),
        route("192.168.0.0/16", "10.0.0.1", TUN),  # the summary via the hub
        route("10.0.0.11/32", dev=LO, table=RT_TABLE_LOCAL, kind=RTN_LOCAL),
        route("10.0.0.255/32", dev=TUN, table=RT_TABLE_LOCAL, kind=RTN_BROADCAST),
        route("127.0.0.0/8", dev=LO, table=RT_TABLE_LOCAL, kind=RTN_LOCAL),
    ):
        t.apply(RTM_NEWROUTE, 0, r)
    return t


def a(text: str) -> IPv4Address | IPv6Address:
    return ip_address(text)


# -- parsing ---------------------------------------------------------------------


def _encoded(msg: rtmsg | fibmsg, kind: int, flags: int = 0) -> bytes:
    msg["header"]["type"] = kind
    msg["header"]["flags"] = flags
    msg.encode()
    return bytes(msg.data)


def test_parses_a_route_as_pyroute2_encodes_it() -> None:
    msg = rtmsg()
    msg["family"], msg["dst_len"], msg["table"], msg["type"] = 2, 16, 254, RTN_UNICAST
    msg["attrs"] = [
        ("RTA_TABLE", 254),
        ("RTA_DST", "10.9.0.0"),
        ("RTA_PRIORITY", 20),
        ("RTA_GATEWAY", "10.0.0.2"),
        ("RTA_OIF", TUN),
    ]
    (m,) = parse(_encoded(msg, RTM_NEWROUTE, NLM_F_REPLACE))
    assert (m.type, m.flags) == (RTM_NEWROUTE, NLM_F_REPLACE)
    r = parse_route(m.payload)
    assert r == route("10.9.0.0/16", "10.0.0.2", TUN, metric=20)


def test_parses_multipath_and_dead_nexthops() -> None:
    msg = rtmsg()
    msg["family"], msg["dst_len"], msg["table"], msg["type"] = 10, 32, 254, RTN_UNICAST
    msg["attrs"] = [
        ("RTA_DST", "fd09::"),
        (
            "RTA_MULTIPATH",
            [
                {"oif": TUN, "flags": 1, "attrs": [("RTA_GATEWAY", "fd00::2")]},
                {"oif": LAN, "attrs": [("RTA_GATEWAY", "fd01::2")]},
            ],
        ),
    ]
    (m,) = parse(_encoded(msg, RTM_NEWROUTE))
    r = parse_route(m.payload)
    assert r is not None
    assert r.network == ip_network("fd09::/32") and r.oif is None and r.gateway is None
    assert r.nexthops == (NextHop(TUN, a("fd00::2"), dead=True), NextHop(LAN, a("fd01::2")))


def test_skips_cached_clones_and_reads_several_messages_per_datagram() -> None:
    clone, plain = rtmsg(), rtmsg()
    for msg, dst in ((clone, "10.1.2.3"), (plain, "10.1.2.4")):
        msg["family"], msg["dst_len"], msg["table"], msg["type"] = 2, 32, 254, RTN_UNICAST
        msg["attrs"] = [("RTA_DST", dst), ("RTA_OIF", TUN)]
    clone["flags"] = 0x200  # RTM_F_CLONED
    data = _encoded(clone, RTM_NEWROUTE) + _encoded(plain, RTM_DELROUTE)
    first, second = parse(data)
    assert parse_route(first.payload) is None
    assert second.type == RTM_DELROUTE
    assert parse_route(second.payload) == route("10.1.2.4/32", dev=TUN)


def test_parses_rules_and_knows_which_it_can_decide() -> None:
    charon = fibmsg()
    charon["family"], charon["action"], charon["flags"] = 2, FR_ACT_TO_TBL, 0x2  # invert
    charon["attrs"] = [("FRA_PRIORITY", 220), ("FRA_TABLE", 220), ("FRA_FWMARK", 0x42)]
    (m,) = parse(_encoded(charon, RTM_NEWRULE))
    rule = parse_rule(m.payload)
    assert rule is not None
    assert (rule.priority, rule.table, rule.fwmark, rule.fwmask, rule.invert) == (
        220,
        220,
        0x42,
        0xFFFFFFFF,
        True,
    )
    assert rule.simple and rule.matches_unmarked()
    source = fibmsg()
    source["family"], source["action"], source["src_len"] = 2, FR_ACT_TO_TBL, 8
    source["attrs"] = [("FRA_PRIORITY", 50), ("FRA_TABLE", 222), ("FRA_SRC", "10.0.0.0")]
    (m,) = parse(_encoded(source, RTM_NEWRULE))
    rule = parse_rule(m.payload)
    assert rule is not None and not rule.simple


# -- next_hop ----------------------------------------------------------------------


def test_next_hop_is_the_gateway_through_the_tunnel_or_the_destination_on_it() -> None:
    t = spoke()
    assert t.next_hop(a("192.168.2.10")) == a("10.0.0.1")  # the summary via the hub
    assert t.next_hop(a("10.0.0.12")) == a("10.0.0.12")  # on the tunnel's subnet
    assert t.next_hop(a("192.168.1.10")) is None  # the LAN
    assert t.next_hop(a("8.8.8.8")) is None  # the underlay's default route
    assert t.next_hop(a("10.0.0.11")) is None  # ourselves: out through lo
    assert t.next_hop(a("10.0.0.255")) == a("10.0.0.255")  # the tunnel's broadcast
    assert t.next_hop(a("0.1.2.3")) is None  # 0.0.0.0/8: route get refuses it
    assert t.next_hop(a("fd00::1")) is None and t.next_hop(b"\x0a\x00\x00\x01") is None


def test_a_shortcut_overrides_the_summary_and_its_removal_restores_it() -> None:
    t = spoke()
    shortcut = route("192.168.2.0/24", "10.0.0.12", TUN)
    t.apply(RTM_NEWROUTE, NLM_F_REPLACE, shortcut)
    assert t.next_hop(a("192.168.2.10")) == a("10.0.0.12")
    t.apply(RTM_DELROUTE, 0, shortcut)
    assert t.next_hop(a("192.168.2.10")) == a("10.0.0.1")


def test_the_lowest_metric_wins_and_unusable_routes_are_passed_over() -> None:
    t = spoke()
    t.apply(RTM_NEWROUTE, 0, route("192.168.5.0/24", "172.30.0.9", WAN, metric=20))
    t.apply(RTM_NEWROUTE, 0, route("192.168.5.0/24", "10.0.0.5", TUN, metric=10))
    assert t.next_hop(a("192.168.5.1")) == a("10.0.0.5")
    t.apply(RTM_DELROUTE, 0, route("192.168.5.0/24", "10.0.0.5", TUN, metric=10))
    assert t.next_hop(a("192.168.5.1")) is None  # via the underlay now
    # Routes for one TOS, or with every nexthop dead: the lookup goes on to
    # the next shorter prefix (the summary via the hub).
    t.apply(RTM_NEWROUTE, 0, route("192.168.6.0/24", "10.0.0.6", TUN, tos=0x10))
    t.apply(RTM_NEWROUTE, 0, route("192.168.7.0/24", "172.30.0.7", WAN, dead=True))
    assert t.next_hop(a("192.168.6.1")) == a("10.0.0.1")
    assert t.next_hop(a("192.168.7.1")) == a("10.0.0.1")


def test_error_routes_answer_no_route_and_throw_goes_on_to_the_default_table() -> None:
    t = spoke()
    t.apply(RTM_NEWROUTE, 0, route("192.168.8.0/24", None, None, kind=RTN_UNREACHABLE))
    assert t.next_hop(a("192.168.8.1")) is None
    t.apply(RTM_NEWROUTE, 0, route("192.168.9.0/24", None, None, kind=RTN_THROW))
    assert t.next_hop(a("192.168.9.1")) is None
    t.apply(RTM_NEWROUTE, 0, route("192.168.9.0/24", "10.0.0.9", TUN, table=RT_TABLE_DEFAULT))
    assert t.next_hop(a("192.168.9.1")) == a("10.0.0.9")
    # IPv4 without custom rules: an error route in main also ends in default.
    t.apply(RTM_NEWROUTE, 0, route("192.168.8.0/24", "10.0.0.8", TUN, table=RT_TABLE_DEFAULT))
    assert t.next_hop(a("192.168.8.1")) == a("10.0.0.8")


def test_ipv4_local_and_main_are_one_trie() -> None:
    t = spoke()
    # Longer than local's 127.0.0.0/8, so it wins (the kernel merges the tables).
    t.apply(RTM_NEWROUTE, 0, route("127.93.56.0/24", "10.0.0.140", TUN))
    assert t.next_hop(a("127.93.56.1")) == a("10.0.0.140")
    assert t.next_hop(a("127.0.0.1")) is None


def test_a_gateway_of_our_own_is_no_gateway() -> None:
    t = spoke()
    t.apply(RTM_NEWROUTE, 0, route("75.17.50.144/28", "10.0.0.11", TUN))
    assert t.next_hop(a("75.17.50.145")) == a("75.17.50.145")


def test_multicast_and_limited_broadcast_leave_without_the_gateway() -> None:
    t = RouteTable(4, TUN)
    t.apply(RTM_NEWROUTE, 0, route("0.0.0.0/0", "10.0.0.1", TUN))
    assert t.next_hop(a("224.0.0.5")) == a("224.0.0.5")
    assert t.next_hop(a("255.255.255.255")) == a("255.255.255.255")
    assert t.next_hop(a("8.8.8.8")) == a("10.0.0.1")


def test_what_the_kernel_hashes_or_ranks_is_left_to_it() -> None:
    t = spoke()
    ecmp = route("192.168.3.0/24", nexthops=[(TUN, "10.0.0.13"), (WAN, "172.30.0.13")])
    t.apply(RTM_NEWROUTE, 0, ecmp)
    assert t.next_hop(a("192.168.3.1")) is ASK
    # One nexthop dead: no choice left.
    dead = Route(
        RT_TABLE_MAIN,
        ecmp.network,
        nexthops=(NextHop(TUN, a("10.0.0.13")), NextHop(WAN, a("172.30.0.13"), dead=True)),
    )
    t.apply(RTM_NEWROUTE, NLM_F_REPLACE, dead)
    assert t.next_hop(a("192.168.3.1")) == a("10.0.0.13")
    # IPv6: two routes of one prefix and metric (router preference, reachability).
    t6 = RouteTable(6, TUN)
    t6.apply(RTM_NEWROUTE, 0, route("fd09::/32", dev=TUN, metric=1024))
    t6.apply(RTM_NEWROUTE, 0, route("fd09::/32", None, None, kind=RTN_UNREACHABLE, metric=1024))
    assert t6.next_hop(a("fd09::1")) is ASK


def test_ipv4_replace_append_and_prepend_keep_the_kernels_order() -> None:
    t = RouteTable(4, TUN)
    first, second = route("10.9.0.0/16", "10.0.0.2"), route("10.9.0.0/16", "10.0.0.3")
    t.apply(RTM_NEWROUTE, 0, first)
    t.apply(RTM_NEWROUTE, NLM_F_APPEND, second)
    assert t.next_hop(a("10.9.1.1")) == a("10.0.0.2")  # the first alias
    t.apply(RTM_NEWROUTE, 0, route("10.9.0.0/16", "10.0.0.4"))  # prepend
    assert t.next_hop(a("10.9.1.1")) == a("10.0.0.4")
    t.apply(RTM_NEWROUTE, NLM_F_REPLACE, route("10.9.0.0/16", "10.0.0.5"))  # the first
    assert t.next_hop(a("10.9.1.1")) == a("10.0.0.5") and len(t) == 3
    t.apply(RTM_DELROUTE, 0, route("10.9.0.0/16", "10.0.0.5"))
    assert t.next_hop(a("10.9.1.1")) == a("10.0.0.2")


def test_ipv6_appends_merge_into_one_route_and_siblings_leave_one_by_one() -> None:
    t = RouteTable(6, TUN)
    t.apply(RTM_NEWROUTE, 0, route("fd09::/32", "fd00::2", WAN, metric=1024))
    both = route("fd09::/32", metric=1024, nexthops=[(TUN, "fd00::3"), (WAN, "fd00::2")])
    t.apply(RTM_NEWROUTE, NLM_F_APPEND, both)  # the kernel tells of the whole route
    assert len(t) == 1 and t.next_hop(a("fd09::1")) is ASK
    t.apply(RTM_DELROUTE, 0, route("fd09::/32", "fd00::2", WAN, metric=1024))
    assert len(t) == 1 and t.next_hop(a("fd09::1")) == a("fd00::3")


def test_events_replayed_over_a_dump_that_has_them_change_nothing() -> None:
    events = [
        (RTM_NEWROUTE, 0, route("10.9.0.0/16", "10.0.0.2")),
        (RTM_NEWROUTE, NLM_F_APPEND, route("10.9.0.0/16", "10.0.0.3")),
        (RTM_NEWROUTE, 0, route("10.8.0.0/16", "10.0.0.8")),
        (RTM_DELROUTE, 0, route("10.8.0.0/16", "10.0.0.8")),
        (RTM_NEWROUTE, NLM_F_REPLACE, route("10.7.0.0/16", "10.0.0.7")),
    ]
    t = RouteTable(4, TUN)
    for kind, flags, r in events:
        t.apply(kind, flags, r)
    answers = [t.next_hop(a(d)) for d in ("10.9.1.1", "10.8.1.1", "10.7.1.1")]
    for kind, flags, r in events:
        t.apply(kind, flags, r)
    assert [t.next_hop(a(d)) for d in ("10.9.1.1", "10.8.1.1", "10.7.1.1")] == answers
    assert answers == [a("10.0.0.2"), None, a("10.0.0.7")] and len(t) == 3


# -- rules -------------------------------------------------------------------------


def rule(priority: int, table: int, raw: bytes, **kw: object) -> Rule:
    return Rule(priority, kw.pop("action", FR_ACT_TO_TBL), table, raw=raw, **kw)  # type: ignore[arg-type]


def default_rules() -> list[Rule]:
    return [
        rule(0, RT_TABLE_LOCAL, b"l"),
        rule(32766, RT_TABLE_MAIN, b"m"),
        rule(32767, RT_TABLE_DEFAULT, b"d"),
    ]


def test_a_mark_rule_like_strongswans_is_followed() -> None:
    t = spoke()
    t.set_rules(default_rules())
    t.apply(RTM_NEWROUTE, 0, route("192.168.2.0/24", "172.30.0.2", WAN, table=220))
    assert t.next_hop(a("192.168.2.1")) == a("10.0.0.1")  # table 220 has no rule yet
    charon = rule(220, 220, b"c", fwmark=0x42, fwmask=0xFFFFFFFF, invert=True)
    t.apply_rule(RTM_NEWRULE, charon)
    assert t.next_hop(a("192.168.2.1")) is None  # table 220 first: via the underlay
    assert t.next_hop(a("192.168.4.1")) == a("10.0.0.1")  # not in 220: on to main
    t.apply_rule(RTM_DELRULE, charon)
    assert t.next_hop(a("192.168.2.1")) == a("10.0.0.1")


def test_marked_only_suppressed_and_unmodelled_rules() -> None:
    t = spoke()
    t.set_rules(default_rules())
    t.apply(RTM_NEWROUTE, 0, route("0.0.0.0/0", "10.0.0.99", TUN, table=221))
    t.apply(RTM_NEWROUTE, 0, route("8.8.0.0/16", "10.0.0.88", TUN, table=221))
    # Only for packets marked 0x51: a `route get` without a mark never hits it.
    t.apply_rule(RTM_NEWRULE, rule(10, 221, b"w", fwmark=0x51, fwmask=0xFFFFFFFF))
    assert t.next_hop(a("8.8.8.8")) is None
    # wg-quick's "suppress_prefixlength 0": anything but a default route.
    t.apply_rule(RTM_NEWRULE, rule(20, 221, b"s", suppress_prefixlen=0))
    assert t.next_hop(a("8.8.8.8")) == a("10.0.0.88")
    assert t.next_hop(a("9.9.9.9")) is None  # 221's default is suppressed: main's
    t.apply_rule(RTM_NEWRULE, rule(5, 0, b"u", action=FR_ACT_UNREACHABLE))
    assert t.next_hop(a("192.168.2.1")) is None
    t.apply_rule(RTM_NEWRULE, rule(1, 222, b"x", simple=False))  # e.g. "from 10.0.0.0/8"
    assert t.next_hop(a("192.168.2.1")) is ASK


# -- local_prefix --------------------------------------------------------------------


def test_local_prefix_is_the_longest_connected_route_off_the_tunnel() -> None:
    t = spoke()
    assert t.local_prefix(a("192.168.1.10")) == ip_network("192.168.1.0/24")
    assert t.local_prefix(a("172.30.0.5")) == ip_network("172.30.0.0/24")
    assert t.local_prefix(a("10.0.0.12")) is None  # the tunnel's own subnet
    assert t.local_prefix(a("192.168.2.10")) is None  # via a gateway
    assert t.local_prefix(a("8.8.8.8")) is None  # the default route
    t.apply(RTM_NEWROUTE, 0, route("192.168.1.128/25", dev=LAN))
    assert t.local_prefix(a("192.168.1.200")) == ip_network("192.168.1.128/25")
    t.apply(RTM_DELROUTE, 0, route("192.168.1.128/25", dev=LAN))
    assert t.local_prefix(a("192.168.1.200")) == ip_network("192.168.1.0/24")
    assert t.local_prefix(a("fd00::1")) is None


def test_local_prefix_is_not_a_blackhole_aggregate() -> None:
    # bgpd's `aggregate-address 192.168.0.0/16 summary-only` on a hub: a
    # blackhole (or a route with no device, through a nexthop object). A hub
    # that took it as connected answered Resolution Requests with the
    # summary as owner (issue 12).
    t = spoke()
    t.apply(RTM_NEWROUTE, 0, route("192.168.0.0/16", dev=None, kind=6))  # RTN_BLACKHOLE
    assert t.local_prefix(a("192.168.2.10")) is None
    t.apply(RTM_NEWROUTE, 0, route("192.168.64.0/18", dev=None))
    assert t.local_prefix(a("192.168.64.1")) is None
    assert t.local_prefix(a("192.168.1.10")) == ip_network("192.168.1.0/24")


@pytest.mark.parametrize("prefix", ["fe80::/64", "ff00::/8"])
def test_local_prefix_leaves_out_what_every_interface_has(prefix: str) -> None:
    t = RouteTable(6, TUN)
    t.apply(RTM_NEWROUTE, 0, route(prefix, dev=LAN, metric=256))
    t.apply(RTM_NEWROUTE, 0, route("fd01::/64", dev=LAN, metric=256))
    assert t.local_prefix(ip_network(prefix)[1]) is None
    assert t.local_prefix(a("fd01::5")) == ip_network("fd01::/64")
