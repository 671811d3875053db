"""KernelRouting's route monitor against a real kernel, in a network
namespace of the test's own: lookups follow route changes within
milliseconds without asking the kernel, answer what `ip route get` answers
(random tables, rules, silent flushes), and heal an overrun with a dump."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any

import pytest

from dmvpn.daemon.routing import RTPROT_DMVPN, KernelRouting

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

IPAddress = IPv4Address | IPv6Address
ERRORS = ("unreachable", "blackhole", "prohibit", "throw")
# The stand-in for the TAP (a veth: routes and lookups do not care), a LAN
# and an underlay, each with its peer up so that the kernel keeps routes.
SETUP = """
link set lo up
link add tun0 type veth peer name tunp
link add lan0 type veth peer name lanp
link add wan0 type veth peer name wanp
link set tun0 up
link set tunp up
link set lan0 up
link set lanp up
link set wan0 up
link set wanp up
addr add 10.0.0.11/24 dev tun0
addr add 192.168.1.1/24 dev lan0
addr add 172.30.0.11/24 dev wan0
addr add fd00::11/64 dev tun0 nodad
addr add fd00:1::1/64 dev lan0 nodad
addr add fd30::11/64 dev wan0 nodad
route add 192.168.0.0/16 via 10.0.0.1
route add fd00::/16 via fd00::1
route add default via 172.30.0.1
"""


@dataclass
class Node:
    name: str
    ipr: Any
    tun: int
    loop: asyncio.AbstractEventLoop

    def ip(self, *commands: str, check: bool = True, family: str | None = None) -> int:
        """Run `ip` commands in the namespace (one batch: the kernel applies
        them in one go, faster than the loop reads their events). Unchecked,
        the ones the kernel refuses (random routes that collide) are skipped
        and counted: the count is returned."""
        res = subprocess.run(
            ["ip", "-n", self.name, *([family] if family else []), "-force", "-batch", "-"],
            input="\n".join(commands) + "\n",
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0 or not check, res.stderr
        return res.stderr.count("Command failed")

    def settle(self, done: Callable[[], bool], timeout: float = 2.0) -> float:
        """Run the event loop until done(); the seconds it took."""
        start = time.perf_counter()
        while not done():
            assert time.perf_counter() - start < timeout, "the lookups did not follow"
            self.loop.run_until_complete(asyncio.sleep(0))
        return time.perf_counter() - start


@pytest.fixture
def node() -> Iterator[Node]:
    from pyroute2 import IPRoute
    from pyroute2.netns import popns, pushns

    name = f"dmvpnrt{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "-batch", "-"], input=SETUP, text=True, check=True)
        # The whole test runs inside: every socket the monitor opens, on
        # attach or on a resync, must see this namespace.
        pushns(name)
        loop = asyncio.new_event_loop()
        ipr = IPRoute()
        try:
            yield Node(name, ipr, ipr.link_lookup(ifname="tun0")[0], loop)
        finally:
            ipr.close()
            loop.close()
            popns()
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


class Counting:
    """Wraps the IPRoute methods the kernel fallback uses, to count calls."""

    def __init__(self, ipr: Any) -> None:
        self.calls = 0
        for method in ("route", "get_routes"):
            setattr(ipr, method, self._counted(getattr(ipr, method)))

    def _counted(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return fn(*args, **kwargs)

        return counted


class Snapshot:
    """An IPRoute for the never-attached views: `route get` as is, the table
    dump taken once per check (the table does not change during one)."""

    def __init__(self, ipr: Any) -> None:
        self.ipr = ipr
        self.dumps: dict[tuple[Any, ...], Any] = {}

    def route(self, *args: Any, **kwargs: Any) -> Any:
        return self.ipr.route(*args, **kwargs)

    def get_routes(self, **kwargs: Any) -> Any:
        key = tuple(sorted(kwargs.items()))
        if key not in self.dumps:
            self.dumps[key] = self.ipr.get_routes(**kwargs)
        return self.dumps[key]


def a(text: str) -> IPAddress:
    return ip_address(text)


def test_lookups_follow_route_changes_without_asking_the_kernel(node: Node) -> None:
    counting = Counting(node.ipr)
    v4, v6 = KernelRouting(node.ipr, node.tun, 4), KernelRouting(node.ipr, node.tun, 6)
    # Not attached yet: the kernel is asked, as before the monitor existed.
    assert v4.next_hop(a("192.168.2.10")) == a("10.0.0.1") and counting.calls == 1
    v4.attach(node.loop)
    v6.attach(node.loop)
    counting.calls = 0
    assert v4.next_hop(a("192.168.2.10")) == a("10.0.0.1")
    assert v4.local_prefix(a("192.168.1.10")) == ip_network("192.168.1.0/24")
    assert v6.next_hop(a("fd00:2::10")) == a("fd00::1")

    # A shortcut as the daemon installs it, then gone again.
    shortcut = f"route replace 192.168.2.0/24 via 10.0.0.12 dev tun0 proto {RTPROT_DMVPN}"
    node.ip(shortcut)
    took = [node.settle(lambda: v4.next_hop(a("192.168.2.10")) == a("10.0.0.12"))]
    node.ip("route del 192.168.2.0/24 via 10.0.0.12")
    took.append(node.settle(lambda: v4.next_hop(a("192.168.2.10")) == a("10.0.0.1")))
    node.ip("route replace fd00:2::/64 via fd00::12 dev tun0", family="-6")
    took.append(node.settle(lambda: v6.next_hop(a("fd00:2::10")) == a("fd00::12")))
    # A new LAN prefix behind this node, and the tunnel's route going away.
    node.ip("route add 192.168.1.128/25 dev lan0")
    took.append(
        node.settle(lambda: v4.local_prefix(a("192.168.1.200")) == ip_network("192.168.1.128/25"))
    )
    node.ip("route del 192.168.0.0/16 via 10.0.0.1")
    took.append(node.settle(lambda: v4.next_hop(a("192.168.2.10")) is None))

    assert counting.calls == 0 and v4.asked == 0 and v6.asked == 0
    assert max(took) < 0.05, took  # milliseconds: one turn of the loop
    v4.close()
    assert v4.next_hop(a("192.168.2.10")) is None and counting.calls == 1
    v6.close()


def test_an_overrun_is_healed_by_a_new_dump(node: Node) -> None:
    logged: list[tuple[str, str]] = []
    kr = KernelRouting(node.ipr, node.tun, 4)
    # The smallest buffer the kernel allows: a few dozen events overrun it.
    kr.attach(node.loop, log=lambda kind, message: logged.append((kind, message)), rcvbuf=1)
    prefixes = [ip_network((0x0A640000 + (i << 8), 24)) for i in range(3000)]
    node.ip(*(f"route add {p} via 10.0.0.{20 + i % 200}" for i, p in enumerate(prefixes)))
    node.settle(lambda: kr.resyncs > 0)
    assert any("overrun" in message for _, message in logged)
    for i, p in enumerate(prefixes):
        assert kr.next_hop(p[1]) == a(f"10.0.0.{20 + i % 200}")
    node.ip(*(f"route del {p}" for p in prefixes[:100]))
    node.settle(lambda: kr.next_hop(prefixes[99][1]) is None)
    assert kr.next_hop(prefixes[100][1]) == a("10.0.0.120") and kr.asked == 0
    kr.close()


def test_what_the_kernel_flushes_silently_is_flushed_here_too(node: Node) -> None:
    kr = KernelRouting(node.ipr, node.tun, 4)
    kr.attach(node.loop)
    node.ip("route add 10.50.0.0/16 via 10.0.0.50")
    node.settle(lambda: kr.next_hop(a("10.50.1.1")) == a("10.0.0.50"))
    # IPv4 deletes the routes of a link that goes down without an event.
    node.ip("link set tun0 down")
    node.settle(lambda: kr.next_hop(a("10.50.1.1")) is None)
    assert kr.resyncs >= 1
    node.ip("link set tun0 up", "route add 10.50.0.0/16 via 10.0.0.50")
    node.settle(lambda: kr.next_hop(a("10.50.1.1")) == a("10.0.0.50"))
    # ...and those of a link whose last IPv4 address goes.
    node.ip("route add 10.60.0.0/16 dev lan0")
    node.settle(lambda: kr.local_prefix(a("10.60.1.1")) == ip_network("10.60.0.0/16"))
    node.ip("addr del 192.168.1.1/24 dev lan0")
    node.settle(lambda: kr.local_prefix(a("10.60.1.1")) is None)
    kr.close()


def test_nexthops_die_and_revive_with_their_link_and_other_links_cost_nothing(
    node: Node,
) -> None:
    kr = KernelRouting(node.ipr, node.tun, 4)
    kr.attach(node.loop)
    node.ip("route add 10.70.0.0/16 nexthop via 10.0.0.70 nexthop via 172.30.0.70")
    node.loop.run_until_complete(asyncio.sleep(0.01))
    # Two live nexthops: the kernel's hash decides, so the kernel is asked.
    assert kr.next_hop(a("10.70.1.1")) in (a("10.0.0.70"), None) and kr.asked == 1
    # wan0 down: its nexthop dies (silently), the tunnel's is the only one left.
    resyncs = kr.resyncs
    node.ip("link set wan0 down")
    node.settle(lambda: kr.resyncs > resyncs)
    assert kr.next_hop(a("10.70.1.1")) == a("10.0.0.70") and kr.asked == 1
    # Back up: the kernel revives it, silently again.
    resyncs = kr.resyncs
    node.ip("link set wan0 up")
    node.settle(lambda: kr.resyncs > resyncs)
    assert kr.next_hop(a("10.70.1.1")) in (a("10.0.0.70"), None) and kr.asked == 2
    # A link no route uses comes, flaps and goes: no dump of the table.
    resyncs = kr.resyncs
    node.ip(
        "link add xtra0 type veth peer name xtrap",
        "link set xtra0 up",
        "link set xtrap up",
        "link set xtra0 down",
        "link del xtra0",
    )
    node.loop.run_until_complete(asyncio.sleep(0.05))
    assert kr.resyncs == resyncs and kr.attached
    kr.close()


# -- the same answers as `ip route get` --------------------------------------------


def _random_routes(rnd: random.Random) -> list[str]:
    devices4 = [("tun0", "10.0.0.{}"), ("lan0", "192.168.1.{}"), ("wan0", "172.30.0.{}")]
    devices6 = [("tun0", "fd00::{:x}"), ("lan0", "fd00:1::{:x}"), ("wan0", "fd30::{:x}")]
    out = []
    for family, devices, bits, lengths in (
        (4, devices4, 32, [8, 12, 16, 20, 24, 24, 28, 32]),
        (6, devices6, 128, [16, 32, 48, 56, 64, 64, 96, 128]),
    ):
        for _ in range(150):
            length = rnd.choice(lengths)
            top = (0x0A if family == 4 else 0xFD) << (bits - 8)
            value = top | rnd.getrandbits(bits - 8)
            net = ip_network((value >> (bits - length) << (bits - length), length))
            (dev, gw), (_, gw2) = rnd.sample(devices, 2)
            metric = rnd.choice(["", "metric 10", "metric 20"])
            table = rnd.choice(["", "", "", "table default", "table 220"])
            kind = rnd.random()
            via = gw.format(rnd.randrange(2, 250))
            if kind < 0.45:
                out.append(f"route add {net} via {via} {metric} {table}")
            elif kind < 0.6:
                out.append(f"route add {net} dev {dev} {metric} {table}")
            elif kind < 0.7:
                error = rnd.choice(["unreachable", "blackhole", "prohibit", "throw"])
                out.append(f"route add {error} {net} {metric} {table}")
            elif kind < 0.8:
                hops = f"nexthop via {gw.format(5)} nexthop via {gw2.format(6)}"
                out.append(f"route add {net} {metric} {hops}")
            elif kind < 0.85 and family == 4:
                out.append(f"route add {net} tos 0x10 via {gw.format(7)} {metric}")
            else:
                out.append(f"route append {net} via {via} {metric}")
    return out


def _destinations(node: Node) -> list[IPAddress]:
    """Three addresses in every route's prefix, and the odd ones."""
    out = [
        a(x)
        for x in (
            "10.0.0.1",
            "10.0.0.255",
            "10.0.0.11",
            "224.0.0.5",
            "8.8.8.8",
            "255.255.255.255",
            "0.1.2.3",
            "127.0.0.1",
            "fd00::1",
            "fd00::11",
            "ff02::1",
            "fe80::1",
            "2001:db8::1",
            "::1",
        )
    ]
    for family in ("-4", "-6"):
        res = subprocess.run(
            ["ip", "-n", node.name, "-o", family, "route", "show", "table", "all"],
            capture_output=True,
            text=True,
            check=True,
        )
        for line in res.stdout.splitlines():
            words = line.split()
            if words[0] in (*ERRORS, "local", "broadcast", "multicast", "anycast"):
                words = words[1:]
            if words[0] == "default":
                continue
            net = ip_network(words[0])
            out += [net[0], net[-1], net[min(1, net.num_addresses - 1)]]
    return out


def _mismatches(node: Node, monitored: dict[int, KernelRouting]) -> list[str]:
    snapshot = Snapshot(node.ipr)
    kernel = {f: KernelRouting(snapshot, node.tun, f) for f in (4, 6)}  # never attached
    node.loop.run_until_complete(asyncio.sleep(0.01))  # the monitor reads what is queued
    bad = []
    for d in _destinations(node):
        ours, theirs = monitored[d.version], kernel[d.version]
        if ours.next_hop(d) != theirs.next_hop(d) or ours.local_prefix(d) != theirs.local_prefix(d):
            bad.append(
                f"{d}: {ours.next_hop(d)} {ours.local_prefix(d)} "
                f"!= {theirs.next_hop(d)} {theirs.local_prefix(d)}"
            )
    return bad


def test_answers_what_route_get_answers(node: Node) -> None:
    rnd = random.Random(11)
    monitored = {f: KernelRouting(node.ipr, node.tun, f) for f in (4, 6)}
    for kr in monitored.values():
        kr.attach(node.loop)
    commands = _random_routes(rnd)
    assert node.ip(*commands, check=False) < len(commands) / 10
    assert _mismatches(node, monitored) == []
    asked = monitored[4].asked
    # The table answers most lookups; the kernel only what it hashes (ECMP).
    assert 0 < asked < len(_destinations(node)) / 8

    # Changes: some routes deleted, replaced, appended to.
    routes = subprocess.run(
        ["ip", "-n", node.name, "-o", "route", "show"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    routes = [r for r in routes if "proto kernel" not in r and not r.startswith("default")]
    changes = []
    for line in rnd.sample(routes, 40):
        words = line.split()
        net = words[1] if words[0] in ERRORS else words[0]
        metric = f"metric {words[words.index('metric') + 1]}" if "metric" in words else ""
        change = rnd.choice(["del", "replace", "append"])
        via = "" if change == "del" else f"via 10.0.0.{rnd.randrange(2, 250)}"
        changes.append(f"route {change} {net} {metric} {via}")
    assert node.ip(*changes, check=False) < len(changes) / 4
    assert _mismatches(node, monitored) == []

    # Rules: strongSwan's kind, wg-quick's kind, then one not modelled.
    node.ip("rule add not fwmark 0x42 table 220 priority 220")
    node.ip("rule add not fwmark 0x42 table 220 priority 220", family="-6")
    assert _mismatches(node, monitored) == []
    node.ip(
        "rule add table 221 suppress_prefixlength 0 priority 100",
        "route add default via 10.0.0.99 table 221",
        "route add 10.66.0.0/16 via 10.0.0.66 table 221",
    )
    assert _mismatches(node, monitored) == []
    node.ip("rule add from 10.0.0.0/8 table 222 priority 50")
    assert _mismatches(node, monitored) == []
    node.ip(
        "rule del from 10.0.0.0/8 table 222 priority 50",
        "rule del table 221 suppress_prefixlength 0 priority 100",
    )
    assert _mismatches(node, monitored) == []

    # The kernel's silent flushes: a link down, an address gone.
    node.ip("link set wan0 down")
    assert _mismatches(node, monitored) == []
    node.ip("link set wan0 up", "route add default via 172.30.0.1")
    node.ip("addr del 192.168.1.1/24 dev lan0")
    assert _mismatches(node, monitored) == []
    assert monitored[4].resyncs >= 2 and monitored[4].attached and monitored[6].attached
    for kr in monitored.values():
        kr.close()
