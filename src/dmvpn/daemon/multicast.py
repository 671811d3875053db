"""The `map multicast` set of an interface, kept current binding by binding.

`map_multicast` names NHSes (`nhs`), static NBMA addresses, and `dynamic`:
every peer with a dynamic binding (what a hub needs for routing protocols'
hellos, Cisco's `ip nhrp map multicast dynamic`). A hub with 50,000 spokes
must not rebuild that list on each registration (issue 20: re-sorting every
peer took 87 ms per binding at 50k), so the set is a live collection: a
binding added or removed is O(1), and the data plane, which keeps a reference
to it, iterates it when it replicates a packet (that is O(peers) by nature).

Dynamic peers are counted by binding: a peer's NBMA address leaves the set
when its last dynamic binding goes (a dual-stack spoke registers an IPv4 and
an IPv6 address from one NBMA address). Order: the configured items in
order; dynamic peers in the order they registered; no address twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

from dmvpn.wire import Address

__all__ = ["MulticastTargets"]

Item = Literal["dynamic"] | tuple[IPv4Address | IPv6Address, ...]


class MulticastTargets:
    def __init__(self, items: Sequence[Item] = ()) -> None:
        self._items: list[Item] = []
        self._fixed: set[IPv4Address | IPv6Address] = set()
        self.dynamic_on = False
        # NBMA -> dynamic bindings to it; protocol -> NBMA of its dynamic binding.
        self._dynamic: dict[IPv4Address | IPv6Address, int] = {}
        self._bound: dict[Address, IPv4Address | IPv6Address] = {}
        self._overlap = 0  # dynamic peers that are configured too (counted once)
        self.configure(items)

    def configure(self, items: Sequence[Item]) -> None:
        """The configured items resolved (`dynamic`, or NBMA addresses: the
        NHSes by priority, a static address); the dynamic peers stay."""
        self._items = list(items)
        self._fixed = {a for item in self._items if item != "dynamic" for a in item}
        self.dynamic_on = "dynamic" in self._items
        self._overlap = sum(1 for a in self._fixed if a in self._dynamic)

    # ------------------------------------------------------------ bindings

    def bind(self, protocol: Address, nbma: IPv4Address | IPv6Address) -> None:
        """A dynamic binding is in use: its peer gets replicated copies."""
        old = self._bound.get(protocol)
        if old == nbma:
            return
        if old is not None:
            self._release(old)
        self._bound[protocol] = nbma
        n = self._dynamic.get(nbma, 0)
        self._dynamic[nbma] = n + 1
        if n == 0 and nbma in self._fixed:
            self._overlap += 1

    def unbind(self, protocol: Address) -> None:
        """A binding went (any type: only dynamic ones were counted)."""
        nbma = self._bound.pop(protocol, None)
        if nbma is not None:
            self._release(nbma)

    def _release(self, nbma: IPv4Address | IPv6Address) -> None:
        n = self._dynamic.get(nbma, 0)
        if n > 1:
            self._dynamic[nbma] = n - 1
            return
        if self._dynamic.pop(nbma, None) is not None and nbma in self._fixed:
            self._overlap -= 1

    @property
    def dynamic_peers(self) -> int:
        """Peers with a dynamic binding (whether or not `dynamic` is configured)."""
        return len(self._dynamic)

    # ------------------------------------------------------------ the collection

    def __iter__(self) -> Iterator[IPv4Address | IPv6Address]:
        seen: set[IPv4Address | IPv6Address] = set()  # the configured few only
        for item in self._items:
            if item == "dynamic":
                fixed = self._fixed
                for nbma in self._dynamic:
                    if nbma not in fixed:  # a configured address comes where configured
                        yield nbma
                continue
            for nbma in item:
                if nbma not in seen:
                    seen.add(nbma)
                    yield nbma

    def __len__(self) -> int:
        if not self.dynamic_on:
            return len(self._fixed)
        return len(self._fixed) + len(self._dynamic) - self._overlap

    def __contains__(self, nbma: object) -> bool:
        return nbma in self._fixed or (self.dynamic_on and nbma in self._dynamic)

    def __repr__(self) -> str:
        return f"MulticastTargets({list(self)!r})"
