"""What the engine asks its host to do. Plain immutable data."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network
from typing import Any, TypeAlias

from dmvpn.wire import Address, NhrpPacket, address_text, decode_nhrp


class SendPacket:
    """Send ``data`` (the encoded ``packet``) as GRE/NHRP to NBMA address ``nbma``.

    A plain class, not a dataclass: one is made per packet a hub sends, and
    the fast refresh path (engine) has only the bytes, so ``packet`` is
    decoded from them on first read (the daemon reads only ``data``)."""

    __slots__ = ("_packet", "data", "nbma")
    __match_args__ = ("nbma", "packet", "data")

    def __init__(self, nbma: Address, packet: NhrpPacket | None, data: bytes) -> None:
        self.nbma = nbma
        self._packet = packet
        self.data = data

    @property
    def packet(self) -> NhrpPacket:
        if self._packet is None:
            self._packet = decode_nhrp(self.data)
        return self._packet

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SendPacket):
            return NotImplemented
        return self.nbma == other.nbma and self.data == other.data

    def __hash__(self) -> int:
        return hash((self.nbma, self.data))

    def __repr__(self) -> str:
        return f"SendPacket(nbma={self.nbma!r}, data={self.data!r})"


@dataclass(frozen=True, slots=True)
class BindingAdded:
    """Protocol address ``protocol`` is reached at NBMA address ``nbma``."""

    protocol: Address
    nbma: Address
    type: str


@dataclass(frozen=True, slots=True)
class BindingRemoved:
    protocol: Address
    nbma: Address


@dataclass(frozen=True, slots=True)
class ShortcutAdded:
    """Route ``prefix`` via tunnel next hop ``next_hop`` (phase 3 shortcut)."""

    prefix: IPv4Network | IPv6Network
    next_hop: Address
    nbma: Address


@dataclass(frozen=True, slots=True)
class ShortcutRemoved:
    prefix: IPv4Network | IPv6Network
    next_hop: Address


@dataclass(frozen=True, slots=True)
class ProtectPeer:
    """Bring up IPsec protection to this NBMA peer (first binding to it)."""

    nbma: Address


@dataclass(frozen=True, slots=True)
class UnprotectPeer:
    """The last binding to this NBMA peer is gone."""

    nbma: Address


@dataclass(frozen=True, slots=True)
class PeerGroup:
    """A registration from ``nbma`` for ``protocol`` named NHRP group
    ``group`` (None: no group), or named another one than before (NHS only;
    Cisco per-tunnel QoS). Sent when a registration is new, moves to another
    NBMA address, or changes group; it goes with the binding
    (BindingRemoved)."""

    protocol: Address
    nbma: Address
    group: str | None


class EventKind(StrEnum):
    """What an :class:`Event` reports. A StrEnum, so a kind compares equal to,
    formats and serialises as its string: JSON logs and ``/v1/events`` carry
    the same text as when kinds were bare strings. Each is documented in
    docs/API.md (tests/nhrp/test_event_kinds.py checks)."""

    # The engine's life.
    STARTED = "started"
    STOPPED = "stopped"
    RETUNED = "retuned"
    NBMA_CHANGED = "nbma-changed"
    # Registering with our NHSes (NHC).
    NHS_UP = "nhs-up"
    NHS_DOWN = "nhs-down"
    NHS_STANDBY = "nhs-standby"
    DEREGISTERED = "deregistered"
    # Registrations with us (NHS); registration-refused is also what an NHC
    # reports when its NHS refuses it.
    REGISTERED = "registered"
    REGISTRATION_REFUSED = "registration-refused"
    REGISTRATION_REPLACED = "registration-replaced"
    REGISTRATION_EXPIRED = "registration-expired"
    REGISTRATION_PURGED = "registration-purged"
    REGISTRATION_CLEARED = "registration-cleared"
    # Resolution and shortcuts.
    RESOLUTION_SENT = "resolution-sent"
    RESOLVED = "resolved"
    RESOLUTION_FAILED = "resolution-failed"
    RESOLUTION_FORWARDED = "resolution-forwarded"
    RESOLUTION_REPLY_FORWARDED = "resolution-reply-forwarded"
    RESOLUTION_ANSWERED = "resolution-answered"
    # `shortcut` once the route is installed: the engine emits it with
    # ShortcutAdded, and a host that holds the route back (the IPsec gate)
    # reports `shortcut-deferred` instead, then `shortcut` when it installs it.
    SHORTCUT = "shortcut"
    SHORTCUT_DEFERRED = "shortcut-deferred"
    REDIRECT = "redirect"
    EXPIRED = "expired"
    PURGED = "purged"
    # Refusals and problems.
    IDENTITY_REFUSED = "identity-refused"
    # A NAT rewriting in ways a NAT should not (docs/NAT.md): reported once
    # per address and problem, counted every time.
    NAT_MISMATCH = "nat-mismatch"
    ERROR_INDICATION = "error-indication"
    AUTH_FAILURE = "auth-failure"
    MALFORMED = "malformed"
    DROPPED = "dropped"
    INTERNAL_ERROR = "internal-error"


@dataclass(frozen=True, slots=True)
class Event:
    """Something for logs and ``dmvpn events``: a kind, a sentence, details."""

    kind: EventKind
    message: str
    details: dict[str, Any] = field(default_factory=dict)


def shortcut_event(sc: ShortcutAdded, deferred: str | None = None) -> Event:
    """The event for a shortcut route: `shortcut`, or `shortcut-deferred`
    with why (the engine's and the host's words for it are the same)."""
    text = f"shortcut {sc.prefix} via {address_text(sc.next_hop)} ({address_text(sc.nbma)})"
    details: dict[str, Any] = {
        "prefix": str(sc.prefix),
        "next_hop": address_text(sc.next_hop),
        "nbma": address_text(sc.nbma),
    }
    if deferred is None:
        return Event(EventKind.SHORTCUT, text, details)
    return Event(
        EventKind.SHORTCUT_DEFERRED, f"{text} deferred: {deferred}", details | {"why": deferred}
    )


Output: TypeAlias = (
    SendPacket
    | BindingAdded
    | BindingRemoved
    | ShortcutAdded
    | ShortcutRemoved
    | ProtectPeer
    | UnprotectPeer
    | PeerGroup
    | Event
)
