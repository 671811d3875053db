"""The narrow view of the node's routing the engine needs.

The daemon backs it with the kernel's routing table
(`dmvpn.daemon.routing.KernelRouting`): a copy of the routes and rules that a
route monitor keeps current from rtnetlink events once attached to the event
loop, so that a lookup is a table read (until then, each lookup asks the
kernel). The simulator backs it with its own tables (`StaticRouting`); nhrpd
asks zebra the same questions.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Protocol

from dmvpn.wire import Address

Network = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address


class RoutingView(Protocol):
    def next_hop(self, destination: Address) -> Address | None:
        """The tunnel next hop routing gives for ``destination``, or None when
        the route does not leave through this DMVPN interface."""

    def local_prefix(self, destination: Address) -> Network | None:
        """The prefix behind this node (not via the tunnel) that holds
        ``destination``: what a phase 3 responder answers with."""


class PrefixTable:
    """Longest-prefix match with one dict per prefix length: O(distinct
    lengths) per lookup, so a hub with 100,000 routes stays fast."""

    def __init__(self) -> None:
        self._by_len: dict[tuple[int, int], dict[Network, object]] = {}
        self._lengths: list[tuple[int, int]] = []

    def add(self, prefix: str | Network, value: object) -> None:
        net = ip_network(prefix)
        key = (net.version, net.prefixlen)
        if key not in self._by_len:
            self._by_len[key] = {}
            self._lengths = sorted(self._by_len, key=lambda k: -k[1])
        self._by_len[key][net] = value

    def remove(self, prefix: str | Network) -> None:
        net = ip_network(prefix)
        self._by_len.get((net.version, net.prefixlen), {}).pop(net, None)

    def lookup(self, addr: IPAddress) -> tuple[Network, object] | None:
        version = addr.version
        for key in self._lengths:
            if key[0] != version:
                continue
            net = ip_network((addr, key[1]), strict=False)
            table = self._by_len[key]
            if net in table:
                return net, table[net]
        return None


class StaticRouting:
    """A routing table kept by hand: used by the simulator and the tests."""

    def __init__(self) -> None:
        self.routes = PrefixTable()
        self.local = PrefixTable()

    def add_route(self, prefix: str | Network, next_hop: Address) -> None:
        self.routes.add(prefix, next_hop)

    def add_local(self, prefix: str | Network) -> None:
        self.local.add(prefix, True)

    def next_hop(self, destination: Address) -> Address | None:
        if not isinstance(destination, IPv4Address | IPv6Address):
            return None
        if self.local.lookup(destination) is not None:
            return None
        found = self.routes.lookup(destination)
        return found[1] if found is not None else None  # type: ignore[return-value]

    def local_prefix(self, destination: Address) -> Network | None:
        if not isinstance(destination, IPv4Address | IPv6Address):
            return None
        found = self.local.lookup(destination)
        return found[0] if found is not None else None
