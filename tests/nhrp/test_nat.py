"""NAT on the engine (sans-IO): NATed requesters get their answers through the
NHS, and a NAT that rewrites in unexpected ways is reported once, counted,
and never corrupts another spoke's binding (docs/NAT.md)."""

from __future__ import annotations

from ipaddress import IPv4Address

from dmvpn.nhrp import Engine, EngineConfig, NhsConfig, SendPacket, StaticRouting
from dmvpn.nhrp.outputs import Event, EventKind
from dmvpn.wire import (
    Cie,
    EndExtension,
    ForwardTransitNhsExtension,
    NatAddressExtension,
    NhrpPacket,
    PacketType,
    RegistrationFlag,
    ResolutionFlag,
    decode_nhrp,
)

A = IPv4Address
HUB_NBMA = A("192.0.2.1")
HUB = A("10.0.0.1")


def _hub() -> Engine:
    hub = Engine(EngineConfig(protocol_address=HUB, nbma_address=HUB_NBMA, server=True))
    hub.start(0.0)
    hub.pop_outputs()
    return hub


def _register(hub: Engine, proto: str, inside: str, public: str, now: float, rid: int) -> None:
    """A registration from `inside`, arriving from `public` (what the NAT made of it)."""
    reg = NhrpPacket(
        type=PacketType.REGISTRATION_REQUEST,
        flags=RegistrationFlag.NAT,
        src_nbma=A(inside),
        src_proto=A(proto),
        dst_proto=HUB,
        request_id=rid,
        cies=(Cie(prefix_length=32, holding_time=60),),
        extensions=(
            NatAddressExtension(cies=(Cie(prefix_length=32, nbma=HUB_NBMA, protocol=HUB),)),
            EndExtension(),
        ),
    )
    hub.receive(reg.encode(), A(public), now)


def _events(engine: Engine, kind: EventKind) -> list[Event]:
    return [o for o in engine.pop_outputs() if isinstance(o, Event) and o.kind == kind]


def _binding(hub: Engine, proto: str) -> IPv4Address | None:
    for entry in hub.entries():
        if entry.protocol == A(proto):
            return entry.nbma  # type: ignore[return-value]
    return None


def test_a_nat_changing_the_public_address_every_time_is_reported_once() -> None:
    hub = _hub()
    _register(hub, "10.0.0.12", "172.31.2.12", "203.0.113.12", 0.0, 1)  # another spoke
    hub.pop_outputs()
    for n in range(1, 6):
        _register(hub, "10.0.0.11", "172.31.1.11", f"203.0.113.{100 + n}", float(n), n + 1)
        # The binding follows the packets: answers must go where they come from.
        assert _binding(hub, "10.0.0.11") == A(f"203.0.113.{100 + n}")
        events = _events(hub, EventKind.NAT_MISMATCH)
        assert len(events) == (1 if n == 2 else 0), (n, events)
        if events:
            assert events[0].details["problem"] == "public_address_changed"
            assert events[0].details["claimed"] == "172.31.1.11"
    assert hub.stats["nat.public_address_changed"] == 4
    # The other spoke's binding never moved.
    assert _binding(hub, "10.0.0.12") == A("203.0.113.12")


def test_two_inside_hosts_on_one_public_address_keep_their_own_bindings() -> None:
    hub = _hub()
    _register(hub, "10.0.0.11", "172.31.1.11", "203.0.113.1", 0.0, 1)
    _register(hub, "10.0.0.14", "172.31.1.14", "203.0.113.1", 1.0, 2)  # the same PAT
    (event,) = _events(hub, EventKind.NAT_MISMATCH)
    assert event.details["problem"] == "shared_public_address"
    assert event.details["other"] == "10.0.0.11"
    assert _binding(hub, "10.0.0.11") == A("203.0.113.1")
    assert _binding(hub, "10.0.0.14") == A("203.0.113.1")
    # Refreshes are not new sharing: counted once, reported once.
    _register(hub, "10.0.0.14", "172.31.1.14", "203.0.113.1", 2.0, 3)
    assert hub.stats["nat.shared_public_address"] == 1
    assert not _events(hub, EventKind.NAT_MISMATCH)
    # A spoke that is not behind NAT is never flagged for sharing.
    _register(hub, "10.0.0.15", "203.0.113.15", "203.0.113.15", 3.0, 4)
    assert not _events(hub, EventKind.NAT_MISMATCH)


def _spoke(shortcut: bool = True) -> Engine:
    spoke = Engine(
        EngineConfig(
            protocol_address=A("10.0.0.11"),
            nbma_address=A("198.51.100.11"),
            nhs=(NhsConfig(HUB, HUB_NBMA),),
            shortcut=shortcut,
        )
    )
    spoke.start(0.0)
    # Registered with a real hub engine, so that resolution may start.
    hub = _hub()
    for out in spoke.pop_outputs():
        if isinstance(out, SendPacket):
            hub.receive(out.data, A("198.51.100.11"), 0.0)
    for out in hub.pop_outputs():
        if isinstance(out, SendPacket):
            spoke.receive(out.data, HUB_NBMA, 0.0)
    assert spoke.registered
    return spoke


def _pending_request(spoke: Engine, target: str) -> NhrpPacket:
    spoke.pop_outputs()
    spoke.next_hop_unbound(A(target), 1.0)
    (send,) = [o for o in spoke.pop_outputs() if isinstance(o, SendPacket)]
    return decode_nhrp(send.data)


def test_an_answer_claiming_another_address_than_it_came_from_binds_the_observed_one() -> None:
    spoke = _spoke()
    request = _pending_request(spoke, "10.0.0.12")
    # Straight from the responder at 198.51.100.12, but its NAT extension
    # claims it is at 198.51.100.66 (another spoke's address, say).
    reply = request.evolve(
        type=PacketType.RESOLUTION_REPLY,
        flags=request.flags | ResolutionFlag.A,
        cies=(Cie(prefix_length=32, nbma=A("172.31.2.12"), protocol=A("10.0.0.12")),),
        extensions=(
            NatAddressExtension(
                cies=(Cie(prefix_length=32, nbma=A("198.51.100.66"), protocol=A("10.0.0.12")),)
            ),
            EndExtension(),
        ),
    )
    for n in range(3):
        spoke.receive(reply.encode(), A("198.51.100.12"), 2.0 + n)
    assert _binding(spoke, "10.0.0.12") == A("198.51.100.12")
    assert spoke.stats["nat.extension_mismatch"] == 1  # later copies: no pending request
    events = _events(spoke, EventKind.NAT_MISMATCH)
    assert [e.details["problem"] for e in events] == ["extension_mismatch"]
    assert _binding(spoke, "10.0.0.66") is None


def test_the_owner_answers_a_natted_requester_through_its_nhs() -> None:
    routing = StaticRouting()
    routing.add_local("192.168.2.0/24")
    owner = Engine(
        EngineConfig(
            protocol_address=A("10.0.0.12"),
            nbma_address=A("198.51.100.12"),
            nhs=(NhsConfig(HUB, HUB_NBMA),),
        ),
        routing,
    )
    owner.start(0.0)
    owner.pop_outputs()
    hub_cie = Cie(prefix_length=32, nbma=HUB_NBMA, protocol=HUB)

    def request(nat: tuple[Cie, ...]) -> NhrpPacket:
        return NhrpPacket(
            type=PacketType.RESOLUTION_REQUEST,
            flags=ResolutionFlag.Q | ResolutionFlag.NAT,
            src_nbma=A("172.31.1.11"),  # the requester's inside address
            src_proto=A("10.0.0.11"),
            dst_proto=A("192.168.2.10"),
            request_id=7,
            cies=(Cie(prefix_length=32),),
            extensions=(
                ForwardTransitNhsExtension(cies=(hub_cie,)),
                NatAddressExtension(cies=nat),
                EndExtension(),
            ),
        )

    # Forwarded by the hub with the requester's post-NAT address.
    natted = Cie(prefix_length=32, nbma=A("203.0.113.1"), protocol=A("10.0.0.11"))
    owner.receive(request((natted,)).encode(), HUB_NBMA, 1.0)
    (send,) = [o for o in owner.pop_outputs() if isinstance(o, SendPacket)]
    # Its NAT would drop our GRE until it has sent to us: back through the hub.
    assert send.nbma == HUB_NBMA and send.packet.type == PacketType.RESOLUTION_REPLY
    assert owner.stats["resolution.reply_via_nhs_nat"] == 1
    # Its binding is still its post-NAT address (where its data comes from).
    assert _binding(owner, "10.0.0.11") == A("203.0.113.1")
    # Not behind NAT: answered directly, as before.
    owner.receive(request(()).encode(), HUB_NBMA, 2.0)
    (send,) = [o for o in owner.pop_outputs() if isinstance(o, SendPacket)]
    assert send.nbma == A("172.31.1.11")


def test_a_new_nbma_address_registers_anew_and_purges_direct_peers() -> None:
    from dmvpn.wire import PurgeFlag

    spoke = _spoke()
    request = _pending_request(spoke, "10.0.0.12")
    reply = request.evolve(
        type=PacketType.RESOLUTION_REPLY,
        flags=request.flags | ResolutionFlag.A,
        cies=(Cie(prefix_length=32, nbma=A("198.51.100.12"), protocol=A("10.0.0.12")),),
    )
    spoke.receive(reply.encode(), A("198.51.100.12"), 2.0)
    spoke.pop_outputs()
    spoke.set_nbma(A("198.51.100.111"), 3.0)
    sent = [decode_nhrp(o.data) for o in spoke.pop_outputs() if isinstance(o, SendPacket)]
    kinds = {(p.type, p.src_nbma) for p in sent}
    # Registered anew with the NHS, from the new address, at once.
    assert (PacketType.REGISTRATION_REQUEST, A("198.51.100.111")) in kinds
    # The direct peer is told to forget what it learnt about us (zero-CIE purge, no reply).
    (purge,) = [p for p in sent if p.type == PacketType.PURGE_REQUEST]
    assert purge.cies == () and purge.flags & PurgeFlag.N
    assert spoke.stats["purge.nbma_moved_sent"] == 1


def test_a_shortcut_in_use_purged_by_its_owner_is_resolved_again_at_once() -> None:
    from dmvpn.wire import PurgeFlag

    spoke = _spoke()
    request = _pending_request(spoke, "192.168.2.10")
    reply = request.evolve(
        type=PacketType.RESOLUTION_REPLY,
        flags=request.flags | ResolutionFlag.A,
        cies=(Cie(prefix_length=24, nbma=A("198.51.100.12"), protocol=A("10.0.0.12")),),
    )
    spoke.receive(reply.encode(), A("198.51.100.12"), 2.0)
    spoke.binding_used(A("192.168.2.10"), 2.5)
    spoke.pop_outputs()
    # The owner moved: its zero-CIE purge, from its new address.
    purge = NhrpPacket(
        type=PacketType.PURGE_REQUEST,
        flags=PurgeFlag.N,
        src_nbma=A("198.51.100.112"),
        src_proto=A("10.0.0.12"),
        dst_proto=A("10.0.0.11"),
        request_id=9,
    )
    spoke.receive(purge.encode(), A("198.51.100.112"), 3.0)
    sent = [decode_nhrp(o.data) for o in spoke.pop_outputs() if isinstance(o, SendPacket)]
    again = [p for p in sent if p.type == PacketType.RESOLUTION_REQUEST]
    assert [(p.dst_proto, p.request_id != request.request_id) for p in again] == [
        (A("192.168.2.0"), True)
    ]
    assert spoke.shortcuts() == []  # the old one is gone; data goes via the hub meanwhile


def _natted_spoke() -> Engine:
    """spoke 10.0.0.11 at inside 172.31.1.11, registered through a PAT whose
    public address is 203.0.113.1 (the hub's NAT extension tells it so)."""
    spoke = Engine(
        EngineConfig(
            protocol_address=A("10.0.0.11"),
            nbma_address=A("172.31.1.11"),
            nhs=(NhsConfig(HUB, HUB_NBMA),),
        )
    )
    spoke.start(0.0)
    hub = _hub()
    for out in spoke.pop_outputs():
        if isinstance(out, SendPacket):
            hub.receive(out.data, A("203.0.113.1"), 0.0)
    for out in hub.pop_outputs():
        if isinstance(out, SendPacket):
            spoke.receive(out.data, HUB_NBMA, 0.0)
    assert spoke.registered
    assert spoke.public_nbma == A("203.0.113.1")
    return spoke


def _resolution_failures(spoke: Engine) -> list[Event]:
    return _events(spoke, EventKind.RESOLUTION_FAILED)


def test_an_answer_naming_our_own_public_address_keeps_the_traffic_on_the_hub() -> None:
    spoke = _natted_spoke()
    # Phase 2: the hub answers from its binding of spoke 10.0.0.14, which
    # registered through the same PAT.
    request = _pending_request(spoke, "10.0.0.14")
    reply = request.evolve(
        type=PacketType.RESOLUTION_REPLY,
        flags=request.flags | ResolutionFlag.A,
        cies=(Cie(prefix_length=32, nbma=A("203.0.113.1"), protocol=A("10.0.0.14")),),
    )
    spoke.receive(reply.encode(), HUB_NBMA, 2.0)
    assert _binding(spoke, "10.0.0.14") is None
    assert spoke.stats["resolution.same_public_address"] == 1
    (event,) = _resolution_failures(spoke)
    assert "same NAT" in event.message
    # Phase 3: the owner's answer, through the hub, names its inside address
    # in the CIE and the shared public one in its NAT extension.
    request = _pending_request(spoke, "192.168.4.10")
    reply = request.evolve(
        type=PacketType.RESOLUTION_REPLY,
        flags=request.flags | ResolutionFlag.A,
        cies=(Cie(prefix_length=24, nbma=A("172.31.1.14"), protocol=A("10.0.0.14")),),
        extensions=(
            NatAddressExtension(
                cies=(Cie(prefix_length=32, nbma=A("203.0.113.1"), protocol=A("10.0.0.14")),)
            ),
            EndExtension(),
        ),
    )
    spoke.receive(reply.encode(), HUB_NBMA, 3.0)
    assert _binding(spoke, "10.0.0.14") is None
    assert spoke.stats["resolution.same_public_address"] == 2
    assert spoke.stats.get("shortcuts.installed", 0) == 0
    # A peer behind another public address is bound as before.
    request = _pending_request(spoke, "10.0.0.15")
    reply = request.evolve(
        type=PacketType.RESOLUTION_REPLY,
        flags=request.flags | ResolutionFlag.A,
        cies=(Cie(prefix_length=32, nbma=A("203.0.113.2"), protocol=A("10.0.0.15")),),
    )
    spoke.receive(reply.encode(), HUB_NBMA, 4.0)
    assert _binding(spoke, "10.0.0.15") == A("203.0.113.2")
    assert spoke.stats["resolution.same_public_address"] == 2


def test_a_spoke_not_behind_nat_never_refuses_an_answer_for_its_address() -> None:
    spoke = _spoke()
    assert spoke.public_nbma is None
    request = _pending_request(spoke, "10.0.0.12")
    reply = request.evolve(
        type=PacketType.RESOLUTION_REPLY,
        flags=request.flags | ResolutionFlag.A,
        cies=(Cie(prefix_length=32, nbma=A("198.51.100.12"), protocol=A("10.0.0.12")),),
    )
    spoke.receive(reply.encode(), HUB_NBMA, 2.0)
    assert _binding(spoke, "10.0.0.12") == A("198.51.100.12")
    assert spoke.stats.get("resolution.same_public_address", 0) == 0


def test_shared_public_address_is_found_among_many_spokes_behind_their_own_nat() -> None:
    # Each spoke behind a NAT of its own: nothing shared, nothing reported
    # (the hub looks only where a binding to that public address exists).
    hub = _hub()
    for n in range(1, 41):
        _register(hub, f"10.0.1.{n}", f"172.31.0.{n}", f"203.0.113.{n}", float(n), n)
    assert hub.stats.get("nat.shared_public_address", 0) == 0
    assert _events(hub, EventKind.NAT_MISMATCH) == []
    # A newcomer behind the PAT of the 30th: found, whatever its place.
    _register(hub, "10.0.2.1", "172.31.9.1", "203.0.113.30", 50.0, 100)
    (event,) = _events(hub, EventKind.NAT_MISMATCH)
    assert event.details["problem"] == "shared_public_address"
    assert event.details["other"] == "10.0.1.30"
    assert hub.stats["nat.shared_public_address"] == 1
    # Once the 30th moves elsewhere, the newcomer is still there: a third
    # one at that address is counted (the address was reported already).
    _register(hub, "10.0.1.30", "172.31.0.30", "203.0.113.130", 51.0, 101)
    hub.pop_outputs()
    _register(hub, "10.0.2.2", "172.31.9.2", "203.0.113.30", 52.0, 102)
    assert hub.stats["nat.shared_public_address"] == 2
    assert _binding(hub, "10.0.2.2") == A("203.0.113.30")
    # Alone at a public address the 31st left: nothing shared.
    _register(hub, "10.0.1.31", "172.31.0.31", "203.0.113.131", 53.0, 103)
    _register(hub, "10.0.2.3", "172.31.9.3", "203.0.113.31", 54.0, 104)
    assert hub.stats["nat.shared_public_address"] == 2
