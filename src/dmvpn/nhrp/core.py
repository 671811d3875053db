"""State every part of the engine shares: config, cache, timers, outputs,
counters, request IDs, the send budget, and binding bookkeeping."""

from __future__ import annotations

from collections import Counter
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from dmvpn.wire import (
    Address,
    AuthenticationExtension,
    NhrpPacket,
    PacketType,
    address_text,
)

from .cache import BOUND_TYPES, Cache, CacheEntry, EntryFlag
from .config import EngineConfig
from .outputs import (
    BindingAdded,
    BindingRemoved,
    Event,
    EventKind,
    Output,
    ProtectPeer,
    SendPacket,
    ShortcutAdded,
    ShortcutRemoved,
    UnprotectPeer,
)
from .ratelimit import TokenBucket
from .routing import RoutingView, StaticRouting
from .timers import ExpireTimer, TimerKey, Timers

# Counter names per packet type, formatted once.
_TX_STAT = {t: f"tx.{t.name.lower()}" for t in PacketType}


class Core:
    def __init__(self, config: EngineConfig, routing: RoutingView | None) -> None:
        self.config = config
        self.routing: RoutingView = routing if routing is not None else StaticRouting()
        self.nbma: Address = config.nbma_address
        # Our NBMA address as an NHS saw it, when we are behind NAT.
        self.public_nbma: Address | None = None
        self.cache = Cache()
        self.timers = Timers()
        self.outputs: list[Output] = []
        self.stats: Counter[str] = Counter()
        self._request_id = config.request_id_start & 0xFFFFFFFF
        self.budget = TokenBucket(config.max_send, config.max_send_interval)
        self._peer_refs: dict[Address, int] = {}
        self.events_enabled = True
        # NBMA peer -> the protocol addresses its IPsec identity may claim.
        self.claims: dict[Address, tuple[IPv4Network | IPv6Network, ...]] = {}
        # (problem, address) already reported by report_once().
        self._reported: set[tuple[str, Address]] = set()

    # ------------------------------------------------------------ outputs

    def event(self, kind: EventKind, message: str, **details: Any) -> None:
        self.stats[f"event.{kind}"] += 1
        if self.events_enabled:
            self.outputs.append(Event(kind, message, details))

    def report_once(
        self, problem: str, about: Address, kind: EventKind, message: str, **details: Any
    ) -> None:
        """Count `problem` every time; the event only the first time for
        this address, so a misbehaving NAT cannot flood the logs."""
        self.stats[f"nat.{problem}"] += 1
        if (problem, about) in self._reported:
            return
        if len(self._reported) >= 4096:  # bounded: a flood of addresses stays bounded
            self._reported.clear()
        self._reported.add((problem, about))
        self.event(kind, message, problem=problem, **details)

    def new_request_id(self) -> int:
        rid = self._request_id
        self._request_id = (rid + 1) & 0xFFFFFFFF or 1
        return rid

    def send(self, nbma: Address, packet: NhrpPacket, now: float, *, budget: bool = True) -> bool:
        """Queue a packet; False (counted) when the max-send budget is spent."""
        if budget and not self.budget.take(now):
            self.stats["tx.rate_limited"] += 1
            return False
        data = packet.encode()
        self.outputs.append(SendPacket(nbma, packet, data))
        self.stats[_TX_STAT[packet.type]] += 1
        return True

    def schedule(self, when: float, key: TimerKey) -> None:
        self.timers.schedule(when, key)

    # ------------------------------------------------------------ auth

    def auth_ok(self, packet: NhrpPacket) -> bool:
        """RFC 2332 5.3.4 with Cisco's layout: type 1, cleartext password."""
        secret = self.config.authentication
        if secret is None:
            return True
        for ext in packet.extensions:
            if isinstance(ext, AuthenticationExtension):
                return ext.auth_type == 1 and ext.data == secret
        return False

    # ------------------------------------------------------------ identity binding

    def may_claim(self, nbma: Address, protocol: Address) -> bool:
        """Whether the peer at ``nbma`` may bind ``protocol`` (always, without
        identity binding)."""
        if not self.config.identity_binding:
            return True
        if not isinstance(protocol, IPv4Address | IPv6Address):
            return False
        nets = self.claims.get(nbma, ())
        return any(n.version == protocol.version and protocol in n for n in nets)

    def refuse_claim(self, what: str, protocol: Address, nbma: Address) -> None:
        self.stats["identity.refused"] += 1
        nets = self.claims.get(nbma)
        allowed = ", ".join(str(n) for n in nets) if nets else "no address (identity unknown)"
        self.event(
            EventKind.IDENTITY_REFUSED,
            f"{what} for {self.describe(protocol)} from {self.describe(nbma)} refused: its "
            f"IPsec identity may claim {allowed}",
            protocol=self.describe(protocol),
            nbma=self.describe(nbma),
            what=what,
        )

    # ------------------------------------------------------------ bindings

    def peer_bound(self, nbma: Address) -> bool:
        """Whether a bound host entry (static, dynamic, nhs, cached) has
        NBMA address ``nbma``: the reference count behind ProtectPeer."""
        return nbma in self._peer_refs

    def _ref_peer(self, nbma: Address) -> None:
        n = self._peer_refs.get(nbma, 0)
        self._peer_refs[nbma] = n + 1
        if n == 0:
            self.outputs.append(ProtectPeer(nbma))

    def _unref_peer(self, nbma: Address) -> None:
        n = self._peer_refs.get(nbma, 0)
        if n <= 1:
            self._peer_refs.pop(nbma, None)
            if n == 1:
                self.outputs.append(UnprotectPeer(nbma))
        else:
            self._peer_refs[nbma] = n - 1

    def _announce(self, entry: CacheEntry) -> None:
        if entry.type not in BOUND_TYPES or entry.nbma is None:
            return
        if entry.is_host:
            self._ref_peer(entry.nbma)
            self.outputs.append(BindingAdded(entry.protocol, entry.nbma, entry.type.value))
        elif entry.next_hop is not None:
            self.outputs.append(ShortcutAdded(entry.prefix, entry.next_hop, entry.nbma))

    def _withdraw(self, entry: CacheEntry) -> None:
        if entry.type not in BOUND_TYPES or entry.nbma is None:
            return
        if entry.is_host:
            self.outputs.append(BindingRemoved(entry.protocol, entry.nbma))
            self._unref_peer(entry.nbma)
        elif entry.next_hop is not None:
            self.outputs.append(ShortcutRemoved(entry.prefix, entry.next_hop))

    def install(self, entry: CacheEntry) -> CacheEntry | None:
        """Put an entry in the cache and tell the host; returns the one replaced."""
        old = self.cache.put(entry)
        if old is not None:
            same = (
                old.type in BOUND_TYPES
                and entry.type in BOUND_TYPES
                and old.nbma == entry.nbma
                and old.next_hop == entry.next_hop
            )
            if same:
                # A refresh: no churn in the data plane. The old entry's
                # purge list carries over.
                entry.handed_out = old.handed_out
                if old.flags & EntryFlag.USED:
                    entry.last_used = old.last_used
            else:
                self._withdraw(old)
                self._announce(entry)
        else:
            self._announce(entry)
        if entry.expires is not None:
            self.schedule(entry.expires, ExpireTimer(entry.protocol, entry.prefix_length))
        return old

    def remove(self, entry: CacheEntry) -> None:
        if self.cache.remove(entry):
            self._withdraw(entry)

    def describe(self, addr: Address | None) -> str:
        return address_text(addr) if addr is not None else "-"
