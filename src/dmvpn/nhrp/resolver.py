"""The NHC side of resolution: asking for bindings (phase 2 next hops,
phase 3 redirect destinations), installing answers as bindings and shortcut
routes, refreshing them while used, and letting them expire when idle."""

from __future__ import annotations

from dataclasses import dataclass

from dmvpn.wire import (
    Address,
    CieCode,
    NatAddressExtension,
    NhrpPacket,
    PacketType,
    ResolutionFlag,
    address_text,
    decode_ip,
)
from dmvpn.wire.errors import DecodeError

from .cache import BOUND_TYPES, CacheEntry, EntryFlag, EntryType, host_length
from .client import NhsClient
from .core import Core
from .outputs import EventKind, ShortcutAdded, shortcut_event
from .packets import originate, request_cie, request_extensions
from .timers import RefreshTimer, ResolutionTimer

# Cisco's Resolution Request flags: "router auth src-stable nat".
REQUEST_FLAGS = ResolutionFlag.Q | ResolutionFlag.A | ResolutionFlag.S | ResolutionFlag.NAT


@dataclass(slots=True)
class Pending:
    target: Address
    request_id: int
    nhs_nbma: Address
    reason: str
    tries: int = 0
    generation: int = 0
    refresh: bool = False  # re-resolving a binding in use: keep it meanwhile


class Resolver:
    def __init__(self, core: Core, client: NhsClient) -> None:
        self.core = core
        self.client = client
        self.pending: dict[int, Pending] = {}
        self.by_target: dict[Address, int] = {}

    # ------------------------------------------------------------ asking

    def resolve(self, target: Address, now: float, reason: str, *, refresh: bool = False) -> None:
        core = self.core
        cfg = core.config
        if not cfg.resolution:
            core.stats["resolution.disabled"] += 1  # phase 1: always via the hub
            return
        if target in self.by_target:
            return
        if not refresh:
            entry = core.cache.lookup(target)
            if entry is not None:
                # Bound, in progress, known negative (keep going via the
                # hub), or ours: nothing to ask.
                return
        nhs = self.client.best_up()
        if nhs is None:
            core.stats["resolution.no_nhs"] += 1
            return
        p = Pending(target, core.new_request_id(), nhs.config.nbma, reason, refresh=refresh)
        self.pending[p.request_id] = p
        self.by_target[target] = p.request_id
        if not refresh:
            # Cisco's temporary entry: data goes via the hub meanwhile.
            core.install(
                CacheEntry(target, EntryType.INCOMPLETE, now, expires=now + cfg.negative_ttl)
            )
        core.event(
            EventKind.RESOLUTION_SENT,
            f"resolving {address_text(target)} ({reason})",
            target=address_text(target),
            reason=reason,
            request_id=p.request_id,
        )
        self._send(p, now)

    def _send(self, p: Pending, now: float) -> None:
        core = self.core
        cfg = core.config
        cie = request_cie(cfg)
        pkt = originate(
            cfg,
            core.nbma,
            PacketType.RESOLUTION_REQUEST,
            dst_proto=p.target,
            flags=REQUEST_FLAGS if cfg.nat_extension else REQUEST_FLAGS & ~ResolutionFlag.NAT,
            request_id=p.request_id,
            cies=(cie,),
            extensions=request_extensions(cfg, ()),
        )
        core.send(p.nhs_nbma, pkt, now)
        core.stats["resolution.requests_sent"] += 1
        wait = min(cfg.retry_initial * (2**p.tries), cfg.retry_max)
        p.tries += 1
        p.generation += 1
        core.schedule(now + wait, ResolutionTimer(p.request_id, p.generation))

    def on_timer(self, request_id: int, generation: int, now: float) -> None:
        p = self.pending.get(request_id)
        if p is None or p.generation != generation:
            return
        if p.tries < self.core.config.resolution_retries:
            self.core.stats["resolution.retransmitted"] += 1
            self._send(p, now)  # retransmission: same request ID
            return
        self._finish(p)
        if not p.refresh:
            self._negative(p.target, now, "no answer")

    def _finish(self, p: Pending) -> None:
        self.pending.pop(p.request_id, None)
        if self.by_target.get(p.target) == p.request_id:
            del self.by_target[p.target]

    def _negative(self, target: Address, now: float, why: str) -> None:
        core = self.core
        core.stats["resolution.failed"] += 1
        current = core.cache.host(target)
        if current is not None and current.type in BOUND_TYPES:
            return
        core.install(
            CacheEntry(target, EntryType.NEGATIVE, now, expires=now + core.config.negative_ttl)
        )
        core.event(
            EventKind.RESOLUTION_FAILED,
            f"{address_text(target)}: {why}; traffic stays on the hub",
            target=address_text(target),
            reason=why,
        )

    # ------------------------------------------------------------ answers

    def on_resolution_reply(self, pkt: NhrpPacket, src_nbma: Address, now: float) -> bool:
        core = self.core
        cfg = core.config
        p = self.pending.get(pkt.request_id)
        if p is None or pkt.src_proto != cfg.protocol_address:
            return False
        self._finish(p)
        cie = pkt.cies[0] if pkt.cies else None
        if cie is None or cie.code != CieCode.SUCCESS:
            code = cie.code if cie is not None else "none"
            if p.refresh:
                return True  # the binding in use simply runs out
            self._negative(p.target, now, f"answered with CIE code {code}")
            return True
        next_hop = cie.protocol or pkt.dst_proto
        if src_nbma not in self.client.by_nbma and not core.may_claim(src_nbma, next_hop):
            # Identity binding: an answer straight from a peer binds only
            # what that peer's identity may claim (our NHSes answer from
            # registrations they checked themselves).
            core.refuse_claim("resolution reply", next_hop, src_nbma)
            self._negative(p.target, now, "answer refused by identity binding")
            return True
        host = host_length(pkt.dst_proto)
        plen = cie.prefix_length if 0 < cie.prefix_length < host else host
        nbma: Address = cie.nbma or src_nbma
        nat = pkt.extension(NatAddressExtension)
        from_nat = False
        if isinstance(nat, NatAddressExtension):
            for c in nat.cies:
                if c.protocol == next_hop and c.nbma:
                    nbma = c.nbma  # the responder is behind NAT
                    from_nat = True
                    core.stats["resolution.nat_extension"] += 1
        if src_nbma != nbma and src_nbma not in self.client.by_nbma:
            # The answer came straight from the responder, from another
            # address than it claims: NAT without the extension (nhrpd
            # trusts the packet's source the same way). With the
            # extension, it claims a public address the packet did not come
            # from: our data must go where its packets come from, so the
            # observed address wins (docs/NAT.md, bad input).
            if from_nat:
                core.report_once(
                    "extension_mismatch",
                    next_hop,
                    EventKind.NAT_MISMATCH,
                    f"{address_text(next_hop)}'s answer claims NBMA {address_text(nbma)} "
                    f"in its NAT extension but came from {address_text(src_nbma)}; "
                    "using the address it came from",
                    protocol=address_text(next_hop),
                    claimed=address_text(nbma),
                    observed=address_text(src_nbma),
                )
            nbma = src_nbma
        if core.public_nbma is not None and nbma == core.public_nbma:
            # The owner sits behind the same PAT as we do: our GRE to our
            # own public address cannot come back in, and plain GRE from two
            # inside hosts to one peer shares one NAT mapping (docs/NAT.md).
            # Stay on the hub path. Cisco requires unique post-NAT addresses;
            # nhrpd installs the shortcut and flaps (FRR issue 8308).
            core.stats["resolution.same_public_address"] += 1
            self._negative(
                p.target,
                now,
                f"{address_text(next_hop)} is behind the same NAT "
                f"(public address {address_text(nbma)})",
            )
            return True
        holding = cie.holding_time or cfg.holding_time
        flags = EntryFlag.AUTHORITATIVE if pkt.flags & ResolutionFlag.A else EntryFlag(0)
        if nbma != cie.nbma and cie.nbma:
            flags |= EntryFlag.NAT
        incomplete = core.cache.host(p.target)
        if incomplete is not None and incomplete.type in (EntryType.INCOMPLETE, EntryType.NEGATIVE):
            core.remove(incomplete)
        hop = CacheEntry(
            next_hop,
            EntryType.CACHED,
            now,
            nbma=nbma,
            expires=now + holding,
            flags=flags,
            holding_time=holding,
            mtu=cie.mtu,
            claimed_nbma=cie.nbma or None,
        )
        existing = core.cache.host(next_hop)
        if existing is None or existing.type in (
            EntryType.CACHED,
            EntryType.INCOMPLETE,
            EntryType.NEGATIVE,
        ):
            core.install(hop)
            self._schedule_refresh(hop, now)
        shortcut = plen != host or p.target != next_hop
        if shortcut and cfg.shortcut:
            # Phase 3: a route for the responder's prefix via its tunnel
            # address (Cisco "rib nho"; nhrpd shortcut).
            route = CacheEntry(
                p.target,
                EntryType.CACHED,
                now,
                nbma=nbma,
                prefix_length=plen,
                expires=now + holding,
                flags=flags | EntryFlag.SHORTCUT,
                next_hop=next_hop,
                holding_time=holding,
                mtu=cie.mtu,
            )
            route.protocol = route.prefix.network_address
            old = core.cache.lookup(p.target)
            if old is not None and old is not route and old.flags & EntryFlag.SHORTCUT:
                route.last_used = old.last_used
            core.install(route)
            self._schedule_refresh(route, now)
            core.stats["shortcuts.installed"] += 1
            said = shortcut_event(ShortcutAdded(route.prefix, next_hop, nbma))
            core.event(said.kind, said.message, **said.details)
        else:
            core.stats["resolution.bound"] += 1
            core.event(
                EventKind.RESOLVED,
                f"{address_text(next_hop)} is at {address_text(nbma)}",
                protocol=address_text(next_hop),
                nbma=address_text(nbma),
            )
        return True

    def _schedule_refresh(self, entry: CacheEntry, now: float) -> None:
        # nhrpd: at 2/3 of the holding time, re-resolve if in use, else let
        # the remaining third run out.
        when = now + entry.holding_time * 2 / 3
        self.core.schedule(when, RefreshTimer(entry.protocol, entry.prefix_length, entry.created))

    def on_refresh(self, protocol: Address, prefix_length: int, created: float, now: float) -> None:
        core = self.core
        entry = (
            core.cache.host(protocol)
            if prefix_length == host_length(protocol)
            else core.cache.lookup(protocol)
        )
        if entry is None or entry.created != created or entry.type != EntryType.CACHED:
            return
        if entry.last_used is not None and entry.last_used >= entry.refreshed:
            entry.refreshed = now
            entry.flags &= ~EntryFlag.USED
            core.stats["resolution.refreshes"] += 1
            self.resolve(protocol, now, "refresh (in use)", refresh=True)

    # ------------------------------------------------------------ phase 3

    def on_traffic_indication(self, pkt: NhrpPacket, now: float) -> None:
        core = self.core
        if not core.config.shortcut:
            core.stats["redirect.ignored"] += 1
            return
        try:
            header, _ = decode_ip(pkt.contents)
        except DecodeError as exc:
            core.stats["rx.bad_traffic_indication"] += 1
            core.event(EventKind.MALFORMED, f"Traffic Indication with an unreadable packet: {exc}")
            return
        core.stats["redirect.received"] += 1
        self.resolve(header.dst, now, f"redirect from {address_text(pkt.src_proto)}")

    def binding_used(self, addr: Address, now: float) -> None:
        entry = self.core.cache.lookup(addr)
        if entry is not None:
            entry.last_used = now
            entry.flags |= EntryFlag.USED
