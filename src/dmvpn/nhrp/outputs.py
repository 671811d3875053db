"""What the engine asks its host to do. Plain immutable data."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Any, TypeAlias

from dmvpn.wire import Address, NhrpPacket


@dataclass(frozen=True, slots=True)
class SendPacket:
    """Send ``data`` (the encoded ``packet``) as GRE/NHRP to NBMA address ``nbma``."""

    nbma: Address
    packet: NhrpPacket
    data: bytes


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
class Event:
    """Something for logs and ``dmvpn events``: a kind, a sentence, details."""

    kind: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


Output: TypeAlias = (
    SendPacket
    | BindingAdded
    | BindingRemoved
    | ShortcutAdded
    | ShortcutRemoved
    | ProtectPeer
    | UnprotectPeer
    | Event
)
