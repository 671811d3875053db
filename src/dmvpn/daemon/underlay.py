"""Follow our underlay address when it changes under us (a DHCP renewal, a
re-dialled uplink): the tunnel source goes, another address appears on the
same device, and the interface moves to it (docs/NAT.md).

An address-event monitor (netlink, RTMGRP_IPV4_IFADDR or, for an IPv6
underlay, RTMGRP_IPV6_IFADDR) on the event loop; each burst of events
triggers one check against an address dump of the source's family. The
decision is `pick_source()`, a pure function tested without root. IPv6
addresses that cannot or should not carry the tunnel are left out of the
dump: tentative (DAD running: not bindable yet; the event when DAD ends
triggers another check), DAD-failed, deprecated and temporary (privacy)
ones.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv6Address

from pyroute2 import IPRoute

__all__ = ["UnderlayWatch", "pick_source"]

_RTMGRP_IPV4_IFADDR = 0x10
_RTMGRP_IPV6_IFADDR = 0x100
_RT_SCOPE_UNIVERSE = 0
# linux/if_addr.h: IFA_F_TEMPORARY, IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_TENTATIVE
_IFA_F_UNUSABLE = 0x01 | 0x08 | 0x20 | 0x40

Source = IPv4Address | IPv6Address


def pick_source(
    current: Source, device: int | None, addresses: Iterable[tuple[int, Source, int]]
) -> tuple[Source | None, int | None]:
    """(new source or None, the device holding the source) from the host's
    (device index, address, scope) list. The source stays while any device
    holds it; once gone, the first global address left on its device takes
    over; with none (the lease not renewed yet), nothing changes."""
    addrs = list(addresses)
    for index, addr, _ in addrs:
        if addr == current:
            return None, index
    if device is None:
        return None, None
    for index, addr, scope in addrs:
        if index == device and scope == _RT_SCOPE_UNIVERSE:
            return addr, device
    return None, device


class UnderlayWatch:
    def __init__(
        self,
        ipr: IPRoute,
        loop: asyncio.AbstractEventLoop,
        source: Source,
        on_change: Callable[[Source], None],
    ) -> None:
        self.ipr, self.loop, self.source, self.on_change = ipr, loop, source, on_change
        self.device: int | None = None
        self._sock: socket.socket | None = None

    def attach(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        sock.setblocking(False)
        v6 = isinstance(self.source, IPv6Address)
        sock.bind((0, _RTMGRP_IPV6_IFADDR if v6 else _RTMGRP_IPV4_IFADDR))
        self._sock = sock
        self.loop.add_reader(sock.fileno(), self._readable)
        self.check()

    def close(self) -> None:
        if self._sock is not None:
            self.loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _readable(self) -> None:
        assert self._sock is not None
        try:
            while self._sock.recv(65536):
                pass  # only that something changed matters: check() dumps
        except BlockingIOError:
            pass
        except OSError:
            pass  # ENOBUFS: events were lost, the dump below is complete anyway
        self.check()

    def check(self) -> None:
        rows: list[tuple[int, Source, int]] = []
        if isinstance(self.source, IPv6Address):
            for msg in self.ipr.get_addr(family=socket.AF_INET6):
                addr = msg.get_attr("IFA_ADDRESS")
                flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
                if addr and not flags & _IFA_F_UNUSABLE:
                    rows.append((int(msg["index"]), IPv6Address(addr), int(msg["scope"])))
        else:
            for msg in self.ipr.get_addr(family=socket.AF_INET):
                addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
                if addr:
                    rows.append((int(msg["index"]), IPv4Address(addr), int(msg["scope"])))
        new, self.device = pick_source(self.source, self.device, rows)
        if new is not None and new != self.source:
            self.source = new
            self.on_change(new)
