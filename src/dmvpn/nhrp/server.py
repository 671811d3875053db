"""The NHS side: registrations, answering and forwarding Resolution
Requests, and phase 3 redirects (Traffic Indications)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_network

from dmvpn.wire import (
    Address,
    AuthenticationExtension,
    Cie,
    CieCode,
    EndExtension,
    ErrorCode,
    Extension,
    ForwardTransitNhsExtension,
    NatAddressExtension,
    NhrpPacket,
    PacketType,
    RegistrationFlag,
    ResolutionFlag,
    ReverseTransitNhsExtension,
    address_text,
    decode_ip,
    group_of,
)
from dmvpn.wire.errors import DecodeError

from .cache import BOUND_TYPES, NO_FLAGS, CacheEntry, EntryFlag, EntryType, host_length
from .config import EngineConfig
from .core import Core
from .outputs import EventKind, PeerGroup
from .packets import (
    auth_extensions,
    forwarded_extensions,
    originate,
    reply_extensions,
    self_cie,
)
from .purge import Purges
from .ratelimit import PerKeyInterval
from .routing import Network

# Registrations may never displace configuration (nhrpd answers code 4).
_PROTECTED = frozenset({EntryType.STATIC, EntryType.LOCAL, EntryType.NHS})

# Plain ints and prebuilt flag values on the registration path (issue 20):
# an IntFlag operation costs about a microsecond.
_UNIQUE_BIT = int(RegistrationFlag.U)
_ENTRY_FLAGS = {
    (unique, natted): (EntryFlag.UNIQUE if unique else NO_FLAGS)
    | (EntryFlag.NAT if natted else NO_FLAGS)
    for unique in (False, True)
    for natted in (False, True)
}


class Server:
    def __init__(self, core: Core, purges: Purges) -> None:
        self.core = core
        self.purges = purges
        self.redirects = PerKeyInterval(core.config.redirect_interval)
        # The entry the last _register made or renewed (SUCCESS), and, after
        # on_registration_request, the one its answered request bound alone.
        self._bound: CacheEntry | None = None
        self.refreshable: CacheEntry | None = None
        # (config, our NBMA, the responder CIE made from them): _responder().
        self._responder_cie: tuple[EngineConfig, Address, Cie] | None = None

    # ------------------------------------------------------------ registration

    def on_registration_request(self, pkt: NhrpPacket, src_nbma: Address, now: float) -> None:
        core = self.core
        cfg = core.config
        if not cfg.server:
            core.stats["rx.registration_not_server"] += 1
            core.event(
                EventKind.DROPPED,
                "Registration Request received but this node is not an NHS",
                src=address_text(pkt.src_proto),
            )
            return
        claimed = pkt.src_nbma
        # NAT: the claimed NBMA differs from where the packet came from; the
        # binding uses the observed (post-NAT) address (Cisco NAT extension).
        natted = bool(claimed) and claimed != src_nbma
        unique = bool(pkt.flags & _UNIQUE_BIT)
        host = host_length(pkt.src_proto)
        group = self._group(pkt, src_nbma)
        answers: list[Cie] = []
        self._bound = None
        self.refreshable = None
        for cie in pkt.cies or (Cie(prefix_length=host, holding_time=cfg.holding_time),):
            proto = cie.protocol if cie.protocol else pkt.src_proto
            code = self._register(pkt, cie, proto, src_nbma, natted, unique, group, now)
            answers.append(cie if cie.code == code else replace(cie, code=code))
        bound = self._bound if len(answers) == 1 else None
        nat_cies: tuple[Cie, ...] | None = None
        request_nat = pkt.extension(NatAddressExtension)
        if isinstance(request_nat, NatAddressExtension):
            nat_cies = request_nat.cies
            if natted:
                nat_cies = (
                    *nat_cies,
                    Cie(prefix_length=host, mtu=cfg.mtu, nbma=src_nbma, protocol=pkt.src_proto),
                )
        reply = pkt.evolve(
            type=PacketType.REGISTRATION_REPLY,
            hop_count=255,
            cies=tuple(answers),
            extensions=reply_extensions(cfg, pkt, self._responder(), nat_cies=nat_cies),
        )
        self._bound = None
        if core.send(src_nbma, reply, now) and len(answers) == 1 and bound is not None:
            # One binding made or renewed, answered: the engine may answer
            # the same request again from these bytes (Engine._fast_refresh).
            self.refreshable = bound
        else:
            self.refreshable = None

    def _responder(self) -> Cie:
        """Our CIE as a registration reply's responder (``self_cie``), made
        once per config and NBMA address: the same value every time."""
        core = self.core
        made = self._responder_cie
        if made is None or made[0] is not core.config or made[1] is not core.nbma:
            made = (core.config, core.nbma, self_cie(core.config, core.nbma))
            self._responder_cie = made
        return made[2]

    def _group(self, pkt: NhrpPacket, src_nbma: Address) -> str | None:
        """The NHRP group the registration names (Cisco per-tunnel QoS). A
        malformed one is counted and reported, and the spoke registers
        without a group (served unshaped) rather than being refused: the
        group is a QoS hint, not part of the binding."""
        try:
            return group_of(pkt.extensions)
        except DecodeError as exc:
            self.core.stats["rx.bad_group"] += 1
            self.core.event(
                EventKind.MALFORMED,
                f"registration from {address_text(src_nbma)}: {exc.reason}; served without a group",
                nbma=address_text(src_nbma),
                protocol=address_text(pkt.src_proto),
            )
            return None

    def _register(
        self,
        pkt: NhrpPacket,
        cie: Cie,
        proto: Address,
        observed: Address,
        natted: bool,
        unique: bool,
        group: str | None,
        now: float,
    ) -> int:
        core = self.core
        cfg = core.config
        host = host_length(proto) if proto else 32
        # A unique registration carries prefix 0xFF (older Cisco, OpenNHRP) or
        # the host length (newer Cisco); nhrpd also sends 0. Accept all three.
        if cie.prefix_length not in (0, 0xFF, host):
            core.stats["registrations.refused"] += 1
            return CieCode.ADMINISTRATIVELY_PROHIBITED
        if not core.may_claim(observed, proto):
            # Identity binding: a member of the cloud must not take over
            # another's address with its own valid credentials.
            core.stats["registrations.refused"] += 1
            core.refuse_claim("registration", proto, observed)
            return CieCode.ADMINISTRATIVELY_PROHIBITED
        existing = core.cache.host(proto)
        if existing is not None and existing.type in _PROTECTED:
            core.stats["registrations.refused"] += 1
            return CieCode.ADMINISTRATIVELY_PROHIBITED
        if (
            existing is not None
            and existing.type == EntryType.DYNAMIC
            and existing.nbma != observed
            and existing.flags & EntryFlag.UNIQUE
            and (existing.expires or 0) > now
        ):
            # RFC 2332 5.2.4: a unique binding stands until it expires.
            core.stats["registrations.refused_unique"] += 1
            core.event(
                EventKind.REGISTRATION_REFUSED,
                f"{address_text(proto)} is uniquely registered from "
                f"{core.describe(existing.nbma)}; refused {address_text(observed)} (code 14)",
                protocol=address_text(proto),
                nbma=address_text(observed),
                code=14,
            )
            return CieCode.UNIQUE_ADDRESS_REGISTERED
        if natted and existing is not None and existing.nbma != observed:
            self._check_nat_move(existing, proto, observed, pkt.src_nbma)
        if natted and (existing is None or existing.nbma != observed):
            self._check_shared_public(proto, observed, pkt.src_nbma)
        holding = cie.holding_time or cfg.holding_time
        flags = _ENTRY_FLAGS[unique, natted]
        entry = CacheEntry(
            proto,
            EntryType.DYNAMIC,
            now,
            nbma=observed,
            claimed_nbma=pkt.src_nbma,
            expires=now + holding,
            flags=flags,
            request_id=pkt.request_id,
            holding_time=holding,
            mtu=cie.mtu,
        )
        entry.group = group
        if existing is not None and existing.type == EntryType.DYNAMIC:
            entry.created = existing.created if existing.nbma == observed else now
        old = core.install(entry)
        self._bound = entry
        if old is None or old.nbma != observed or old.group != group:
            core.outputs.append(PeerGroup(proto, observed, group))
        if old is not None and old.nbma != observed:
            self.purges.void_handed_out(old, now)
            core.event(
                EventKind.REGISTRATION_REPLACED,
                f"{address_text(proto)} moved from {core.describe(old.nbma)} to "
                f"{address_text(observed)}",
                protocol=address_text(proto),
            )
        if old is None or old.nbma != observed:
            core.stats["registrations.accepted"] += 1
            if not core.events_enabled:  # the hot path of a big hub: skip the formatting
                core.stats["event.registered"] += 1
                return CieCode.SUCCESS
            core.event(
                EventKind.REGISTERED,
                f"{address_text(proto)} registered from "
                f"{address_text(observed)}" + (" (NAT)" if natted else ""),
                protocol=address_text(proto),
                nbma=address_text(observed),
                claimed_nbma=address_text(pkt.src_nbma),
                unique=unique,
                holding_time=holding,
                group=group,
            )
        else:
            core.stats["registrations.refreshed"] += 1
        return CieCode.SUCCESS

    def _check_nat_move(
        self, existing: CacheEntry, proto: Address, observed: Address, claimed: Address
    ) -> None:
        """The same inside host, seen from another post-NAT address: a NAT
        whose public address changed (renewed, or one that rewrites every
        flow differently). The binding follows the packets (they are where
        answers must go), and the flapping is reported once."""
        core = self.core
        if existing.type != EntryType.DYNAMIC or existing.claimed_nbma != claimed:
            return
        core.report_once(
            "public_address_changed",
            proto,
            EventKind.NAT_MISMATCH,
            f"{address_text(proto)} (inside {address_text(claimed)}) now comes from "
            f"{address_text(observed)}, was {core.describe(existing.nbma)}: its NAT "
            "changed its public address",
            protocol=address_text(proto),
            claimed=address_text(claimed),
            observed=address_text(observed),
        )

    def _check_shared_public(self, proto: Address, observed: Address, claimed: Address) -> None:
        """Another inside host already registered from this post-NAT address:
        two spokes behind one PAT. GRE through a PAT reaches only one of
        them (docs/NAT.md); their bindings are left as they are (neither
        corrupts the other's), and the sharing is reported once."""
        core = self.core
        # Only a bound host entry (or a prefix entry) at ``observed`` can be
        # the other spoke: without one (every spoke behind a NAT of its own)
        # the host entries need no scan, which cost a NAT'ed registration
        # O(cache) (2 ms at 20,000 spokes). The order searched is the same.
        others = core.cache if core.peer_bound(observed) else core.cache.prefixes.values()
        for other in others:
            if (
                other.type == EntryType.DYNAMIC
                and other.nbma == observed
                and other.protocol != proto
                and other.claimed_nbma not in (None, claimed)
            ):
                core.report_once(
                    "shared_public_address",
                    observed,
                    EventKind.NAT_MISMATCH,
                    f"{address_text(proto)} registers from {address_text(observed)}, the "
                    f"post-NAT address of {address_text(other.protocol)} too: two spokes "
                    "behind one PAT, which plain GRE cannot tell apart",
                    protocol=address_text(proto),
                    claimed=address_text(claimed),
                    observed=address_text(observed),
                    other=address_text(other.protocol),
                )
                return

    # ------------------------------------------------------------ resolution

    def on_resolution_request(self, pkt: NhrpPacket, src_nbma: Address, now: float) -> None:
        core = self.core
        cfg = core.config
        target = pkt.dst_proto
        if self._seen_myself(pkt):
            # RFC 2332 5.3.2 + error code 3 (nhrpd drops silently, OpenNHRP
            # sends code 2): our own CIE is already in the transit record.
            core.stats["rx.loop_detected"] += 1
            self.send_error(pkt, src_nbma, ErrorCode.LOOP_DETECTED, 0, now)
            return
        prefix = self._owned_prefix(target)
        if prefix is not None:
            self.answer_as_owner(pkt, src_nbma, prefix, now)
            return
        if not cfg.server:
            # Only an NHS answers or forwards for others.
            core.stats["rx.resolution_not_owner"] += 1
            self._negative_reply(pkt, src_nbma, now)
            return
        entry = core.cache.host(target)
        if entry is not None and entry.type in BOUND_TYPES and not cfg.redirect:
            # Phase 2: the NHS answers from its registrations.
            self._answer_from_cache(pkt, src_nbma, entry, now)
            return
        next_hop = target if entry is not None else core.routing.next_hop(target)
        hop_entry = core.cache.host(next_hop) if next_hop is not None else None
        if (
            hop_entry is not None
            and hop_entry.type in BOUND_TYPES
            and hop_entry.nbma is not None
            and hop_entry.nbma != src_nbma
        ):
            # Phase 3 (or a hierarchical NHS): hand it to the owner, who
            # answers the requester directly.
            self._forward(pkt, src_nbma, hop_entry.nbma, now)
            return
        core.stats["resolution.no_binding"] += 1
        self._negative_reply(pkt, src_nbma, now)

    def _owned_prefix(self, target: Address) -> Network | None:
        if target == self.core.config.protocol_address:
            return ip_network(f"{address_text(target)}/{host_length(target)}")
        return self.core.routing.local_prefix(target)

    def _seen_myself(self, pkt: NhrpPacket) -> bool:
        me = self.core.config.protocol_address
        for ext in pkt.extensions:
            if isinstance(ext, ForwardTransitNhsExtension):
                return any(c.protocol == me for c in ext.cies)
        return False

    def _requester_nbma(self, pkt: NhrpPacket, src_nbma: Address) -> Address:
        """Where the requester really is: a NAT extension CIE for it (added by
        its NHS), else the claimed address, else the packet's source."""
        nat = pkt.extension(NatAddressExtension)
        if isinstance(nat, NatAddressExtension):
            for cie in reversed(nat.cies):
                if cie.protocol == pkt.src_proto and cie.nbma:
                    return cie.nbma
        forwarded = any(
            isinstance(e, ForwardTransitNhsExtension) and e.cies for e in pkt.extensions
        )
        if not forwarded:
            return src_nbma
        return pkt.src_nbma or src_nbma

    def answer_as_owner(
        self, pkt: NhrpPacket, src_nbma: Address, prefix: Network, now: float
    ) -> None:
        """We own the target: answer the requester directly with our prefix
        (phase 3 responder; nhrpd: own NBMA and tunnel address in the CIE)."""
        core = self.core
        cfg = core.config
        me = self_cie(cfg, core.nbma, prefix_length=prefix.prefixlen)
        flags = (pkt.flags & (ResolutionFlag.Q | ResolutionFlag.S | ResolutionFlag.NAT)) | (
            ResolutionFlag.A | ResolutionFlag.D
        )
        # Behind NAT, say where we really are (nhrpd fills the NAT extension
        # of its answer the same way); the requester prefers it.
        nat_cies = None
        if core.public_nbma is not None:
            nat_cies = (
                Cie(
                    prefix_length=host_length(cfg.protocol_address),
                    mtu=cfg.mtu,
                    nbma=core.public_nbma,
                    protocol=cfg.protocol_address,
                ),
            )
        requester = self._reply(pkt, src_nbma, (me,), flags, now, nat_cies)
        core.stats["resolution.answered_as_owner"] += 1
        core.event(
            EventKind.RESOLUTION_ANSWERED,
            f"answered {address_text(pkt.src_proto)} for "
            f"{address_text(pkt.dst_proto)} with {prefix}",
            requester=address_text(pkt.src_proto),
            prefix=str(prefix),
        )
        # The requester will send to us directly: keep its binding, so our
        # answers go straight back over the same tunnel (seed notes).
        existing = core.cache.host(pkt.src_proto)
        if pkt.src_proto and (existing is None or existing.type not in BOUND_TYPES):
            core.install(
                CacheEntry(
                    pkt.src_proto,
                    EntryType.CACHED,
                    now,
                    nbma=requester,
                    expires=now + cfg.holding_time,
                    holding_time=cfg.holding_time,
                )
            )

    def _answer_from_cache(
        self, pkt: NhrpPacket, src_nbma: Address, entry: CacheEntry, now: float
    ) -> None:
        core = self.core
        cfg = core.config
        remaining = int((entry.expires - now) if entry.expires is not None else cfg.holding_time)
        cie = Cie(
            prefix_length=entry.prefix_length,
            mtu=entry.mtu or cfg.mtu,
            holding_time=max(1, min(remaining, 0xFFFF)),
            nbma=entry.nbma or b"",
            protocol=entry.protocol,
        )
        flags = pkt.flags | ResolutionFlag.A
        requester = self._reply(pkt, src_nbma, (cie,), flags, now)
        if entry.handed_out is None:
            entry.handed_out = set()
        entry.handed_out.add((requester, pkt.src_proto))
        core.stats["resolution.answered_from_cache"] += 1

    def _negative_reply(self, pkt: NhrpPacket, src_nbma: Address, now: float) -> None:
        cie = Cie(
            code=CieCode.NO_BINDING,
            prefix_length=host_length(pkt.dst_proto),
            protocol=pkt.dst_proto,
        )
        self._reply(pkt, src_nbma, (cie,), pkt.flags, now)

    def _reply(
        self,
        pkt: NhrpPacket,
        src_nbma: Address,
        cies: tuple[Cie, ...],
        flags: int,
        now: float,
        nat_cies: tuple[Cie, ...] | None = None,
    ) -> Address:
        """Answer a Resolution Request (hop count 255, our responder CIE,
        extensions answered); returns where the answer went."""
        cfg = self.core.config
        reply = pkt.evolve(
            type=PacketType.RESOLUTION_REPLY,
            hop_count=255,
            flags=flags,
            cies=cies,
            extensions=reply_extensions(cfg, pkt, self_cie(cfg, self.core.nbma), nat_cies=nat_cies),
        )
        requester = self._requester_nbma(pkt, src_nbma)
        to = requester
        if requester != src_nbma and self._natted_requester(pkt):
            # The requester is behind NAT (its NHS added the NAT extension
            # CIE for it): a NAT drops our GRE to its public address until it
            # has sent to us, so the answer goes back the way the request
            # came, through the NHS it is registered with, which passes it on
            # (RFC 2332 5.3.3; nhrpd routes every answer that way). Its data
            # then comes straight to us and opens the NAT's mapping.
            to = src_nbma
            self.core.stats["resolution.reply_via_nhs_nat"] += 1
        self.core.send(to, reply, now)
        return requester

    @staticmethod
    def _natted_requester(pkt: NhrpPacket) -> bool:
        nat = pkt.extension(NatAddressExtension)
        if not isinstance(nat, NatAddressExtension):
            return False
        return any(
            c.protocol == pkt.src_proto and c.nbma and c.nbma != pkt.src_nbma for c in nat.cies
        )

    def _forward(self, pkt: NhrpPacket, src_nbma: Address, to: Address, now: float) -> None:
        core = self.core
        cfg = core.config
        if pkt.hop_count <= 1:
            core.stats["rx.hop_count_exceeded"] += 1
            self.send_error(pkt, src_nbma, ErrorCode.HOP_COUNT_EXCEEDED, 9, now)
            return
        extra_nat = None
        reg = core.cache.host(pkt.src_proto)
        if reg is not None and reg.flags & EntryFlag.NAT and reg.nbma is not None:
            # Tell the responder where the NATed requester really is.
            extra_nat = Cie(
                prefix_length=host_length(pkt.src_proto), nbma=reg.nbma, protocol=pkt.src_proto
            )
        fwd = pkt.evolve(
            hop_count=pkt.hop_count - 1,
            extensions=forwarded_extensions(cfg, pkt, self_cie(cfg, core.nbma), extra_nat),
        )
        core.send(to, fwd, now)
        core.stats["resolution.forwarded"] += 1
        core.event(
            EventKind.RESOLUTION_FORWARDED,
            f"forwarded {address_text(pkt.src_proto)}'s request "
            f"for {address_text(pkt.dst_proto)} to {address_text(to)}",
            requester=address_text(pkt.src_proto),
            target=address_text(pkt.dst_proto),
            to=address_text(to),
        )

    def forward_reply(self, pkt: NhrpPacket, src_nbma: Address, now: float) -> None:
        """A Resolution Reply for a requester registered with us, in transit:
        pass it on, recorded in the Reverse Transit NHS Record (RFC 2332
        5.3.3). nhrpd sends its replies along its route to the requester,
        which on a spoke is via the NHS."""
        core = self.core
        cfg = core.config
        requester = core.cache.host(pkt.src_proto)
        if requester is None or requester.type not in BOUND_TYPES or requester.nbma is None:
            core.stats["resolution.reply_no_binding"] += 1
            return
        me = self_cie(cfg, core.nbma)
        reverse = pkt.extension(ReverseTransitNhsExtension)
        if isinstance(reverse, ReverseTransitNhsExtension) and any(
            c.protocol == cfg.protocol_address for c in reverse.cies
        ):
            core.stats["rx.loop_detected"] += 1
            return
        if pkt.hop_count <= 1 or requester.nbma == src_nbma:
            core.stats["rx.hop_count_exceeded"] += 1
            return
        exts: list[Extension] = []
        recorded = False
        for ext in pkt.extensions:
            if isinstance(ext, ReverseTransitNhsExtension):
                exts.append(
                    ReverseTransitNhsExtension(cies=(*ext.cies, me), compulsory=ext.compulsory)
                )
                recorded = True
            elif isinstance(ext, AuthenticationExtension | EndExtension):
                continue
            else:
                exts.append(ext)
        if not recorded:
            exts.append(ReverseTransitNhsExtension(cies=(me,)))
        exts.extend(auth_extensions(cfg))
        exts.append(EndExtension())
        fwd = pkt.evolve(hop_count=pkt.hop_count - 1, extensions=tuple(exts))
        core.send(requester.nbma, fwd, now)
        core.stats["resolution.reply_forwarded"] += 1
        core.event(
            EventKind.RESOLUTION_REPLY_FORWARDED,
            f"forwarded the answer for {address_text(pkt.dst_proto)} to "
            f"{address_text(pkt.src_proto)} at {address_text(requester.nbma)}",
            requester=address_text(pkt.src_proto),
            target=address_text(pkt.dst_proto),
            to=address_text(requester.nbma),
        )

    # ------------------------------------------------------------ phase 3

    def hairpin(self, packet: bytes, from_nbma: Address, now: float) -> None:
        """We forwarded ``packet`` from the peer at ``from_nbma`` back out of
        the DMVPN interface: redirect the sender (Traffic Indication)."""
        core = self.core
        cfg = core.config
        if not cfg.redirect:
            return
        try:
            header, _ = decode_ip(packet)
        except DecodeError:
            core.stats["redirect.bad_packet"] += 1
            return
        if not self.redirects.allow((from_nbma, header.dst), now):
            core.stats["redirect.rate_limited"] += 1
            return
        # Cisco includes the IP header + 8 bytes; nhrpd the whole packet.
        contents = packet[: header.header_length + 8]
        exts = auth_extensions(cfg)
        ti = originate(
            cfg,
            core.nbma,
            PacketType.TRAFFIC_INDICATION,
            # nhrpd puts the original packet's source here.
            dst_proto=header.src,
            contents=contents,
            extensions=(*exts, EndExtension()) if exts else (),
        )
        if core.send(from_nbma, ti, now):
            core.stats["redirect.sent"] += 1
            core.event(
                EventKind.REDIRECT,
                f"Traffic Indication to {address_text(from_nbma)}: "
                f"{header.src} -> {header.dst} hairpinned",
                to=address_text(from_nbma),
                src=str(header.src),
                dst=str(header.dst),
            )

    # ------------------------------------------------------------ errors

    def send_error(
        self, pkt: NhrpPacket, src_nbma: Address, code: int, offset: int, now: float
    ) -> None:
        """An Error Indication (RFC 2332 5.2.7): never in reply to an error;
        hop count 255, as Cisco drops 0 (frr issue 951)."""
        if pkt.type == PacketType.ERROR_INDICATION:
            return
        core = self.core
        cfg = core.config
        err = originate(
            cfg,
            core.nbma,
            PacketType.ERROR_INDICATION,
            dst_proto=pkt.src_proto,
            error_code=code,
            error_offset=offset,
            contents=pkt.encode(),
        )
        core.send(src_nbma, err, now)
        core.stats[f"tx.error.{code}"] += 1
