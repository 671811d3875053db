"""The seam between the daemon and a data plane.

The daemon (dmvpn.daemon.node) decides with the NHRP engines and the IPsec
gate what must happen; a data plane carries packets. What the daemon asks of
any data plane is `DataPlane`; what a data plane tells the daemon is
`DataPlaneHooks`. The userspace path (TAP + raw GRE, Python or the C pump,
dataplane/userspace.py) is the first implementation; an eBPF or kernel-GRE
one plugs in here without the daemon changing.

A data plane owns its devices: it creates them in `open()` (never in its
constructor, so one can be built and inspected without root) and removes
them in `close()`. Routes (shortcut and static) are the daemon's: it installs
them through the interface `index` the data plane reports.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from asyncio import AbstractEventLoop
from collections.abc import Collection, Mapping
from ipaddress import IPv4Address
from typing import Protocol

from dmvpn.wire import Address

from .forwarding import EngineHooks, PeerCounters
from .nbmamac import Nbma

__all__ = [
    "DataPlane",
    "DataPlaneCounters",
    "DataPlaneError",
    "DataPlaneHooks",
    "Nbma",
    "ipv4_only",
]


class DataPlaneError(Exception):
    """A data plane cannot do what was asked; the message says why."""


def ipv4_only(nbma: Nbma) -> IPv4Address:
    """For the planes that carry GRE over IPv4 only (eBPF, kernel): config
    refuses an IPv6 underlay for them, so this raising is a bug."""
    if not isinstance(nbma, IPv4Address):
        raise DataPlaneError(f"NBMA address {nbma}: this data plane does GRE over IPv4 only")
    return nbma


class DataPlaneHooks(EngineHooks, Protocol):
    """What a data plane tells the daemon: the engine's inputs (NHRP received,
    a packet to an unbound next hop, a hub hairpin, a binding in use), then
    `batch_done` once per batch, when the daemon carries out the outputs."""

    def batch_done(self) -> None: ...


class DataPlaneCounters(Protocol):
    """What `show` and metrics read of a data plane."""

    @property
    def stats(self) -> Mapping[str, int]: ...
    @property
    def peers(self) -> Mapping[Nbma, PeerCounters]: ...


class DataPlane(ABC):
    """One DMVPN interface's packets: what the daemon asks of any data plane."""

    # -- life -----------------------------------------------------------------

    @abstractmethod
    def open(self, hooks: DataPlaneHooks) -> None:
        """Create the interface and whatever carries GRE (needs root)."""

    @property
    @abstractmethod
    def index(self) -> int:
        """The interface's index: routes through the tunnel use it."""

    @abstractmethod
    def start(self, loop: AbstractEventLoop) -> None:
        """Begin moving packets (readers on `loop`, threads, programs)."""

    @abstractmethod
    def stop(self) -> None:
        """Stop moving packets; hooks are called for what was already taken."""

    @abstractmethod
    def close(self) -> None:
        """Remove the interface (its routes and neighbours go with it)."""

    # -- the daemon's decisions ----------------------------------------------

    @abstractmethod
    def bind(self, protocol: Address, nbma: Nbma) -> None:
        """Traffic for tunnel address `protocol` goes to `nbma` (and the
        kernel's neighbour table says so, where the interface has one)."""

    @abstractmethod
    def unbind(self, protocol: Address) -> None: ...

    @abstractmethod
    def flush_neighbours(self) -> None:
        """Write the neighbour entries that bindings queued, now: a route
        about to go in needs its next hop's (where the interface has a
        neighbour table)."""

    @property
    @abstractmethod
    def bindings(self) -> Mapping[Address, Nbma]:
        """Tunnel address -> NBMA address, as bound now."""

    @abstractmethod
    def send_nhrp(self, nbma: Nbma, data: bytes) -> None:
        """One NHRP packet (GRE protocol 0x2001) to a peer."""

    @abstractmethod
    def set_nhs(self, nbmas: list[Nbma]) -> None:
        """The NHSes' NBMA addresses, preferred first (unbound traffic goes there)."""

    def move_source(self, source: Nbma) -> None:
        """Our underlay address changed: send and receive GRE on `source`.
        DataPlaneError when this data plane cannot (the node must restart)."""
        raise DataPlaneError(f"{type(self).__name__} cannot change its tunnel source")

    @abstractmethod
    def set_multicast(self, nbmas: Collection[Nbma]) -> None:
        """Where link multicast and broadcast are replicated (`map multicast`):
        a live collection the daemon keeps current as peers bind and unbind
        (daemon/multicast.py), kept by reference, never copied."""

    @abstractmethod
    def set_redirect(self, on: bool) -> None:
        """A hub with redirect must see every packet it forwards back into
        the cloud (`hairpin`), whatever fast path it would take otherwise."""

    @abstractmethod
    def protect_path(self, device: str | None) -> None:
        """IPsec: GRE may leave and arrive only where the SAs apply:
        through `device` (kernel-libipsec's), or with None (the kernel's
        ESP) past XFRM block policies that keep cleartext GRE off the wire
        (DataPlaneError if it cannot)."""

    # -- what happened ---------------------------------------------------------

    @property
    @abstractmethod
    def stats(self) -> Mapping[str, int]:
        """Counters by name, for `show nhrp traffic` and metrics."""

    @property
    @abstractmethod
    def peers(self) -> Mapping[Nbma, PeerCounters]:
        """Per NBMA peer: packets and bytes each way."""
