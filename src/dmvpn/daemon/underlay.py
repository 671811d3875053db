"""Follow our underlay address when it changes under us (a DHCP renewal, a
re-dialled uplink): the tunnel source goes, another address appears on the
same device, and the interface moves to it (docs/NAT.md).

An IPv4 address-event monitor (netlink, RTMGRP_IPV4_IFADDR) on the event
loop; each burst of events triggers one check against an address dump. The
decision is `pick_source()`, a pure function tested without root.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address

from pyroute2 import IPRoute

__all__ = ["UnderlayWatch", "pick_source"]

_RTMGRP_IPV4_IFADDR = 0x10
_RT_SCOPE_UNIVERSE = 0


def pick_source(
    current: IPv4Address, device: int | None, addresses: Iterable[tuple[int, IPv4Address, int]]
) -> tuple[IPv4Address | None, int | None]:
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
        source: IPv4Address,
        on_change: Callable[[IPv4Address], None],
    ) -> None:
        self.ipr, self.loop, self.source, self.on_change = ipr, loop, source, on_change
        self.device: int | None = None
        self._sock: socket.socket | None = None

    def attach(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        sock.setblocking(False)
        sock.bind((0, _RTMGRP_IPV4_IFADDR))
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
        rows = []
        for msg in self.ipr.get_addr(family=socket.AF_INET):
            addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if addr:
                rows.append((int(msg["index"]), IPv4Address(addr), int(msg["scope"])))
        new, self.device = pick_source(self.source, self.device, rows)
        if new is not None and new != self.source:
            self.source = new
            self.on_change(new)
