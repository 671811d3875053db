"""Engine configuration: one DMVPN interface, in Cisco/nhrpd vocabulary.

The network ID is deliberately absent: it is local only and never goes on
the wire (it groups interfaces into one NHRP domain; the daemon uses it to
pick the engine for an interface).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

from dmvpn.wire import Address, group_problem


@dataclass(frozen=True, slots=True)
class NhsConfig:
    """`ip nhrp nhs PROTOCOL nbma NBMA priority P`: lower priority is preferred (Cisco)."""

    protocol: Address
    nbma: Address
    priority: int = 0


@dataclass(frozen=True, slots=True)
class StaticMap:
    """`ip nhrp map PROTOCOL NBMA`: a static binding."""

    protocol: Address
    nbma: Address


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    protocol_address: IPv4Address | IPv6Address
    nbma_address: Address
    # NHS role (`ip nhrp network-id` + accepting registrations, i.e. a hub).
    server: bool = False
    # NHC role: the NHSes to register with (a hub with NHSes is hierarchical).
    nhs: tuple[NhsConfig, ...] = ()
    # Register with at most this many NHSes at once (Cisco max-connections);
    # None: all of them. The rest stand by, in priority order.
    max_nhs: int | None = None
    static_maps: tuple[StaticMap, ...] = ()
    holding_time: int = 7200
    # Cisco sets the unique flag by default; `ip nhrp registration no-unique`
    # clears it, which spokes with dynamic NBMA addresses need.
    registration_unique: bool = True
    # Phase 1 spokes never resolve (their tunnel is in effect point-to-point
    # to the hub); phase 2 and 3 spokes do.
    resolution: bool = True
    redirect: bool = False  # `ip nhrp redirect` (hub, phase 3)
    shortcut: bool = False  # `ip nhrp shortcut` (spoke, phase 3)
    authentication: bytes | None = None  # `ip nhrp authentication` (Cisco: at most 8 bytes)
    auth_failure: Literal["error", "drop"] = "error"
    mtu: int = 1400  # advertised in CIEs (Cisco sends its tunnel MTU)
    # Cisco's `ip nhrp max-send`: everything the engine sends, per interval.
    max_send: int = 100_000
    max_send_interval: float = 10.0
    # Traffic Indications: at most one per (sender, destination) per interval.
    redirect_interval: float = 8.0
    # Incomplete/negative cache entries (Cisco and OpenNHRP: about 3 minutes).
    negative_ttl: float = 180.0
    # Retransmission backoff: first wait, cap (nhrpd: 1 s doubling to 64 s).
    retry_initial: float = 1.0
    retry_max: float = 64.0
    # Unanswered registration retransmissions before an NHS is declared down.
    nhs_down_after: int = 3
    # Resolution Requests sent (same request ID) before the target is
    # negative: 1+2+4+8+16 s, about nhrpd's 30 s.
    resolution_retries: int = 5
    # Cisco NAT extension and header flag 0x0002 in our requests.
    nat_extension: bool = True
    request_id_start: int = 1
    # Identity binding (IPsec): a registration, or a resolution answer not
    # from one of our NHSes, is accepted only from an NBMA peer whose
    # authenticated identity may claim the protocol address (set_claims).
    identity_binding: bool = False
    # `ip nhrp group NAME` (spoke): sent in our Registration Requests so that
    # the hub can pick a per-tunnel QoS policy for us (wire/nhrp_group.py).
    group: str | None = None

    def __post_init__(self) -> None:
        if self.holding_time < 3 or self.holding_time > 0xFFFF:
            raise ValueError(f"holding_time {self.holding_time} must be 3..65535 seconds")
        if self.authentication is not None and len(self.authentication) > 8:
            # Cisco truncates at 8 bytes; refuse rather than mismatch silently.
            raise ValueError("authentication is at most 8 bytes (Cisco cleartext)")
        if self.group is not None and (problem := group_problem(self.group)) is not None:
            raise ValueError(f"group {self.group!r} {problem}")
        if self.max_nhs is not None and self.max_nhs < 1:
            raise ValueError("max_nhs must be at least 1")
