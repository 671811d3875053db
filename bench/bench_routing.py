"""The engine's routing lookups: asking the kernel (`route get` for next_hop,
a dump of the main table for local_prefix, as before the route monitor) vs
the monitor's table, with N routes in a network namespace of its own.

Also: the monitor's first dump (attach) and a resync, and parsing a route
dump with rtnl vs pyroute2. Needs root.

Usage: python bench/bench_routing.py [--routes 10,10000] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from ipaddress import IPv4Address, ip_network
from typing import Any

from dmvpn.daemon.routing import KernelRouting
from dmvpn.daemon.rtnl import RTM_GETROUTE, RTM_NEWROUTE, dump_request, parse, parse_route

SETUP = """
link set lo up
link add tun0 type veth peer name tunp
link add lan0 type veth peer name lanp
link set tun0 up
link set tunp up
link set lan0 up
link set lanp up
addr add 10.0.0.11/24 dev tun0
addr add 192.168.1.1/24 dev lan0
route add 192.168.0.0/16 via 10.0.0.1
"""


def per_call(fn: Callable[[], object], seconds: float) -> float:
    """Best of five runs, each about seconds/5 long, in µs per call."""
    best = float("inf")
    for _ in range(5):
        calls, start = 0, time.perf_counter()
        deadline = start + seconds / 5
        while True:
            fn()
            calls += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        best = min(best, (now - start) / calls * 1e6)
    return best


def routes(n: int) -> list[str]:
    """n /24 shortcut-like routes in 172.16.0.0/12, half via the tunnel,
    half via the LAN, and a few connected prefixes behind the LAN."""
    out = []
    for i in range(n):
        net = ip_network((0xAC100000 + (i << 8), 24))
        via = f"10.0.0.{20 + i % 200}" if i % 2 else f"192.168.1.{20 + i % 200}"
        out.append(f"route add {net} via {via}")
    return out


def dump_parse(seconds: float) -> dict[str, float]:
    """ms to dump and parse the IPv4 routes: rtnl's parser vs pyroute2's."""
    from pyroute2 import IPRoute

    def ours() -> None:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
            s.sendall(dump_request(RTM_GETROUTE, socket.AF_INET, 1))
            while True:
                msgs = list(parse(s.recv(1 << 20)))
                for m in msgs:
                    if m.type == RTM_NEWROUTE:
                        parse_route(m.payload)
                if any(m.type == 3 for m in msgs):  # NLMSG_DONE
                    return

    with IPRoute() as ipr:

        def theirs() -> None:
            for r in ipr.get_routes(family=socket.AF_INET):
                r.get_attr("RTA_DST"), r.get_attr("RTA_OIF"), r.get_attr("RTA_GATEWAY")

        return {
            "rtnl_ms": per_call(ours, seconds) / 1000,
            "pyroute2_ms": per_call(theirs, seconds) / 1000,
        }


def measure(n: int, seconds: float) -> dict[str, Any]:
    from pyroute2 import IPRoute

    ns = f"dmvpnbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        batch = SETUP + "\n".join(routes(n)) + "\n"
        subprocess.run(["ip", "-n", ns, "-batch", "-"], input=batch, text=True, check=True)
        from pyroute2.netns import popns, pushns

        pushns(ns)
        try:
            ipr = IPRoute()
            tun = ipr.link_lookup(ifname="tun0")[0]
            loop = asyncio.new_event_loop()
            # A destination routed via the tunnel, one via the LAN (both
            # through the longest of n prefixes), one behind this node.
            via_tun, via_lan = IPv4Address("172.16.1.10"), IPv4Address("172.16.0.10")
            behind = IPv4Address("192.168.1.10")
            kernel = KernelRouting(ipr, tun, 4)
            monitor = KernelRouting(ipr, tun, 4)
            start = time.perf_counter()
            monitor.attach(loop)
            attach_ms = (time.perf_counter() - start) * 1000
            for kr in (kernel, monitor):
                assert kr.next_hop(via_tun) == IPv4Address("10.0.0.21")
                assert kr.next_hop(via_lan) is None
                assert str(kr.local_prefix(behind)) == "192.168.1.0/24"
            # A dump as after an overrun (KernelRouting._readable's steps).
            start = time.perf_counter()
            monitor._table = None
            monitor._table = monitor._dump()
            resync_ms = (time.perf_counter() - start) * 1000
            result = {
                "routes": n,
                "kernel_next_hop_us": per_call(lambda: kernel.next_hop(via_tun), seconds),
                "kernel_local_prefix_us": per_call(lambda: kernel.local_prefix(behind), seconds),
                "monitor_next_hop_us": per_call(lambda: monitor.next_hop(via_tun), seconds),
                "monitor_local_prefix_us": per_call(lambda: monitor.local_prefix(behind), seconds),
                "attach_ms": attach_ms,
                "resync_ms": resync_ms,
                "dump_parse": dump_parse(seconds),
            }
            assert monitor.asked == 0
            monitor.close()
            ipr.close()
            loop.close()
            return result
        finally:
            popns()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--routes", default="10,10000", help="comma-separated route counts")
    ap.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (a network namespace)", file=sys.stderr)
        return 2
    runs = [measure(int(n), args.seconds) for n in args.routes.split(",")]
    print(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "python": platform.python_version(),
                "machine": platform.processor() or platform.machine(),
                "runs": runs,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
