"""Purges (RFC 2332 5.2.5) and the withdrawal of entries, in one place.

- :meth:`Purges.deregister`: we withdraw our registration from an NHS
  (engine stop, or the NHS going on standby).
- :meth:`Purges.drop`: an entry that was not configured leaves the cache
  (expiry, a Purge Request, ``clear nhrp``). Its bindings and routes are
  withdrawn; a registration's departure is counted and reported, and the
  requesters we handed its binding to are purged.
- :meth:`Purges.void_handed_out`: those purges alone, for a registration
  that moved to another NBMA address.
- :meth:`Purges.on_request`: a Purge Request arrives: drop what it names,
  answer unless N is set.
"""

from __future__ import annotations

from typing import Literal

from dmvpn.wire import Address, Cie, NhrpPacket, PacketType, PurgeFlag, address_text

from .cache import CacheEntry, EntryType, host_length
from .config import NhsConfig
from .core import Core
from .outputs import EventKind
from .packets import originate, reply_extensions, request_extensions, self_cie

# Why a registration left: the last word of its registration-* event and
# of its registrations.* counter.
Gone = Literal["expired", "purged", "cleared"]

_GONE_EVENTS: dict[Gone, EventKind] = {
    "expired": EventKind.REGISTRATION_EXPIRED,
    "purged": EventKind.REGISTRATION_PURGED,
    "cleared": EventKind.REGISTRATION_CLEARED,
}


class Purges:
    def __init__(self, core: Core) -> None:
        self.core = core

    # ------------------------------------------------------------ sending

    def deregister(self, nhs: NhsConfig, request_id: int, now: float) -> None:
        """Withdraw our registration from ``nhs``: a Purge Request with the
        request ID of the registration (Cisco matches on it) and N set (no
        answer wanted), outside the max-send budget so shutdown never waits."""
        core = self.core
        cfg = core.config
        cie = Cie(
            prefix_length=host_length(cfg.protocol_address),
            mtu=cfg.mtu,
            nbma=core.nbma,
            protocol=cfg.protocol_address,
        )
        pkt = originate(
            cfg,
            core.nbma,
            PacketType.PURGE_REQUEST,
            dst_proto=nhs.protocol,
            flags=PurgeFlag.N,
            request_id=request_id,
            cies=(cie,),
            extensions=request_extensions(cfg),
        )
        core.send(nhs.nbma, pkt, now, budget=False)
        core.event(
            EventKind.DEREGISTERED,
            f"purged our registration with NHS {address_text(nhs.protocol)}",
            nhs=address_text(nhs.protocol),
            request_id=request_id,
        )

    def void_handed_out(self, entry: CacheEntry, now: float) -> None:
        """Tell everyone we gave ``entry``'s binding to that it is void."""
        if not entry.handed_out:
            return
        core = self.core
        cfg = core.config
        for nbma, proto in entry.handed_out:
            cie = Cie(prefix_length=entry.prefix_length, protocol=entry.protocol)
            pkt = originate(
                cfg,
                core.nbma,
                PacketType.PURGE_REQUEST,
                dst_proto=proto,
                request_id=core.new_request_id(),
                cies=(cie,),
                extensions=request_extensions(cfg),
            )
            core.send(nbma, pkt, now)
        entry.handed_out = None

    def moved(self, now: float) -> int:
        """Our NBMA address changed: every direct peer (a cached binding not
        through an NHS) still sends to the old one. A zero-CIE Purge Request
        (N set) makes each drop what it learnt about us by resolution
        (on_request's OpenNHRP case), so its traffic falls back to the hub,
        whose redirect brings a new resolution with the new address.
        Returns how many peers were told."""
        core = self.core
        cfg = core.config
        peers: dict[Address, Address] = {}  # NBMA -> a protocol address there
        for entry in core.cache:
            if entry.type == EntryType.CACHED and entry.nbma is not None and not entry.next_hop:
                peers.setdefault(entry.nbma, entry.protocol)
        for nbma, proto in peers.items():
            pkt = originate(
                cfg,
                core.nbma,
                PacketType.PURGE_REQUEST,
                dst_proto=proto,
                flags=PurgeFlag.N,
                request_id=core.new_request_id(),
                extensions=request_extensions(cfg),
            )
            core.send(nbma, pkt, now, budget=False)
        core.stats["purge.nbma_moved_sent"] += len(peers)
        return len(peers)

    # ------------------------------------------------------------ withdrawing

    def drop(self, entry: CacheEntry, now: float, why: Gone) -> None:
        """Remove ``entry`` from the cache (its bindings and routes are
        withdrawn); a registration (dynamic entry) is also counted as
        ``registrations.<why>``, reported, and purged where we handed it out."""
        core = self.core
        core.remove(entry)
        if entry.type != EntryType.DYNAMIC:
            return
        self.void_handed_out(entry, now)
        core.stats[f"registrations.{why}"] += 1
        core.event(
            _GONE_EVENTS[why],
            f"{address_text(entry.protocol)} ({core.describe(entry.nbma)}) {why}",
            protocol=address_text(entry.protocol),
        )

    # ------------------------------------------------------------ receiving

    def on_request(self, pkt: NhrpPacket, src_nbma: Address, now: float) -> list[CacheEntry]:
        """Drop the bindings the CIEs name, then answer unless N is set. A
        registrant may purge its own registration; a zero-CIE purge
        (OpenNHRP, sent right after it registers) drops what we learnt
        through resolution about the sender, never its registration."""
        core = self.core
        removed = 0
        dropped: list[CacheEntry] = []
        if pkt.cies:
            for cie in pkt.cies:
                target = cie.protocol or pkt.src_proto
                entry = core.cache.lookup(target)
                if entry is None:
                    continue
                if entry.type == EntryType.CACHED or (
                    entry.type == EntryType.DYNAMIC
                    and target == pkt.src_proto
                    and entry.nbma == src_nbma
                ):
                    self.drop(entry, now, "purged")
                    dropped.append(entry)
                    removed += 1
        else:
            for entry in list(core.cache):
                if entry.type == EntryType.CACHED and (
                    entry.next_hop == pkt.src_proto or entry.protocol == pkt.src_proto
                ):
                    self.drop(entry, now, "purged")
                    dropped.append(entry)
                    removed += 1
        core.stats["purge.entries_removed"] += removed
        core.event(
            EventKind.PURGED,
            f"Purge Request from {address_text(src_nbma)}: "
            f"{removed} entr{'y' if removed == 1 else 'ies'} removed",
            src=address_text(src_nbma),
            removed=removed,
        )
        self._reply(pkt, src_nbma, now)
        return dropped

    def _reply(self, pkt: NhrpPacket, src_nbma: Address, now: float) -> None:
        if pkt.flags & PurgeFlag.N:
            return
        cfg = self.core.config
        reply = pkt.evolve(
            type=PacketType.PURGE_REPLY,
            hop_count=255,
            extensions=reply_extensions(cfg, pkt, self_cie(cfg, self.core.nbma))
            if pkt.extensions
            else (),
        )
        self.core.send(src_nbma, reply, now)
