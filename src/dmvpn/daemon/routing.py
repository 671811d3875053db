"""The engine's RoutingView backed by the kernel routing table (pyroute2),
as nhrpd asks zebra."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network
from typing import Any

from pyroute2 import IPRoute

from dmvpn.wire import Address


class KernelRouting:
    def __init__(self, ipr: IPRoute, tap_index: int) -> None:
        self.ipr = ipr
        self.tap_index = tap_index

    def next_hop(self, destination: Address) -> Address | None:
        if not isinstance(destination, IPv4Address):
            return None
        try:
            (route,) = self.ipr.route("get", dst=str(destination))
        except Exception:
            return None
        if route.get_attr("RTA_OIF") != self.tap_index:
            return None
        gateway = route.get_attr("RTA_GATEWAY")
        return IPv4Address(gateway) if gateway else destination

    def local_prefix(self, destination: Address) -> IPv4Network | IPv6Network | None:
        """The longest connected route (not through the tunnel) holding it."""
        if not isinstance(destination, IPv4Address):
            return None
        best: IPv4Network | None = None
        routes: list[Any] = self.ipr.get_routes(family=2, table=254)
        for route in routes:
            if route.get_attr("RTA_OIF") == self.tap_index or route.get_attr("RTA_GATEWAY"):
                continue
            dst = route.get_attr("RTA_DST")
            if not dst or route["dst_len"] == 0:
                continue
            net = ip_network(f"{dst}/{route['dst_len']}")
            if (
                isinstance(net, IPv4Network)
                and destination in net
                and (best is None or net.prefixlen > best.prefixlen)
            ):
                best = net
        return best
