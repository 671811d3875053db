"""A copy of the kernel's routing table for one address family, kept from
rtnetlink messages (`dmvpn.daemon.rtnl`), and the two questions the engine
asks of it. Sans-IO: `dmvpn.daemon.routing.KernelRouting` does the socket
work and feeds it.

`next_hop` answers what `ip route get DST` (no source, mark 0, no interface)
answers, as the kernel decides it:

- with the default policy rules, IPv4 looks up its local and main tables as
  one (the kernel merges them: the longest prefix of either wins, local on a
  tie) and, when that gives no usable route, the default table; IPv6 looks
  up local, then main;
- with other rules, each rule in turn, if all of them only select on the
  firewall mark (strongSwan's and wg-quick's kind); a rule with any other
  selector (source, interface, uid, ...) is not modelled;
- in a table: the longest prefix with a usable route (no TOS, no source
  prefix, a live nexthop); among its routes the lowest metric, and among
  equals the first in the kernel's order. A throw route goes on to the next
  rule; unreachable, blackhole and prohibit mean no route.

Where the answer depends on what is not copied here, it is `ASK` and the
caller asks the kernel: the ECMP hash (a route with several live nexthops),
IPv6's choice among several routes of equal metric (router preference,
neighbour reachability, round robin), unmodelled rules. Not modelled at all:
IPv4 tables stay unmerged once custom rules have existed in the namespace,
even after they are gone (this assumes merged: it differs only where main
has a longer prefix inside a local-table route, as in 127.0.0.0/8, and for
the default table after an error route in main);
`ignore_routes_with_linkdown`; IPv6 neighbour reachability when forwarding is
off; routes that only name a nexthop object (RTA_NH_ID without the compat
attributes the kernel adds by default).

`local_prefix` applies to the main table the filter KernelRouting has always
applied to its dump: no gateway, not through the tunnel, not link-local,
multicast or default.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv6Address
from typing import Generic, Literal, TypeGuard, TypeVar

from dmvpn.wire import Address

from .rtnl import (
    FR_ACT_NOP,
    FR_ACT_TO_TBL,
    NLM_F_APPEND,
    NLM_F_REPLACE,
    NO_SUPPRESS,
    RT_TABLE_DEFAULT,
    RT_TABLE_LOCAL,
    RT_TABLE_MAIN,
    RTM_DELROUTE,
    RTM_DELRULE,
    RTM_NEWROUTE,
    RTM_NEWRULE,
    RTN_ANYCAST,
    RTN_BROADCAST,
    RTN_LOCAL,
    RTN_MULTICAST,
    RTN_THROW,
    RTN_UNICAST,
    IPAddress,
    Network,
    NextHop,
    Route,
    Rule,
)


class Ask(enum.Enum):
    KERNEL = "ask the kernel"


ASK: Literal[Ask.KERNEL] = Ask.KERNEL

# Types a lookup may end on; the others (unreachable, blackhole, prohibit,
# and nat, which the kernel refuses) make `route get` fail.
_FOUND = {RTN_UNICAST, RTN_LOCAL, RTN_BROADCAST, RTN_ANYCAST, RTN_MULTICAST}
_LIMITED_BROADCAST = IPv4Address("255.255.255.255")
# The kernel's own rules: (priority, table), every one "lookup TABLE".
_DEFAULT_RULES = {
    4: [(0, RT_TABLE_LOCAL), (32766, RT_TABLE_MAIN), (32767, RT_TABLE_DEFAULT)],
    6: [(0, RT_TABLE_LOCAL), (32766, RT_TABLE_MAIN)],
}


@dataclass(frozen=True, slots=True)
class _Best:
    """What a lookup that ends on a prefix of one table finds there."""

    route: Route
    ambiguous: bool  # several routes of the lowest metric: the kernel chooses


V = TypeVar("V")


class Lpm(Generic[V]):
    """Longest-prefix match over one family: a dict per prefix length, keyed
    by the address's leading bits as an int. (nhrp.routing.PrefixTable does
    the same with an ip_network built per length per lookup, about 5 µs
    each: most of a lookup, with the dozen lengths of a real table.)"""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self._by_len: dict[int, dict[int, tuple[Network, V]]] = {}
        self._lengths: list[int] = []  # longest first

    def add(self, network: Network, value: V) -> None:
        length = network.prefixlen
        if length not in self._by_len:
            self._by_len[length] = {}
            self._lengths = sorted(self._by_len, reverse=True)
        self._by_len[length][int(network.network_address) >> (self.bits - length)] = (
            network,
            value,
        )

    def remove(self, network: Network) -> None:
        length = network.prefixlen
        entries = self._by_len.get(length)
        if entries is None:
            return
        entries.pop(int(network.network_address) >> (self.bits - length), None)
        if not entries:
            del self._by_len[length]
            self._lengths = sorted(self._by_len, reverse=True)

    def lookup(self, address: IPAddress) -> tuple[Network, V] | None:
        value = int(address)
        for length in self._lengths:
            found = self._by_len[length].get(value >> (self.bits - length))
            if found is not None:
                return found
        return None


def _usable(route: Route) -> bool:
    if route.tos or route.src_len:
        return False  # only for packets with that TOS, or from that source
    return route.type != RTN_UNICAST or any(not nh.dead for nh in route.nexthops)


class RouteTable:
    """One family's routes and rules, as the kernel holds them."""

    def __init__(self, family: int, tap_index: int) -> None:
        self.family = family
        self.tap_index = tap_index
        # Every route, by (table, prefix), in the kernel's order.
        self._routes: dict[tuple[int, Network], list[Route]] = {}
        # Derived, per table and prefix: where a lookup ends...
        self._bits = 32 if family == 4 else 128
        self._best: dict[int, Lpm[_Best]] = {}
        # ...and, in main, whether local_prefix counts the prefix as connected.
        self._connected: Lpm[bool] = Lpm(self._bits)
        # None: the kernel's default rules (all a table fed only routes knows).
        self._rules: list[Rule] | None = None
        self._default = True  # the rules are the kernel's default ones

    def __len__(self) -> int:
        return sum(len(routes) for routes in self._routes.values())

    def uses(self, ifindex: int, dead_only: bool = False) -> bool:
        """Whether a route has a nexthop (a dead one) through the link: what
        the kernel may change without an event when the link goes down, is
        deleted, or comes back up (it revives dead nexthops silently)."""
        return any(
            nh.oif == ifindex and (nh.dead or not dead_only)
            for routes in self._routes.values()
            for r in routes
            for nh in r.nexthops
        )

    # -- changes --

    def apply(self, kind: int, flags: int, route: Route) -> None:
        """An RTM_NEWROUTE or RTM_DELROUTE. A message the table already
        reflects changes nothing, so events that raced a dump can be replayed
        over it."""
        if route.network.version != self.family:
            return
        where = (route.table, route.network)
        routes = self._routes.setdefault(where, [])
        if kind == RTM_NEWROUTE:
            self._add(routes, flags, route)
        elif kind == RTM_DELROUTE:
            self._delete(routes, route)
        if not routes:
            del self._routes[where]
        self._derive(where, routes)

    def _add(self, routes: list[Route], flags: int, route: Route) -> None:
        same_key = [i for i, r in enumerate(routes) if r.key == route.key]
        if any(routes[i] == route for i in same_key):
            return  # already there (a replay)
        if flags & NLM_F_REPLACE and same_key:
            routes[same_key[0]] = route  # both families replace the first match
            return
        if self.family == 6:
            # IPv6 merges nexthops of one prefix and metric into a multipath
            # route (append; on recent kernels prepend too) and then tells of
            # the whole route.
            for i in same_key:
                if routes[i].paths <= route.paths:
                    routes[i] = route
                    return
                if routes[i].paths & route.paths:
                    return  # an older state of a route that has grown (a replay)
        if not same_key or flags & NLM_F_APPEND:
            routes.insert(same_key[-1] + 1 if same_key else len(routes), route)
        else:
            routes.insert(same_key[0], route)  # IPv4 create without append: in front

    def _delete(self, routes: list[Route], route: Route) -> None:
        for i, r in enumerate(routes):
            if r.same(route):
                del routes[i]
                return
        if self.family != 6:
            return  # already gone (a replay)
        # One nexthop of an IPv6 multipath route went: the rest stays.
        for i, r in enumerate(routes):
            if r.key == route.key and route.paths < r.paths:
                left = tuple(nh for nh in r.nexthops if (nh.oif, nh.gateway) not in route.paths)
                single = left[0] if len(left) == 1 else NextHop(None, None)
                routes[i] = replace(r, nexthops=left, oif=single.oif, gateway=single.gateway)
                return

    def _derive(self, where: tuple[int, Network], routes: list[Route]) -> None:
        table, network = where
        usable = [r for r in routes if _usable(r)]
        best = self._best.get(table)
        if best is None:
            best = self._best[table] = Lpm(self._bits)
        if usable:
            lowest = min(r.priority for r in usable)
            first = next(r for r in usable if r.priority == lowest)
            ties = sum(r.priority == lowest for r in usable)
            best.add(network, _Best(first, ambiguous=self.family == 6 and ties > 1))
        else:
            best.remove(network)
        if table == RT_TABLE_MAIN:
            if any(_counts_as_connected(r, self.tap_index) for r in routes):
                self._connected.add(network, True)
            else:
                self._connected.remove(network)

    def set_rules(self, rules: list[Rule]) -> None:
        """The rules of a dump, in the kernel's order."""
        self._rules = list(rules)
        self._default = self._is_default(self._rules)

    def apply_rule(self, kind: int, rule: Rule) -> None:
        """An RTM_NEWRULE or RTM_DELRULE (replays change nothing)."""
        rules = self._rules if self._rules is not None else self._default_rules()
        present = [i for i, r in enumerate(rules) if r.raw == rule.raw]
        if kind == RTM_NEWRULE and not present:
            # After the rules of its priority, as the kernel inserts it.
            at = next((i for i, r in enumerate(rules) if r.priority > rule.priority), len(rules))
            rules.insert(at, rule)
        elif kind == RTM_DELRULE and present:
            del rules[present[0]]
        self.set_rules(rules)

    def _default_rules(self) -> list[Rule]:
        return [Rule(p, FR_ACT_TO_TBL, t) for p, t in _DEFAULT_RULES[self.family]]

    def _is_default(self, rules: list[Rule]) -> bool:
        plain = all(
            r.simple
            and r.action == FR_ACT_TO_TBL
            and not r.fwmask
            and not r.invert
            and r.suppress_prefixlen == NO_SUPPRESS
            for r in rules
        )
        return plain and [(r.priority, r.table) for r in rules] == _DEFAULT_RULES[self.family]

    # -- lookups --

    def _ours(self, destination: Address) -> TypeGuard[IPAddress]:
        return isinstance(destination, IPv4Address | IPv6Address) and (
            destination.version == self.family
        )

    def _lookup(self, table: int, destination: IPAddress) -> _Best | None:
        best = self._best.get(table)
        found = best.lookup(destination) if best is not None else None
        return found[1] if found is not None else None

    def route_for(self, destination: IPAddress) -> _Best | Ask | None:
        """Where `ip route get` ends: None when it finds no route or an error
        route, ASK when that depends on what is not modelled."""
        if not self._default:
            return self._by_rules(destination)
        if self.family == 6:
            for table in (RT_TABLE_LOCAL, RT_TABLE_MAIN):
                found = self._lookup(table, destination)
                if found is None:
                    continue
                if found.ambiguous:
                    return ASK
                if found.route.type != RTN_THROW:
                    return found if found.route.type in _FOUND else None
            return None
        # IPv4 (never ambiguous: its aliases have a kernel order).
        local = self._lookup(RT_TABLE_LOCAL, destination)
        main = self._lookup(RT_TABLE_MAIN, destination)
        if local is not None and (
            main is None or local.route.network.prefixlen >= main.route.network.prefixlen
        ):
            main = local  # one trie: the longer prefix, local first on a tie
        if main is not None and main.route.type in _FOUND:
            return main
        # Nothing, a throw or an error route: the kernel tries the default table.
        found = self._lookup(RT_TABLE_DEFAULT, destination)
        return found if found is not None and found.route.type in _FOUND else None

    def _by_rules(self, destination: IPAddress) -> _Best | Ask | None:
        assert self._rules is not None
        if not all(r.simple for r in self._rules):
            return ASK
        for rule in self._rules:
            if not rule.matches_unmarked() or rule.action == FR_ACT_NOP:
                continue
            if rule.action != FR_ACT_TO_TBL:
                return None  # blackhole, unreachable, prohibit
            found = self._lookup(rule.table, destination)
            if found is None:
                continue
            if found.ambiguous:
                return ASK
            if found.route.type == RTN_THROW:
                continue
            if found.route.type not in _FOUND:
                return None
            suppress = rule.suppress_prefixlen
            if suppress != NO_SUPPRESS and found.route.network.prefixlen <= suppress:
                continue  # `suppress_prefixlength`: too short a match for this rule
            return found
        return None

    def next_hop(self, destination: Address) -> Address | Ask | None:
        """What KernelRouting.next_hop answers: the gateway (destination
        itself on a connected route) if the route leaves through the tunnel."""
        if not self._ours(destination):
            return None
        v4 = isinstance(destination, IPv4Address)
        if v4 and int(destination) >> 24 == 0:
            return None  # 0.0.0.0/8: `route get` refuses it
        found = self.route_for(destination)
        if found is None or found is ASK:
            return found
        route = found.route
        if route.type == RTN_LOCAL:
            return None  # out through lo
        if route.type == RTN_UNICAST:
            live = [nh for nh in route.nexthops if not nh.dead]
            if len(live) > 1:
                if all(nh.oif != self.tap_index for nh in live):
                    return None  # whichever the hash picks, not the tunnel
                return ASK  # the kernel's choice: the ECMP hash
            nexthop = live[0]
        else:
            nexthop = NextHop(route.nexthops[0].oif, None)  # broadcast, multicast, anycast
        if nexthop.oif != self.tap_index:
            return None
        gateway = nexthop.gateway
        if v4 and gateway is not None:
            on_me = self._lookup(RT_TABLE_LOCAL, gateway)
            if on_me is not None and on_me.route.type == RTN_LOCAL:
                gateway = None  # a gateway of our own is no gateway (host scope)
            if destination == _LIMITED_BROADCAST or (
                destination.is_multicast and route.network.prefixlen < 4
            ):
                gateway = None  # sent on the link through the route's device
        return gateway if gateway is not None else destination

    def local_prefix(self, destination: Address) -> Network | None:
        """The longest connected prefix of main, not through the tunnel, holding it."""
        if not self._ours(destination):
            return None
        found = self._connected.lookup(destination)
        return found[0] if found is not None else None


def _counts_as_connected(route: Route, tap_index: int) -> bool:
    # The filter KernelRouting has always applied to `ip route show table main`.
    # A connected route is a unicast route out of a device: not a blackhole
    # (a routing daemon's aggregate, e.g. BGP's aggregate-address
    # summary-only, which the hub must not answer Resolution Requests for
    # as if it owned the summary: issue 12, seen with bgpd in the lab).
    net = route.network
    return (
        route.type == RTN_UNICAST
        and route.oif is not None
        and route.oif != tap_index
        and route.gateway is None
        and net.prefixlen != 0
        and not net.is_link_local
        and not net.is_multicast  # fe80::/64 and ff00::/8 are on every interface
    )
