"""The engine's RoutingView backed by the kernel routing table, as nhrpd
asks zebra. One per engine: the IPv4 and the IPv6 engine of an interface each
see their own family's table.

Once `attach`ed to the event loop, a route monitor keeps a copy of the
family's routes and policy rules (`routetable.RouteTable`, which says how
closely it follows `ip route get`) current from rtnetlink events, so the
engine's lookups are table reads: no syscall on the event loop per
Resolution Request. What the copy cannot decide (the kernel's ECMP hash, a
rule it does not model), next_hop still asks the kernel. The copy starts
from a dump, and is dumped again when the kernel drops events (the socket
overran) or changes routes without telling (IPv4 flushes the routes of a
link that goes down, or loses its last address, silently). Until attach, and
after close, each lookup asks the kernel, as it always did.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import TYPE_CHECKING, Any

from dmvpn.wire import Address

from .routetable import ASK, RouteTable
from .rtnl import (
    AF_INET,
    NLM_F_APPEND,
    NLM_F_DUMP_INTR,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_DELRULE,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_GETRULE,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTM_NEWRULE,
    Message,
    Rule,
    addr_family,
    dump_request,
    parse,
    parse_link,
    parse_route,
    parse_rule,
)

if TYPE_CHECKING:
    # Only a type here: the CLI imports RTPROT_DMVPN, and pyroute2 takes a
    # quarter of a second to import.
    from pyroute2 import IPRoute

# Route protocol number (rtm_protocol) of the shortcut routes dmvpn installs,
# so routing daemons leave them alone and `ip route show proto 177` lists
# them (nhrpd's routes use zebra's 191; 177 is unassigned in rt_protos).
RTPROT_DMVPN = 177

# rtnetlink multicast groups (bit masks for bind).
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV4_RULE = 0x80
RTMGRP_IPV6_ROUTE = 0x400
RTMGRP_IPV6_RULE = 1 << (19 - 1)  # RTNLGRP_IPV6_RULE: no RTMGRP_ name of its own
# A hub's table can change by thousands of routes at once (a routing daemon
# converging): room for them, so that a full dump again is rare.
RCVBUF = 8 << 20
SO_RCVBUFFORCE = 33  # linux/socket.h; not in Python's socket module
# Datagrams read per wake-up before the loop runs other callbacks.
BATCH = 256
DUMP_TRIES = 5
ERRCODE = struct.Struct("=i")  # nlmsgerr.error: a negative errno

Log = Callable[[str, str], None]


class KernelRouting:
    def __init__(self, ipr: IPRoute, tap_index: int, family: int = 4) -> None:
        self.ipr = ipr
        self.tap_index = tap_index
        self.family = family
        self._kind: type = IPv4Address if family == 4 else IPv6Address
        # The route monitor, once attached: lookups read _table.
        self._table: RouteTable | None = None
        self._sock: socket.socket | None = None  # events
        self._dump_sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._log: Log | None = None
        self._links: dict[int, bool] = {}  # ifindex -> administratively up
        self._seq = 0
        self.resyncs = 0  # full dumps after the first (overruns, silent flushes)
        self.asked = 0  # next_hop lookups the table handed to `route get`

    # -- the route monitor --

    def attach(
        self, loop: asyncio.AbstractEventLoop, log: Log | None = None, rcvbuf: int = RCVBUF
    ) -> None:
        """Start the route monitor: subscribe to this family's route and rule
        events (and link and address events, for the kernel's silent
        flushes), dump them, then follow the events from loop's reader.
        log(kind, message), if given, hears of resyncs and failures."""
        if self._sock is not None:
            raise RuntimeError("the route monitor is already attached")
        if self.family == 4:
            groups = RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV4_RULE | RTMGRP_IPV4_IFADDR
        else:
            groups = RTMGRP_LINK | RTMGRP_IPV6_ROUTE | RTMGRP_IPV6_RULE
        sock = _netlink(blocking=False)
        try:
            # Dumps go on a socket of their own (on the events' socket they
            # would interleave with events), opened now so that every dump
            # reads the network namespace the monitor was attached in.
            self._dump_sock = _netlink(blocking=True)
            try:
                # FORCE: past net.core.rmem_max (root, which the daemon is).
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            # Subscribed before the dump: whatever changes during it is queued
            # here and replayed over it.
            sock.bind((0, groups))
            self._log = log
            self._table = self._dump()
            loop.add_reader(sock.fileno(), self._readable)
        except BaseException:
            sock.close()
            if self._dump_sock is not None:
                self._dump_sock.close()
            self._table = self._dump_sock = None
            raise
        self._sock, self._loop = sock, loop

    def close(self) -> None:
        """Stop the route monitor; lookups ask the kernel again."""
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        if self._dump_sock is not None:
            self._dump_sock.close()
        self._sock = self._dump_sock = self._loop = None
        self._table = None

    @property
    def attached(self) -> bool:
        return self._table is not None

    def _readable(self) -> None:
        try:
            if self._read():
                self.resyncs += 1
                self._table = None  # its memory, before the new copy takes as much
                self._table = self._dump()
        except Exception as exc:
            # Better slow than wrong: ask the kernel per lookup from now on.
            self._say("route-monitor", f"route monitor failed ({exc}); lookups ask the kernel")
            self.close()

    def _read(self) -> bool:
        """Apply what the socket holds; True when the table must be dumped again."""
        assert self._sock is not None
        stale = False
        for _ in range(BATCH):
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                # The kernel dropped events: what is queued is no base for
                # replay either, so read it away and dump again.
                self._drain()
                self._say("route-monitor", "netlink overrun: dumping the routing table again")
                return True
            stale |= self._events(data)
        return stale

    def _events(self, data: bytes) -> bool:
        """Apply the route and rule events of one datagram; True when only a
        new dump can tell what the kernel did: a link with routes went down
        or away, one with dead nexthops came up, an IPv4 address went (its
        routes, and the link's if it was the last, go silently)."""
        assert self._table is not None
        stale = False
        for msg in parse(data):
            if msg.type in (RTM_NEWROUTE, RTM_DELROUTE):
                route = parse_route(msg.payload)
                if route is not None:
                    self._table.apply(msg.type, msg.flags, route)
            elif msg.type in (RTM_NEWRULE, RTM_DELRULE):
                rule = parse_rule(msg.payload)
                if rule is not None:
                    self._table.apply_rule(msg.type, rule)
            elif msg.type in (RTM_NEWLINK, RTM_DELLINK):
                link = parse_link(msg.payload)
                if link is None:
                    continue
                index, up = link
                # A link seen for the first time was just created: no route
                # can use it yet.
                was = self._links.pop(index, None)
                if msg.type == RTM_NEWLINK:
                    self._links[index] = up
                    if was is None or was == up:
                        continue
                stale |= self._table.uses(index, dead_only=msg.type == RTM_NEWLINK and up)
            elif msg.type == RTM_DELADDR and addr_family(msg.payload) == AF_INET:
                stale = True
        return stale

    def _drain(self) -> None:
        assert self._sock is not None
        while True:
            try:
                self._sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise

    def _say(self, kind: str, message: str) -> None:
        if self._log is not None:
            self._log(kind, message)

    def _dump(self) -> RouteTable:
        """A fresh copy of this family's routes and rules, and the links'
        states. A dump the kernel marks interrupted (the table changed under
        it, so it may have skipped routes) is taken again."""
        assert self._dump_sock is not None
        af = socket.AF_INET if self.family == 4 else socket.AF_INET6
        for _ in range(DUMP_TRIES):
            table = RouteTable(self.family, self.tap_index)
            links: dict[int, bool] = {}
            rules: list[Rule] = []
            interrupted = False
            requests = ((RTM_GETLINK, socket.AF_UNSPEC), (RTM_GETRULE, af), (RTM_GETROUTE, af))
            for kind, family in requests:
                for msg in self._request(self._dump_sock, kind, family):
                    interrupted |= bool(msg.flags & NLM_F_DUMP_INTR)
                    if msg.type == RTM_NEWROUTE:
                        route = parse_route(msg.payload)
                        if route is not None:
                            table.apply(RTM_NEWROUTE, NLM_F_APPEND, route)  # kernel's order
                    elif msg.type == RTM_NEWRULE and (rule := parse_rule(msg.payload)):
                        rules.append(rule)
                    elif msg.type == RTM_NEWLINK and (link := parse_link(msg.payload)):
                        links[link[0]] = link[1]
            if not interrupted:
                break
        else:
            self._say("route-monitor", "the routing table kept changing during dumps")
        table.set_rules(rules)
        self._links = links
        return table

    def _request(self, sock: socket.socket, kind: int, family: int) -> list[Message]:
        self._seq += 1
        seq = self._seq
        sock.sendall(dump_request(kind, family, seq))
        out: list[Message] = []
        while True:
            for msg in parse(sock.recv(1 << 20)):
                if msg.seq != seq:
                    continue
                if msg.type == NLMSG_DONE:
                    return out
                if msg.type == NLMSG_ERROR:
                    code = -ERRCODE.unpack_from(msg.payload)[0]
                    raise OSError(code, f"rtnetlink dump: {os.strerror(code)}")
                out.append(msg)

    # -- lookups --

    def next_hop(self, destination: Address) -> Address | None:
        """The gateway (or destination itself, on a connected route) of the
        route the kernel takes to destination, if it leaves through the
        tunnel interface; else None."""
        if self._table is not None:
            found = self._table.next_hop(destination)
            if found is not ASK:
                return found
            self.asked += 1  # what the table cannot tell: the kernel's own answer
        return self._route_get(destination)

    def _route_get(self, destination: Address) -> Address | None:
        if not isinstance(destination, self._kind):
            return None
        try:
            (route,) = self.ipr.route("get", dst=str(destination))
        except Exception:
            return None
        if route.get_attr("RTA_OIF") != self.tap_index:
            return None
        gateway = route.get_attr("RTA_GATEWAY")
        return ip_address(gateway) if gateway else destination

    def local_prefix(self, destination: Address) -> IPv4Network | IPv6Network | None:
        """The longest connected route (no gateway, not through the tunnel,
        not link-local, multicast or default) of the main table holding it."""
        if self._table is not None:
            return self._table.local_prefix(destination)
        if not isinstance(destination, self._kind):
            return None
        best: IPv4Network | IPv6Network | None = None
        af = socket.AF_INET if self.family == 4 else socket.AF_INET6
        routes: list[Any] = self.ipr.get_routes(family=af, table=254)
        for route in routes:
            oif = route.get_attr("RTA_OIF")
            # Connected: unicast out of a device (not a blackhole aggregate).
            if oif in (None, self.tap_index) or route.get_attr("RTA_GATEWAY") or route["type"] != 1:
                continue
            dst = route.get_attr("RTA_DST")
            if not dst or route["dst_len"] == 0:
                continue
            net = ip_network(f"{dst}/{route['dst_len']}")
            if net.is_link_local or net.is_multicast:
                continue  # fe80::/64 and ff00::/8 are on every interface
            if destination in net and (best is None or net.prefixlen > best.prefixlen):
                best = net
        return best


def _netlink(blocking: bool) -> socket.socket:
    flags = socket.SOCK_RAW | socket.SOCK_CLOEXEC | (0 if blocking else socket.SOCK_NONBLOCK)
    sock = socket.socket(socket.AF_NETLINK, flags, socket.NETLINK_ROUTE)
    if blocking:
        sock.settimeout(10.0)  # the kernel answers a dump at once: never hang the loop
    return sock
