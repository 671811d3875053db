"""The NHC side: registering with NHSes (RFC 2332 5.2.3).

Each NHS has a state (:class:`NhsState`): ``probing`` (request sent, no
answer yet), ``up`` (registered), ``down`` (retransmissions exhausted or
refused; still retried with backoff), ``standby`` (a lower-priority NHS not
needed while ``max_nhs`` better ones are up), changed only by
:meth:`NhsRecord.move`, which emits the nhs-up/-down/-standby events. Lower
priority numbers are preferred, as on Cisco. The spoke registers with the
best ``max_nhs`` NHSes that are not down; when one fails the next takes its
place, and when a better one answers again the worst is deregistered: fail
over and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from dmvpn.wire import (
    Address,
    Cie,
    CieCode,
    NatAddressExtension,
    NhrpPacket,
    PacketType,
    RegistrationFlag,
    address_text,
)

from .cache import CacheEntry, EntryType, host_length
from .config import NhsConfig
from .core import Core
from .outputs import EventKind
from .packets import originate, request_cie, request_extensions
from .purge import Purges
from .timers import NhsTimer


class NhsState(StrEnum):
    """Where our registration with one NHS stands. A StrEnum: `show nhrp
    nhs` and its JSON print the value, as when states were bare strings."""

    PROBING = "probing"  # a registration sent, no answer yet
    UP = "up"  # registered; refreshed at a third of the holding time
    DOWN = "down"  # no answer, or refused; retried with backoff
    STANDBY = "standby"  # not needed while max_nhs better NHSes are up


@dataclass(frozen=True, slots=True)
class NhsStatus:
    """One NHS as `show nhrp nhs` reports it: a copy, taken when asked."""

    protocol: Address
    nbma: Address
    priority: int
    state: NhsState
    request_id: int  # of the registration in flight or last accepted
    retries: int
    up_since: float | None
    registered_until: float
    public_nbma: Address | None  # our NBMA address as this NHS saw it (NAT)
    last_error: str | None

    def view(self, now: float) -> dict[str, object]:
        """JSON-safe, keys as documented for `GET /v1/nhrp/nhs`."""
        return {
            "protocol": address_text(self.protocol),
            "nbma": address_text(self.nbma),
            "priority": self.priority,
            "state": self.state.value,
            "request_id": self.request_id,
            "up_for": None if self.up_since is None else round(now - self.up_since, 1),
            "expires_in": (
                round(self.registered_until - now, 1) if self.state is NhsState.UP else None
            ),
            "retries": self.retries,
            "public_nbma": address_text(self.public_nbma) if self.public_nbma else None,
            "last_error": self.last_error,
        }


@dataclass(slots=True)
class NhsRecord:
    """The engine's record of one NHS; its state changes only through :meth:`move`."""

    index: int
    config: NhsConfig
    state: NhsState = NhsState.STANDBY
    request_id: int = 0  # of the registration in flight or last accepted
    tries: int = 0
    next_retry: float = 0.0
    registered_until: float = 0.0
    refresh_at: float = 0.0
    up_since: float | None = None
    last_error: str | None = None
    # Our NBMA address as the NHS saw it (Cisco NAT extension in the reply).
    public_nbma: Address | None = None
    generation: int = 0  # bumps on every (re)schedule; stale timers are ignored
    error_quiet_until: float = 0.0  # no re-registration on an Error Indication before

    def move(
        self, to: NhsState, core: Core, *, reason: str | None = None, holding_time: int = 0
    ) -> None:
        """Change state, announcing the transitions operators follow:
        nhs-up, nhs-down (with its ``reason``) and nhs-standby. Two are
        silent, as they have always been: standby -> probing (a registration
        starts; `registrations.sent` counts it) and the shutdown's move to
        down, which has no reason (the engine's `stopped` event says it)."""
        if to is self.state:
            return
        self.state = to
        name = address_text(self.config.protocol)
        if to is NhsState.UP:
            core.event(
                EventKind.NHS_UP,
                f"registered with NHS {name}",
                nhs=name,
                holding_time=holding_time,
                nat=address_text(self.public_nbma) if self.public_nbma else None,
            )
        elif to is NhsState.DOWN and reason is not None:
            core.event(EventKind.NHS_DOWN, f"NHS {name} down: {reason}", nhs=name, reason=reason)
        elif to is NhsState.STANDBY:
            core.event(EventKind.NHS_STANDBY, f"NHS {name} on standby", nhs=name)

    def status(self) -> NhsStatus:
        return NhsStatus(
            self.config.protocol,
            self.config.nbma,
            self.config.priority,
            self.state,
            self.request_id,
            self.tries,
            self.up_since,
            self.registered_until,
            self.public_nbma,
            self.last_error,
        )


class NhsClient:
    def __init__(self, core: Core, purges: Purges) -> None:
        self.core = core
        self.purges = purges
        ordered = sorted(enumerate(core.config.nhs), key=lambda p: (p[1].priority, p[0]))
        self.nhs = [NhsRecord(i, cfg) for i, cfg in ordered]
        self.by_nbma = {s.config.nbma: s for s in self.nhs}
        self.running = False

    # ------------------------------------------------------------ lifecycle

    def start(self, now: float) -> None:
        self.running = True
        for s in self.nhs:
            # The NHS mapping is configuration (`ip nhrp nhs ... nbma ...`),
            # so the data plane may use it before the first registration.
            self.core.install(CacheEntry(s.config.protocol, EntryType.NHS, now, nbma=s.config.nbma))
        self._rebalance(now)

    def stop(self, now: float) -> None:
        """Deregister: a Purge Request to each NHS we are registered with,
        carrying the request ID of the registration it withdraws (Cisco
        matches on it)."""
        for s in self.nhs:
            if s.state is NhsState.UP:
                self.purges.deregister(s.config, s.request_id, now)
            s.move(NhsState.DOWN, self.core)
            s.generation += 1
        self.running = False

    def best_up(self) -> NhsRecord | None:
        for s in self.nhs:
            if s.state is NhsState.UP:
                return s
        return None

    def any_up(self) -> bool:
        return self.best_up() is not None

    # ------------------------------------------------------------ selection

    def _wanted(self) -> list[NhsRecord]:
        limit = self.core.config.max_nhs or len(self.nhs)
        return [s for s in self.nhs if s.state is not NhsState.DOWN][:limit]

    def _rebalance(self, now: float) -> None:
        if not self.running:
            return
        wanted = self._wanted()
        for s in self.nhs:
            if s in wanted and s.state is NhsState.STANDBY:
                self._register(s, now, new=True)
            elif s not in wanted and s.state in (NhsState.UP, NhsState.PROBING):
                # A better NHS is back: withdraw from this one.
                if s.state is NhsState.UP:
                    self.purges.deregister(s.config, s.request_id, now)
                s.generation += 1
                s.tries = 0
                s.move(NhsState.STANDBY, self.core)

    # ------------------------------------------------------------ registration

    def _register(self, s: NhsRecord, now: float, *, new: bool) -> None:
        core = self.core
        cfg = core.config
        if new:
            s.request_id = core.new_request_id()
            s.tries = 0
        if s.state is NhsState.STANDBY:
            s.move(NhsState.PROBING, core)
        flags = RegistrationFlag.U if cfg.registration_unique else RegistrationFlag(0)
        if cfg.nat_extension:
            flags |= RegistrationFlag.NAT
        # Newer Cisco send the host length as the prefix of a unique
        # registration (older ones and OpenNHRP 0xFF; hubs accept both).
        cie = request_cie(cfg)
        # Cisco NAT extension: a CIE for the NHS we register with.
        nat = (
            Cie(
                prefix_length=host_length(cfg.protocol_address),
                nbma=s.config.nbma,
                protocol=s.config.protocol,
            ),
        )
        pkt = originate(
            cfg,
            core.nbma,
            PacketType.REGISTRATION_REQUEST,
            dst_proto=s.config.protocol,
            flags=flags,
            request_id=s.request_id,
            cies=(cie,),
            extensions=request_extensions(cfg, nat, group=True),
        )
        core.send(s.config.nbma, pkt, now)
        core.stats["registrations.sent"] += 1
        # Retransmissions reuse the request ID (RFC 2332 5.2.3); nhrpd backs
        # off 1 s doubling to 64 s.
        wait = min(cfg.retry_initial * (2**s.tries), cfg.retry_max)
        s.tries += 1
        s.generation += 1
        s.next_retry = now + wait
        core.schedule(s.next_retry, NhsTimer(s.index, s.generation))

    def on_timer(self, index: int, generation: int, now: float) -> None:
        s = next((x for x in self.nhs if x.index == index), None)
        if s is None or s.generation != generation or not self.running:
            return
        cfg = self.core.config
        if s.state is NhsState.UP and now >= s.refresh_at and s.tries == 0:
            # Refresh at a third of the holding time (RFC 2332 5.2.3): a new
            # registration, so a new request ID.
            self._register(s, now, new=True)
            return
        if s.state is NhsState.UP and now >= s.registered_until:
            self._mark_down(s, now, "registration expired without a refresh answer")
            return
        if s.tries >= cfg.nhs_down_after and s.state is not NhsState.DOWN:
            self._mark_down(s, now, f"no answer to {s.tries} registration requests")
            self._register(s, now, new=False)
            self._rebalance(now)
            return
        # Retransmit, same request ID.
        self.core.stats["registrations.retransmitted"] += 1
        self._register(s, now, new=False)

    def unreachable(self, protocol: Address, now: float, why: str) -> bool:
        """The host's liveness check lost an NHS that answered it before
        (its tunnel address stopped answering echoes): down now, rather than
        after a third of the holding time and three retransmissions; its
        registration is retried with the backoff of a down NHS. False when
        no such NHS is up or probing (nothing changes)."""
        s = next((x for x in self.nhs if x.config.protocol == protocol), None)
        if s is None or not self.running or s.state not in (NhsState.UP, NhsState.PROBING):
            return False
        self._mark_down(s, now, why)
        # A new registration now, then retransmissions backing off from 1 s:
        # a hub that restarts is found again within seconds, a dead one
        # costs one request per doubling interval.
        self._register(s, now, new=True)
        self._rebalance(now)
        return True

    def _mark_down(self, s: NhsRecord, now: float, why: str) -> None:
        s.up_since = None
        s.last_error = why
        s.move(NhsState.DOWN, self.core, reason=why)

    # ------------------------------------------------------------ replies

    def on_registration_reply(self, pkt: NhrpPacket, now: float) -> bool:
        """Handle a reply; False when it answers nothing we sent."""
        s = next(
            (
                x
                for x in self.nhs
                # A standby NHS has no registration in flight.
                if x.request_id == pkt.request_id and x.state is not NhsState.STANDBY
            ),
            None,
        )
        if s is None or pkt.src_proto != self.core.config.protocol_address:
            return False
        codes = [c.code for c in pkt.cies] or [CieCode.SUCCESS]
        name = address_text(s.config.protocol)
        if any(code != CieCode.SUCCESS for code in codes):
            bad = next(code for code in codes if code != CieCode.SUCCESS)
            why = f"registration refused with CIE code {bad}"
            if bad == CieCode.UNIQUE_ADDRESS_REGISTERED:
                why += " (unique address already registered)"
            self._mark_down(s, now, why)
            self.core.event(
                EventKind.REGISTRATION_REFUSED, f"NHS {name}: {why}", nhs=name, code=int(bad)
            )
            # Try again later: the old binding expires on the NHS eventually
            # (nhrpd waits 60-180 s after an error).
            s.tries = self.core.config.nhs_down_after
            s.generation += 1
            s.next_retry = now + min(60.0, self.core.config.retry_max)
            self.core.schedule(s.next_retry, NhsTimer(s.index, s.generation))
            self._rebalance(now)
            return True
        holding = min((c.holding_time for c in pkt.cies), default=self.core.config.holding_time)
        holding = holding or self.core.config.holding_time
        first = s.state is not NhsState.UP
        s.tries = 0
        s.last_error = None
        s.registered_until = now + holding
        s.refresh_at = now + holding / 3
        if first:
            s.up_since = now
        for ext in pkt.extensions:
            if isinstance(ext, NatAddressExtension):
                for cie in ext.cies:
                    if cie.protocol == self.core.config.protocol_address and cie.nbma:
                        s.public_nbma = cie.nbma if cie.nbma != self.core.nbma else None
                        self.core.public_nbma = s.public_nbma
        s.generation += 1
        self.core.schedule(s.refresh_at, NhsTimer(s.index, s.generation))
        # Up only now, so that nhs-up reports the NAT address just learnt.
        s.move(NhsState.UP, self.core, holding_time=holding)
        if first:
            self.core.stats["registrations.succeeded"] += 1
            self._rebalance(now)
        return True

    def on_error(self, src_nbma: Address, now: float) -> None:
        """An NHS that answers with an Error Indication may have lost our
        registration (a restart): register again at once."""
        s = self.by_nbma.get(src_nbma)
        if s is not None and s.state is NhsState.UP and now >= s.error_quiet_until:
            # Once per retry_max: an NHS that answers every registration
            # with an Error Indication (nhrpd, on a password it cannot
            # check) must not make this a registration/error storm.
            s.error_quiet_until = now + self.core.config.retry_max
            self._register(s, now, new=True)

    def nbma_changed(self, now: float) -> None:
        """Our NBMA address changed (DHCP, failover link): register anew."""
        for s in self.nhs:
            if s.state is not NhsState.STANDBY:
                self._register(s, now, new=True)
