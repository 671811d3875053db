"""The engine's RoutingView backed by the kernel routing table (pyroute2),
as nhrpd asks zebra. One per engine: the IPv4 and the IPv6 engine of an
interface each see their own family's table."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import TYPE_CHECKING, Any

from dmvpn.wire import Address

if TYPE_CHECKING:
    # Only a type here: the CLI imports RTPROT_DMVPN, and pyroute2 takes a
    # quarter of a second to import.
    from pyroute2 import IPRoute

# Route protocol number (rtm_protocol) of the shortcut routes dmvpn installs,
# so routing daemons leave them alone and `ip route show proto 177` lists
# them (nhrpd's routes use zebra's 191; 177 is unassigned in rt_protos).
RTPROT_DMVPN = 177


class KernelRouting:
    def __init__(self, ipr: IPRoute, tap_index: int, family: int = 4) -> None:
        self.ipr = ipr
        self.tap_index = tap_index
        self.family = family
        self._kind: type = IPv4Address if family == 4 else IPv6Address

    def next_hop(self, destination: Address) -> Address | None:
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
        """The longest connected route (not through the tunnel) holding it."""
        if not isinstance(destination, self._kind):
            return None
        best: IPv4Network | IPv6Network | None = None
        af = socket.AF_INET if self.family == 4 else socket.AF_INET6
        routes: list[Any] = self.ipr.get_routes(family=af, table=254)
        for route in routes:
            if route.get_attr("RTA_OIF") == self.tap_index or route.get_attr("RTA_GATEWAY"):
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
