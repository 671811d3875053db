"""One NHRP engine per DMVPN interface: the facade the daemon, the
simulator, the fuzzers and the benchmarks drive.

Inputs (each with ``now``): :meth:`start`, :meth:`stop`, :meth:`receive`
(an NHRP packet and the NBMA address it came from), the data-plane events
:meth:`next_hop_unbound`, :meth:`hairpin` and :meth:`binding_used`,
:meth:`set_nbma`, and :meth:`handle_timer` when :meth:`get_timer` is due.
Outputs: :meth:`pop_outputs` (packets to send, bindings, shortcut routes,
IPsec protection, events). No entry point raises on any input.

Everything else a host reads or does goes through this class too: the views
(:meth:`entries`, :meth:`shortcuts`, :meth:`nhs_states`, counters...) and
the operator's actions (:meth:`clear`, :meth:`retune`, :meth:`set_claims`).
The parts behind it (``_core``, ``_client``, ``_server``, ``_resolver``,
``_purges``) are private to :mod:`dmvpn.nhrp`, so they can change freely.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from typing import Any, Literal

from dmvpn.wire import (
    Address,
    AuthenticationExtension,
    DecodeError,
    ErrorCode,
    NhrpPacket,
    PacketType,
    UnknownExtension,
    address_text,
    decode_nhrp,
    internet_checksum,
)

from .cache import BOUND_TYPES, CacheEntry, EntryFlag, EntryType, entry_order, host_length
from .client import NhsClient, NhsStatus
from .config import EngineConfig, NhsConfig
from .core import Core
from .family import nbma_family_mismatch
from .outputs import EventKind, Output, SendPacket
from .purge import Purges
from .ratelimit import TokenBucket
from .resolver import Resolver
from .routing import RoutingView
from .server import Server
from .timers import ExpireTimer, NhsTimer, ResolutionTimer, TimerKey

# What `clear nhrp` removes: everything not configured ("all", like Cisco's
# `clear ip nhrp`), or only shortcut routes (`clear ip nhrp shortcut`).
ClearScope = Literal["all", "shortcut"]
CLEAR_SCOPES: tuple[ClearScope, ...] = ("all", "shortcut")
_CLEARABLE = frozenset(
    {EntryType.DYNAMIC, EntryType.CACHED, EntryType.INCOMPLETE, EntryType.NEGATIVE}
)


# Where a Registration Request's bytes may differ between two refreshes that
# carry the same content: ar$chksum (bytes 12-13) and the request ID (24-27).
# (RFC 2332 5.2.1: fixed header 20 bytes, then protocol lengths, flags and
# request ID.) Cisco's authentication (type 1, cleartext) is the same bytes
# in every request, so it is inside the compared part.
_CHECKSUM = slice(12, 14)
_REQUEST_ID = slice(24, 28)
_REGISTRATION_REQUEST = int(PacketType.REGISTRATION_REQUEST)
# Counter names per packet type, formatted once (an enum's name costs more
# than the counting).
_RX_STAT = {t: f"rx.{t.name.lower()}" for t in PacketType}


class _Refresh:
    """What answering a peer's last Registration Request from bytes needs:
    the request (apart from checksum and request ID), the entry it bound,
    the reply's bytes, and the config they were made under."""

    __slots__ = ("config", "entry", "flags", "head", "mid", "reply", "tail", "timer")

    def __init__(self, request: bytes, entry: CacheEntry, reply: bytes, config: EngineConfig):
        self.head = request[:12]
        self.mid = request[14:24]
        self.tail = request[28:]
        self.entry = entry
        self.flags = entry.flags
        self.reply = reply
        self.config = config
        self.timer = ExpireTimer(entry.protocol, entry.prefix_length)


class Engine:
    def __init__(self, config: EngineConfig, routing: RoutingView | None = None) -> None:
        self._core = Core(config, routing)
        self._purges = Purges(self._core)
        self._client = NhsClient(self._core, self._purges)
        self._server = Server(self._core, self._purges)
        # NBMA address -> its last answered Registration Request (fast refresh).
        self._refreshes: dict[Address, _Refresh] = {}
        self._resolver = Resolver(self._core, self._client)
        self.started = False

    @property
    def config(self) -> EngineConfig:
        return self._core.config

    @property
    def stats(self) -> dict[str, int]:
        """Every counter by name (a copy): rx.*, tx.*, registrations.*, event.*..."""
        return dict(self._core.stats)

    @property
    def nbma(self) -> Address:
        """Our NBMA address."""
        return self._core.nbma

    @property
    def public_nbma(self) -> Address | None:
        """Our NBMA address as an NHS saw it, when we are behind NAT."""
        return self._core.public_nbma

    @property
    def events_enabled(self) -> bool:
        """Whether Event outputs are queued; counted as event.<kind> either
        way. Off saves a big hub (or simulator) the formatting."""
        return self._core.events_enabled

    @events_enabled.setter
    def events_enabled(self, on: bool) -> None:
        self._core.events_enabled = on

    @property
    def registered(self) -> bool:
        """Whether any NHS has accepted our registration."""
        return self._client.any_up()

    @property
    def timer_count(self) -> int:
        """Entries in the timer heap (one per key due, plus the few a key
        moved earlier left behind): flat under refreshes."""
        return self._core.timers.heap_size

    # ------------------------------------------------------------ lifecycle

    def start(self, now: float) -> None:
        core = self._core
        if self.started:
            return
        self.started = True
        for m in core.config.static_maps:
            core.install(CacheEntry(m.protocol, EntryType.STATIC, now, nbma=m.nbma))
        core.cache.put(
            CacheEntry(core.config.protocol_address, EntryType.LOCAL, now, nbma=core.nbma)
        )
        core.event(
            EventKind.STARTED,
            f"engine for {address_text(core.config.protocol_address)} "
            f"({'NHS' if core.config.server else 'NHC'}) started",
        )
        self._client.start(now)

    def stop(self, now: float) -> None:
        """Clean shutdown: deregister (purge) from NHSes, withdraw everything."""
        if not self.started:
            return
        self._client.stop(now)
        for entry in list(self._core.cache):
            self._core.remove(entry)
        self._refreshes.clear()
        self.started = False
        self._core.event(EventKind.STOPPED, "engine stopped")

    def set_claims(
        self, nbma: Address, networks: tuple[IPv4Network | IPv6Network, ...] | None
    ) -> None:
        """What the peer at ``nbma`` may claim (identity binding): the
        networks its authenticated IPsec identity covers; None forgets it."""
        self._refreshes.clear()  # what a peer may claim changed: re-check all
        if networks is None:
            self._core.claims.pop(nbma, None)
        else:
            self._core.claims[nbma] = networks

    def retune(self, config: EngineConfig, now: float) -> None:
        """Take new values for the knobs read at each use (SIGHUP): holding
        time, redirect, shortcut, authentication, max-send... Bindings,
        registrations and shortcuts stay; the next refresh carries them."""
        core = self._core
        core.config = config
        self._refreshes.clear()
        core.budget = TokenBucket(config.max_send, config.max_send_interval)
        self._server.redirects.interval = config.redirect_interval
        core.event(
            EventKind.RETUNED,
            "configuration reloaded",
            holding_time=config.holding_time,
            redirect=config.redirect,
            shortcut=config.shortcut,
        )

    def set_nbma(self, nbma: Address, now: float) -> None:
        """Our NBMA address changed: re-register everywhere at once."""
        if nbma == self._core.nbma:
            return
        old = self._core.nbma
        self._core.nbma = nbma
        self._refreshes.clear()  # our NBMA is in every reply (responder CIE)
        self._core.event(
            EventKind.NBMA_CHANGED,
            f"NBMA address {address_text(old)} -> {address_text(nbma)}",
            old=address_text(old),
            new=address_text(nbma),
        )
        if self.started:
            self._client.nbma_changed(now)
            self._purges.moved(now)

    # ------------------------------------------------------------ outputs

    def pop_outputs(self) -> list[Output]:
        out = self._core.outputs
        self._core.outputs = []
        return out

    def get_timer(self) -> float | None:
        return self._core.timers.next_deadline()

    def handle_timer(self, now: float) -> None:
        for key in self._core.timers.pop_due(now):
            try:
                self._fire(key, now)
            except Exception as exc:  # pragma: no cover - a bug, kept out of the host
                self._internal_error("timer", exc)

    def _fire(self, key: TimerKey, now: float) -> None:
        if isinstance(key, ExpireTimer):
            self._expire(key.protocol, key.prefix_length, now)
        elif isinstance(key, NhsTimer):
            self._client.on_timer(key.index, key.generation, now)
        elif isinstance(key, ResolutionTimer):
            self._resolver.on_timer(key.request_id, key.generation, now)
        else:
            self._resolver.on_refresh(key.protocol, key.prefix_length, key.created, now)

    def _expire(self, protocol: Address, prefix_length: int, now: float) -> None:
        core = self._core
        if prefix_length == host_length(protocol):
            entry = core.cache.host(protocol)
        else:
            entry = core.cache.lookup(protocol)
            if entry is not None and entry.prefix_length != prefix_length:
                entry = None
        if entry is None or entry.expires is None or entry.expires > now:
            return
        if entry.nbma is not None:
            fast = self._refreshes.get(entry.nbma)
            if fast is not None and fast.entry is entry:
                del self._refreshes[entry.nbma]  # memory stays bounded by bindings
        self._purges.drop(entry, now, "expired")
        if entry.type == EntryType.CACHED:
            core.stats["cache.expired"] += 1
            core.event(
                EventKind.EXPIRED,
                f"{address_text(entry.protocol)}/{entry.prefix_length} expired (idle)",
                protocol=address_text(entry.protocol),
            )

    # ------------------------------------------------------------ data plane

    def next_hop_unbound(self, next_hop: Address, now: float) -> None:
        """The data plane has a packet for tunnel next hop ``next_hop`` with
        no binding: phase 2 resolution (it sends via the hub meanwhile)."""
        try:
            self._resolver.resolve(next_hop, now, "next hop without binding")
        except Exception as exc:  # pragma: no cover
            self._internal_error("next_hop_unbound", exc)

    def hairpin(self, packet: bytes, from_nbma: Address, now: float) -> None:
        """A hub forwarded ``packet`` (an IP packet) that came in from the peer
        at ``from_nbma`` back out of the DMVPN interface (phase 3)."""
        try:
            self._server.hairpin(packet, from_nbma, now)
        except Exception as exc:  # pragma: no cover
            self._internal_error("hairpin", exc)

    def binding_used(self, addr: Address, now: float) -> None:
        self._resolver.binding_used(addr, now)

    def nhs_unreachable(self, protocol: Address, now: float, reason: str) -> bool:
        """The host's NHS liveness check (an echo the NHS answered before,
        now unanswered) says the NHS at tunnel address ``protocol`` is gone:
        mark it down at once (nhs-down with ``reason``) and fail over. False
        when it was not up or probing."""
        try:
            return self._client.unreachable(protocol, now, reason)
        except Exception as exc:  # pragma: no cover
            self._internal_error("nhs_unreachable", exc)
            return False

    # ------------------------------------------------------------ packets

    def receive(self, data: bytes, src_nbma: Address, now: float) -> None:
        core = self._core
        core.stats["rx.packets"] += 1
        if (
            len(data) > 28
            and data[17] == _REGISTRATION_REQUEST
            and src_nbma in self._refreshes
            and self._fast_refresh(data, src_nbma, now)
        ):
            return
        try:
            pkt = decode_nhrp(data)
        except DecodeError as exc:
            core.stats["rx.malformed"] += 1
            core.event(
                EventKind.MALFORMED,
                f"dropped malformed NHRP from {address_text(src_nbma)}: {exc}",
                src=address_text(src_nbma),
                reason=exc.reason,
                offset=exc.offset,
            )
            return
        try:
            self._dispatch(pkt, src_nbma, now)
        except Exception as exc:  # pragma: no cover - a bug, kept out of the host
            self._internal_error("receive", exc)
            return
        if pkt.type == PacketType.REGISTRATION_REQUEST:
            bound = self._server.refreshable
            self._server.refreshable = None
            out = core.outputs[-1] if core.outputs else None
            if (
                bound is not None
                and isinstance(out, SendPacket)
                and int.from_bytes(data[10:12], "big") == len(data)  # no padding
            ):
                self._refreshes[src_nbma] = _Refresh(data, bound, out.data, core.config)
            else:
                self._refreshes.pop(src_nbma, None)

    def _fast_refresh(self, data: bytes, src_nbma: Address, now: float) -> bool:
        """Answer a refresh that repeats the peer's last answered Registration
        Request (same NBMA, protocol address, holding time, flags and
        extensions, authentication included; only the request ID and
        checksum differ) from that request's reply bytes, renewing the
        binding as the full path would. False: not such a refresh (or the
        state it was answered in has changed), take the full path.

        A hub spends most of its time on refreshes (50k spokes every
        holding/3); this does one compare, one checksum and one patch instead
        of decode, checks, a new entry and an encode (issue 20). It answers
        nothing the full path would not: authentication and identity
        depend only on the bytes compared and on the config and claims,
        whose changes empty this table; a binding removed, replaced or
        expired is not the entry remembered."""
        fast = self._refreshes[src_nbma]
        core = self._core
        entry = fast.entry
        if (
            data[:12] != fast.head
            or data[14:24] != fast.mid
            or data[28:] != fast.tail
            or internet_checksum(data) != 0
        ):
            return False
        if (
            core.config is not fast.config
            or core.cache.hosts.get(entry.protocol) is not entry
            or entry.expires is None
            or entry.expires <= now
        ):
            del self._refreshes[src_nbma]
            return False
        stats = core.stats
        stats["rx.registration_request"] += 1
        stats["registrations.refreshed"] += 1
        stats["registrations.refreshed_fast"] += 1
        # As a new entry from the full path would be: renewed from now,
        # this request's ID, the registration's flags (USED reset, the last
        # use kept only if it was flagged), created and purge list kept.
        rid = data[_REQUEST_ID]
        entry.refreshed = now
        entry.expires = now + entry.holding_time
        entry.request_id = int.from_bytes(rid, "big")
        if not entry.flags & EntryFlag.USED:
            entry.last_used = None
        entry.flags = fast.flags
        core.schedule(entry.expires, fast.timer)
        if not core.budget.take(now):
            stats["tx.rate_limited"] += 1
            return True
        reply = bytearray(fast.reply)
        reply[_REQUEST_ID] = rid
        reply[_CHECKSUM] = b"\0\0"
        reply[_CHECKSUM] = internet_checksum(reply).to_bytes(2, "big")
        core.outputs.append(SendPacket(src_nbma, None, bytes(reply)))
        stats["tx.registration_reply"] += 1
        return True

    def _internal_error(self, where: str, exc: Exception) -> None:
        self._core.stats["internal_errors"] += 1
        self._core.event(EventKind.INTERNAL_ERROR, f"{where}: {type(exc).__name__}: {exc}")

    def _dispatch(self, pkt: NhrpPacket, src_nbma: Address, now: float) -> None:
        core = self._core
        cfg = core.config
        t = pkt.type
        core.stats[_RX_STAT[t]] += 1
        if nbma_family_mismatch(pkt, src_nbma, core.nbma) is not None:
            core.stats["rx.nbma_family_mismatch"] += 1  # family.py: never bound
            return
        if pkt.version != 1:
            core.stats["rx.bad_version"] += 1
            self._server.send_error(pkt, src_nbma, ErrorCode.PROTOCOL_ERROR, 16, now)
            return
        if pkt.hop_count == 0 and t != PacketType.ERROR_INDICATION:
            core.stats["rx.hop_count_zero"] += 1  # Cisco drops these too
            return
        # nhrpd sends its Error Indications with hop count 0; one is never
        # forwarded, so it is read (and authenticated) like any other.
        if not core.auth_ok(pkt):
            core.stats["rx.auth_failed"] += 1
            core.event(
                EventKind.AUTH_FAILURE,
                f"{t.name.replace('_', ' ').title()} from "
                f"{address_text(src_nbma)} failed authentication",
                src=address_text(src_nbma),
                protocol=address_text(pkt.src_proto),
            )
            if cfg.auth_failure == "error":
                self._server.send_error(
                    pkt,
                    src_nbma,
                    ErrorCode.AUTHENTICATION_FAILURE,
                    self._extension_offset(pkt, AuthenticationExtension),
                    now,
                )
            return
        for i, ext in enumerate(pkt.extensions):
            if isinstance(ext, UnknownExtension) and ext.compulsory:
                # RFC 2332 5.3: unrecognized compulsory extension -> error 1
                # (nhrpd drops silently).
                core.stats["rx.unknown_compulsory_extension"] += 1
                self._server.send_error(
                    pkt,
                    src_nbma,
                    ErrorCode.UNRECOGNIZED_EXTENSION,
                    pkt.extension_offsets()[i],
                    now,
                )
                return
        if t == PacketType.REGISTRATION_REQUEST:
            self._server.on_registration_request(pkt, src_nbma, now)
        elif t == PacketType.REGISTRATION_REPLY:
            if not self._client.on_registration_reply(pkt, now):
                core.stats["rx.unexpected_reply"] += 1
        elif t == PacketType.RESOLUTION_REQUEST:
            self._server.on_resolution_request(pkt, src_nbma, now)
        elif t == PacketType.RESOLUTION_REPLY:
            if pkt.src_proto != cfg.protocol_address and cfg.server:
                # An answer to someone else's request, sent back through us
                # (nhrpd routes its replies via the NHS): RFC 2332 5.3.3.
                self._server.forward_reply(pkt, src_nbma, now)
            elif not self._resolver.on_resolution_reply(pkt, src_nbma, now):
                core.stats["rx.unexpected_reply"] += 1
        elif t == PacketType.PURGE_REQUEST:
            for gone in self._purges.on_request(pkt, src_nbma, now):
                if gone.flags & EntryFlag.SHORTCUT and gone.last_used is not None:
                    # A shortcut in use, purged by its owner (it moved, or
                    # restarted): ask again at once rather than waiting for
                    # the hub's next redirect; meanwhile data goes via the hub.
                    self._resolver.resolve(gone.protocol, now, "shortcut purged by its owner")
        elif t == PacketType.PURGE_REPLY:
            pass  # counted above; nothing waits for it (our purges set N or need no answer)
        elif t == PacketType.ERROR_INDICATION:
            core.event(
                EventKind.ERROR_INDICATION,
                f"Error Indication code {pkt.error_code} from {address_text(src_nbma)}",
                code=pkt.error_code,
                src=address_text(src_nbma),
            )
            self._client.on_error(src_nbma, now)
        elif t == PacketType.TRAFFIC_INDICATION:
            self._resolver.on_traffic_indication(pkt, now)

    @staticmethod
    def _extension_offset(pkt: NhrpPacket, cls: type) -> int:
        """Offset of the first extension of class ``cls`` in the packet in
        error (0 when absent); offsets come from the codec, which knows the
        layout."""
        for ext, at in zip(pkt.extensions, pkt.extension_offsets(), strict=True):
            if isinstance(ext, cls):
                return at
        return 0

    # ------------------------------------------------------------ operator

    def clear(self, now: float, scope: ClearScope = "all") -> list[CacheEntry]:
        """`clear nhrp`: remove what was not configured (dynamic, cached,
        incomplete and negative entries) or, with scope "shortcut", only the
        shortcut routes; returns what went, in address order.

        The withdrawals (bindings, routes, purges of bindings a hub handed
        out) are queued as outputs. Cleared registrations come back at the
        spokes' next refresh, as on Cisco.
        """
        if scope not in CLEAR_SCOPES:
            raise ValueError(f"scope must be one of {', '.join(CLEAR_SCOPES)}")
        self._refreshes.clear()
        cleared: list[CacheEntry] = []
        for entry in self.entries():
            if entry.type not in _CLEARABLE or (scope == "shortcut" and not entry.is_shortcut):
                continue
            self._purges.drop(entry, now, "cleared")
            cleared.append(entry)
        return cleared

    # ------------------------------------------------------------ views

    def entries(self) -> list[CacheEntry]:
        """Every cache entry, in address order (:func:`entry_order`). The
        engine's own records: read them, do not change them."""
        return sorted(self._core.cache, key=entry_order)

    def entry(self, protocol: Address) -> CacheEntry | None:
        """The host entry for ``protocol``, of any type, if there is one."""
        return self._core.cache.host(protocol)

    def entry_counts(self) -> dict[EntryType, int]:
        """Cache entries by type, every type present (metrics)."""
        counts = dict.fromkeys(EntryType, 0)
        for e in self._core.cache:
            counts[e.type] += 1
        return counts

    def shortcuts(self) -> list[CacheEntry]:
        """The shortcut routes (phase 3), in address order."""
        found = (e for e in self._core.cache.prefixes.values() if e.is_shortcut)
        return sorted(found, key=entry_order)

    def cache_view(self, now: float) -> list[dict[str, Any]]:
        return sorted((e.view(now) for e in self._core.cache), key=lambda v: v["protocol"])

    def nhs_states(self) -> list[NhsStatus]:
        """Our NHSes, preferred first (priority, then configuration order)."""
        return [s.status() for s in self._client.nhs]

    def current_nhs(self) -> NhsConfig | None:
        """The preferred NHS we are registered with: where traffic without
        a binding goes (via the hub) and where we send Resolution Requests."""
        best = self._client.best_up()
        return best.config if best is not None else None

    def nhs_view(self, now: float) -> list[dict[str, object]]:
        return [s.view(now) for s in self.nhs_states()]

    def bound(self, addr: Address) -> Address | None:
        """The NBMA address ``addr`` is bound to, if any (host entries)."""
        entry = self._core.cache.host(addr)
        if entry is not None and entry.type in BOUND_TYPES:
            return entry.nbma
        return None

    def route(self, addr: Address) -> tuple[Address, Address] | None:
        """(next hop, NBMA) of the shortcut route holding ``addr``, if any."""
        entry = self._core.cache.lookup(addr)
        if entry is None or entry.next_hop is None or entry.nbma is None:
            return None
        return entry.next_hop, entry.nbma
