"""The IPsec gate: what may reach a peer, and use it, before its SA is up.

Proxy instantiation (docs/IPSEC.md): with IPsec on, nothing is sent to a
peer, no binding to it is used for data and no shortcut through it is
installed before its SA is up; traffic keeps going via the hub meanwhile.
NHRP arriving from a peer whose SA the daemon has not read yet waits too
(identity binding: the engine must know who sent it). This is the state
machine that decides, sans I/O: engine outputs and SA events in, actions
out. The daemon carries the actions out (docs/ARCHITECTURE.md).

Without IPsec (`protected=False`) every peer counts as up and everything
passes straight through, so the daemon has one path either way. Only IPv4
NBMA addresses are gated: the underlay, and so every SA, is IPv4.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TypeAlias

from dmvpn.nhrp import BindingAdded, BindingRemoved, ShortcutAdded, ShortcutRemoved
from dmvpn.wire import Address, PacketType, address_text, decode_nhrp
from dmvpn.wire.errors import DecodeError

__all__ = [
    "HELD_PER_PEER",
    "RESEND_AFTER",
    "Action",
    "Bind",
    "Defer",
    "Deliver",
    "IpsecGate",
    "Route",
    "Touch",
    "Transmit",
    "Unbind",
    "Unroute",
]

# NHRP packets held per peer while its SA comes up (oldest dropped beyond).
HELD_PER_PEER = 16
# Held packets go again these long after the SA came up (a request only if
# the peer has not answered it): the first may have left before the peer's
# charon installed its inbound SA (issue 18), which takes a few ms, more on
# a loaded machine; NHRP's own retry is 1 s away. They also go again at
# once when the first NHRP comes from the peer meanwhile: it has its SA.
RESEND_AFTER = (0.005, 0.01, 0.03)

_ANSWERS = {
    PacketType.RESOLUTION_REPLY: PacketType.RESOLUTION_REQUEST,
    PacketType.REGISTRATION_REPLY: PacketType.REGISTRATION_REQUEST,
    PacketType.PURGE_REPLY: PacketType.PURGE_REQUEST,
}

Prefix: TypeAlias = IPv4Network | IPv6Network
Key: TypeAlias = tuple[PacketType, int]  # a request's type and request id


@dataclass(frozen=True, slots=True)
class Transmit:
    """Send this NHRP packet to the peer now."""

    nbma: IPv4Address | IPv6Address
    data: bytes


@dataclass(frozen=True, slots=True)
class Deliver:
    """Hand this NHRP packet, received at `now`, to the engine now."""

    data: bytes
    src_nbma: Address
    now: float


@dataclass(frozen=True, slots=True)
class Touch:
    """Something waits for the peer's SA: ask for it (or keep it from idling)."""

    nbma: IPv4Address


@dataclass(frozen=True, slots=True)
class Bind:
    """Use this binding for data (data plane and neighbour table)."""

    binding: BindingAdded


@dataclass(frozen=True, slots=True)
class Unbind:
    """Stop using this binding for data."""

    binding: BindingRemoved


@dataclass(frozen=True, slots=True)
class Route:
    """Install this shortcut route; `announce`: report it (`shortcut`) once
    installed, because the engine's own event was reported as deferred."""

    shortcut: ShortcutAdded
    announce: bool = False


@dataclass(frozen=True, slots=True)
class Defer:
    """This shortcut route waits for the peer's SA (`shortcut-deferred`, why)."""

    shortcut: ShortcutAdded
    why: str


@dataclass(frozen=True, slots=True)
class Unroute:
    """Remove this shortcut route."""

    shortcut: ShortcutRemoved


Action: TypeAlias = Transmit | Deliver | Touch | Bind | Unbind | Route | Defer | Unroute


class IpsecGate:
    """One per interface. Inputs are methods; each returns the actions to take."""

    def __init__(
        self,
        protected: bool,
        hold_inbound: bool = False,
        held_per_peer: int = HELD_PER_PEER,
        resend_after: tuple[float, ...] = RESEND_AFTER,
    ) -> None:
        self.protected = protected
        # Under identity binding only: without it, NHRP from a peer is read
        # whether or not the daemon has seen its SA yet.
        self.hold_inbound = protected and hold_inbound
        self.held_per_peer = held_per_peer
        self.resend_after = resend_after
        # Sent when the SA came up, to go once more at the time: each packet
        # with the (type, request id) of the request it is (None: no answer
        # to wait for), so that an answer takes it off.
        self.resend: dict[IPv4Address, tuple[list[float], list[tuple[bytes, Key | None]]]] = {}
        # Peers in `resend` whose NHRP has not arrived yet: the first that
        # does sends what is still unanswered at once.
        self.unheard: set[IPv4Address] = set()
        self.up: set[IPv4Address] = set()  # peers whose SA is up
        self.held: dict[IPv4Address, deque[bytes]] = {}  # NHRP waiting to go out
        self.inbound: dict[IPv4Address, deque[tuple[bytes, float]]] = {}  # waiting to go in
        # Waiting for the SA, and in use (so that an SA going down can take
        # them back): keyed like the data plane, protocol address or prefix.
        self.pending_binds: dict[Address, BindingAdded] = {}
        self.pending_shortcuts: dict[Prefix, ShortcutAdded] = {}
        self.applied_binds: dict[Address, BindingAdded] = {}
        self.applied_shortcuts: dict[Prefix, ShortcutAdded] = {}
        # For `show ipsec` and metrics (names unchanged since they were the daemon's).
        self.stats: dict[str, int] = {"held": 0, "held_dropped": 0, "deferred": 0, "resent": 0}

    @property
    def passthrough(self) -> bool:
        """Nothing is protected, held or waiting to be resent: `receive` is
        [Deliver] and `send` [Transmit] for every peer, so the host may take
        its per-packet path without the action lists (a hub's refreshes)."""
        return not self.protected and not self.resend

    def is_up(self, nbma: Address) -> bool:
        # Only IPv4 NBMA addresses are protected (config refuses IPsec over
        # an IPv6 underlay).
        return not self.protected or not isinstance(nbma, IPv4Address) or nbma in self.up

    # -- engine outputs ------------------------------------------------------

    def send(self, nbma: IPv4Address | IPv6Address, data: bytes) -> list[Action]:
        if self.is_up(nbma):
            return [Transmit(nbma, data)]
        assert isinstance(nbma, IPv4Address)  # is_up: never held otherwise
        queue = self.held.setdefault(nbma, deque(maxlen=self.held_per_peer))
        if len(queue) == self.held_per_peer:
            self.stats["held_dropped"] += 1
        queue.append(data)
        self.stats["held"] += 1
        return [Touch(nbma)]

    def bind(self, out: BindingAdded) -> list[Action]:
        if not self.is_up(out.nbma):
            self.pending_binds[out.protocol] = out
            self.stats["deferred"] += 1
            return []
        if self.protected:
            self.applied_binds[out.protocol] = out
        return [Bind(out)]

    def unbind(self, out: BindingRemoved) -> list[Action]:
        if self.pending_binds.pop(out.protocol, None) is not None:
            return []  # never used for data
        self.applied_binds.pop(out.protocol, None)
        return [Unbind(out)]

    def shortcut(self, out: ShortcutAdded, announce: bool = False) -> list[Action]:
        if not self.is_up(out.nbma):
            self.pending_shortcuts[out.prefix] = out
            self.stats["deferred"] += 1
            return [Defer(out, f"waiting for the IPsec SA to {address_text(out.nbma)}")]
        if self.protected:
            self.applied_shortcuts[out.prefix] = out
        return [Route(out, announce)]

    def holds(self, prefix: Prefix) -> bool:
        """The shortcut route for `prefix` waits for its SA (the engine's
        `shortcut` event for it would say too much)."""
        return prefix in self.pending_shortcuts

    def unshortcut(self, out: ShortcutRemoved) -> list[Action]:
        if self.pending_shortcuts.pop(out.prefix, None) is not None:
            return []
        self.applied_shortcuts.pop(out.prefix, None)
        return [Unroute(out)]

    # -- the data plane ------------------------------------------------------

    def receive(self, data: bytes, src_nbma: Address, now: float) -> list[Action]:
        """NHRP from a peer. Under identity binding it came through the SA, so
        the SA exists and the daemon just has not read it: it waits, briefly,
        rather than being refused for want of an identity."""
        if not self.hold_inbound or self.is_up(src_nbma):
            actions: list[Action] = []
            if isinstance(src_nbma, IPv4Address) and src_nbma in self.resend:
                self._answered(src_nbma, data)
                actions = self._heard(src_nbma)
            actions.append(Deliver(data, src_nbma, now))
            return actions
        assert isinstance(src_nbma, IPv4Address)
        queue = self.inbound.setdefault(src_nbma, deque(maxlen=self.held_per_peer))
        queue.append((data, now))
        return [Touch(src_nbma)]

    # -- SA events -----------------------------------------------------------

    def sa_up(self, nbma: IPv4Address, now: float) -> list[Action]:
        """The SA is up: what waited goes, in the order it was produced (and
        again `resend_after` later, unless the peer answers first)."""
        self.up.add(nbma)
        inbound = self.inbound.pop(nbma, ())
        actions: list[Action] = [Deliver(d, nbma, t) for d, t in inbound]
        held = list(self.held.pop(nbma, ()))
        actions += [Transmit(nbma, d) for d in held]
        if held and self.resend_after:
            times = [now + after for after in self.resend_after]
            self.resend[nbma] = (times, [(d, _request(d)) for d in held])
            if not inbound:  # else the peer was heard over the SA already
                self.unheard.add(nbma)
        for key, out in list(self.pending_binds.items()):
            if out.nbma == nbma:
                del self.pending_binds[key]
                actions += self.bind(out)
        for prefix, sc in list(self.pending_shortcuts.items()):
            if sc.nbma == nbma:
                del self.pending_shortcuts[prefix]
                actions += self.shortcut(sc, announce=True)
        return actions

    def deadline(self) -> float | None:
        """When `on_timer` has something to do."""
        return min((times[0] for times, _ in self.resend.values()), default=None)

    def on_timer(self, now: float) -> list[Action]:
        """What was sent when an SA came up goes once more, if still unanswered."""
        actions: list[Action] = []
        for nbma, (times, sent) in list(self.resend.items()):
            if times[0] <= now:
                while times and times[0] <= now:
                    times.pop(0)
                if not times:
                    del self.resend[nbma]
                    self.unheard.discard(nbma)
                self.stats["resent"] += len(sent)
                actions += [Transmit(nbma, d) for d, _ in sent]
        return actions

    def _heard(self, nbma: IPv4Address) -> list[Action]:
        """The peer's first NHRP since its SA came up: it has the SA (it sent
        over it), so what is still unanswered goes again now rather than at
        the next resend time (once; the times stay, in case it came over
        another SA)."""
        if nbma not in self.unheard:
            return []
        self.unheard.discard(nbma)
        entry = self.resend.get(nbma)
        if entry is None:
            return []
        self.stats["resent"] += len(entry[1])
        return [Transmit(nbma, d) for d, _ in entry[1]]

    def _answered(self, nbma: IPv4Address, data: bytes) -> None:
        """A request the peer answered arrived: it need not go again. (Other
        NHRP from the peer says nothing of ours: it may come over the SA the
        peer initiated while ours went over one it had not installed yet.)"""
        try:
            pkt = decode_nhrp(data, verify_checksum=False)
        except DecodeError:
            return
        asked = _ANSWERS.get(pkt.type)
        if asked is None:
            return
        times, sent = self.resend[nbma]
        left = [(d, key) for d, key in sent if key != (asked, pkt.request_id)]
        if left:
            self.resend[nbma] = (times, left)
        else:
            del self.resend[nbma]
            self.unheard.discard(nbma)

    def sa_down(self, nbma: IPv4Address) -> list[Action]:
        """The SA went: its bindings and shortcuts wait again (data via the hub)."""
        self.up.discard(nbma)
        self.resend.pop(nbma, None)
        self.unheard.discard(nbma)
        actions: list[Action] = []
        for prefix, sc in list(self.applied_shortcuts.items()):
            if sc.nbma == nbma:
                del self.applied_shortcuts[prefix]
                actions.append(Unroute(ShortcutRemoved(sc.prefix, sc.next_hop)))
                actions.append(Defer(sc, f"the IPsec SA to {nbma} went down"))
                self.pending_shortcuts[prefix] = sc
        for key, out in list(self.applied_binds.items()):
            if out.nbma == nbma:
                del self.applied_binds[key]
                actions.append(Unbind(BindingRemoved(out.protocol, out.nbma)))
                self.pending_binds[key] = out
        return actions


def _request(data: bytes) -> Key | None:
    """The request this packet is (an answer would take it off the resend)."""
    try:
        pkt = decode_nhrp(data, verify_checksum=False)
    except DecodeError:
        return None
    if pkt.type in _ANSWERS.values():
        return (pkt.type, pkt.request_id)
    return None
