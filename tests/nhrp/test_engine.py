"""The engine alone: fed packets (real captures among them) and ``now``,
checked by what it hands back. No I/O; milliseconds."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from dmvpn.nhrp import Engine, EngineConfig, NhsConfig, SendPacket, StaticRouting
from dmvpn.nhrp.outputs import BindingAdded, BindingRemoved, Event, ProtectPeer, UnprotectPeer
from dmvpn.wire import (
    AuthenticationExtension,
    CieCode,
    EndExtension,
    ErrorCode,
    ForwardTransitNhsExtension,
    NatAddressExtension,
    NhrpPacket,
    PacketType,
    ResponderAddressExtension,
    UnknownExtension,
    decode_nhrp,
)

from ..vectors import records

A = IPv4Address


def _sent(engine: Engine) -> list[SendPacket]:
    return [o for o in engine.pop_outputs() if isinstance(o, SendPacket)]


def _cisco_hub(password: bytes | None = b"NHRPAUTH", **kw: object) -> Engine:
    # The hub of tcpdump_NHRP_registration.pcap: 155.1.0.5 at 169.254.100.5.
    cfg = EngineConfig(
        protocol_address=A("155.1.0.5"),
        nbma_address=A("169.254.100.5"),
        server=True,
        authentication=password,
        **kw,
    )  # type: ignore[arg-type]
    engine = Engine(cfg)
    engine.start(0.0)
    engine.pop_outputs()
    return engine


def _cisco_request(vectors: Path) -> bytes:
    rec = records(vectors / "tcpdump_NHRP_registration.pcap")[0]
    assert rec.nhrp_bytes is not None
    return rec.nhrp_bytes


def test_hub_accepts_a_real_cisco_registration(vectors: Path) -> None:
    hub = _cisco_hub()
    hub.receive(_cisco_request(vectors), A("169.254.100.1"), 10.0)
    outs = hub.pop_outputs()
    (send,) = [o for o in outs if isinstance(o, SendPacket)]
    assert send.nbma == A("169.254.100.1")
    reply = decode_nhrp(send.data)
    assert reply.type == PacketType.REGISTRATION_REPLY and reply.request_id == 1
    assert [c.code for c in reply.cies] == [CieCode.SUCCESS]
    resp = reply.extension(ResponderAddressExtension)
    assert isinstance(resp, ResponderAddressExtension)
    assert resp.cies[0].nbma == A("169.254.100.5") and resp.cies[0].protocol == A("155.1.0.5")
    auth = reply.extension(AuthenticationExtension)
    assert isinstance(auth, AuthenticationExtension) and auth.data == b"NHRPAUTH"
    assert isinstance(reply.extensions[-1], EndExtension)
    assert BindingAdded(A("155.1.0.1"), A("169.254.100.1"), "dynamic") in outs
    assert ProtectPeer(A("169.254.100.1")) in outs
    (entry,) = [e for e in hub.cache_view(10.0) if e["type"] == "dynamic"]
    assert entry["protocol"] == "155.1.0.1/32" and "unique" in entry["flags"]
    assert entry["expires_in"] == 7200


def test_nat_extension_answers_with_the_post_nat_address(vectors: Path) -> None:
    hub = _cisco_hub()
    hub.receive(_cisco_request(vectors), A("203.0.113.9"), 0.0)  # arrived through NAT
    (send,) = _sent(hub)
    assert send.nbma == A("203.0.113.9")
    nat = decode_nhrp(send.data).extension(NatAddressExtension)
    assert isinstance(nat, NatAddressExtension)
    assert nat.cies[-1].nbma == A("203.0.113.9") and nat.cies[-1].protocol == A("155.1.0.1")
    (entry,) = [e for e in hub.cache_view(0.0) if e["type"] == "dynamic"]
    assert "nat" in entry["flags"] and entry["claimed_nbma"] == "169.254.100.1"


def test_wrong_password_gets_error_11_at_the_extension(vectors: Path) -> None:
    hub = _cisco_hub(password=b"other")
    hub.receive(_cisco_request(vectors), A("169.254.100.1"), 0.0)
    outs = hub.pop_outputs()
    (send,) = [o for o in outs if isinstance(o, SendPacket)]
    err = decode_nhrp(send.data)
    assert err.type == PacketType.ERROR_INDICATION
    assert err.error_code == ErrorCode.AUTHENTICATION_FAILURE
    assert err.hop_count == 255  # Cisco drops hop count 0
    # The offset points at the authentication extension of the packet in error.
    assert err.contents[err.error_offset : err.error_offset + 2] == b"\x80\x07"
    assert not any(isinstance(o, BindingAdded) for o in outs)
    assert hub.stats["rx.auth_failed"] == 1
    drop = _cisco_hub(password=b"other", auth_failure="drop")
    drop.receive(_cisco_request(vectors), A("169.254.100.1"), 0.0)
    assert _sent(drop) == []


def test_unknown_compulsory_extension_gets_error_1() -> None:
    hub = _cisco_hub(password=None)
    req = NhrpPacket(
        type=PacketType.REGISTRATION_REQUEST,
        src_nbma=A("192.0.2.9"),
        src_proto=A("10.0.0.9"),
        dst_proto=A("155.1.0.5"),
        extensions=(UnknownExtension(type=0x99, compulsory=True), EndExtension()),
    )
    hub.receive(req.encode(), A("192.0.2.9"), 0.0)
    (send,) = _sent(hub)
    err = decode_nhrp(send.data)
    assert err.error_code == ErrorCode.UNRECOGNIZED_EXTENSION
    assert err.contents[err.error_offset : err.error_offset + 2] == b"\x80\x99"
    # A non-compulsory unknown extension is ignored, and returned in the reply.
    ok = replace(req, extensions=(UnknownExtension(type=0x99, data=b"x"), EndExtension()))
    hub.receive(ok.encode(), A("192.0.2.9"), 0.0)
    (send,) = _sent(hub)
    reply = decode_nhrp(send.data)
    assert reply.type == PacketType.REGISTRATION_REPLY
    assert UnknownExtension(type=0x99, data=b"x") in reply.extensions


def test_never_an_error_in_reply_to_an_error() -> None:
    hub = _cisco_hub(password=b"pw")
    err = NhrpPacket(
        type=PacketType.ERROR_INDICATION,
        src_nbma=A("192.0.2.9"),
        src_proto=A("10.0.0.9"),
        dst_proto=A("155.1.0.5"),
        error_code=7,
    )
    hub.receive(err.encode(), A("192.0.2.9"), 0.0)  # fails authentication too
    assert _sent(hub) == []


def _phase3_hub() -> tuple[Engine, StaticRouting]:
    routing = StaticRouting()
    routing.add_route("192.168.12.0/24", A("10.0.0.12"))
    cfg = EngineConfig(
        protocol_address=A("10.0.0.1"), nbma_address=A("192.0.2.1"), server=True, redirect=True
    )
    hub = Engine(cfg, routing)
    hub.start(0.0)
    for spoke in (11, 12):
        reg = NhrpPacket(
            type=PacketType.REGISTRATION_REQUEST,
            src_nbma=A(f"198.51.100.{spoke}"),
            src_proto=A(f"10.0.0.{spoke}"),
            dst_proto=A("10.0.0.1"),
            request_id=spoke,
        )
        hub.receive(reg.encode(), A(f"198.51.100.{spoke}"), 0.0)
    hub.pop_outputs()
    return hub, routing


def _resolution(hop_count: int = 255, transit: tuple = ()) -> NhrpPacket:  # type: ignore[type-arg]
    from dmvpn.wire import Cie

    return NhrpPacket(
        type=PacketType.RESOLUTION_REQUEST,
        src_nbma=A("198.51.100.11"),
        src_proto=A("10.0.0.11"),
        dst_proto=A("192.168.12.10"),
        request_id=5,
        hop_count=hop_count,
        cies=(Cie(prefix_length=32),),
        extensions=(ForwardTransitNhsExtension(cies=transit), EndExtension()),
    )


def test_phase3_hub_forwards_to_the_owner_recording_itself() -> None:
    hub, _ = _phase3_hub()
    hub.receive(_resolution().encode(), A("198.51.100.11"), 1.0)
    (send,) = _sent(hub)
    assert send.nbma == A("198.51.100.12")
    fwd = decode_nhrp(send.data)
    assert fwd.hop_count == 254 and fwd.request_id == 5
    transit = fwd.extension(ForwardTransitNhsExtension)
    assert isinstance(transit, ForwardTransitNhsExtension)
    assert [c.protocol for c in transit.cies] == [A("10.0.0.1")]


def test_hub_passes_on_a_reply_sent_back_through_it() -> None:
    # nhrpd, answering a request forwarded by the hub, routes its Resolution
    # Reply to the requester via the hub (seen with FRR 8.4 in UML).
    from dmvpn.wire import Cie, ReverseTransitNhsExtension

    hub, _ = _phase3_hub()
    reply = NhrpPacket(
        type=PacketType.RESOLUTION_REPLY,
        src_nbma=A("198.51.100.11"),
        src_proto=A("10.0.0.11"),
        dst_proto=A("192.168.12.10"),
        request_id=5,
        hop_count=255,
        cies=(Cie(prefix_length=24, nbma=A("198.51.100.12"), protocol=A("10.0.0.12")),),
        extensions=(
            ForwardTransitNhsExtension(cies=(Cie(protocol=A("10.0.0.1"), nbma=A("192.0.2.1")),)),
            ReverseTransitNhsExtension(),
            EndExtension(),
        ),
    )
    hub.receive(reply.encode(), A("198.51.100.12"), 1.0)
    (send,) = _sent(hub)
    assert send.nbma == A("198.51.100.11")  # the requester's registration
    fwd = decode_nhrp(send.data)
    assert fwd.type == PacketType.RESOLUTION_REPLY and fwd.hop_count == 254
    assert fwd.cies == reply.cies and fwd.request_id == 5
    reverse = fwd.extension(ReverseTransitNhsExtension)
    assert isinstance(reverse, ReverseTransitNhsExtension)
    assert [c.protocol for c in reverse.cies] == [A("10.0.0.1")]
    # Already through us once: a loop, dropped.
    hub.receive(fwd.encode(), A("198.51.100.12"), 1.0)
    assert _sent(hub) == [] and hub.stats["rx.loop_detected"] == 1
    # For nobody registered here: dropped, counted.
    stray = replace(reply, src_proto=A("10.0.0.99"))
    hub.receive(stray.encode(), A("198.51.100.12"), 1.0)
    assert _sent(hub) == [] and hub.stats["resolution.reply_no_binding"] == 1


def test_hop_count_exceeded_and_loop_detected() -> None:
    hub, _ = _phase3_hub()
    hub.receive(_resolution(hop_count=1).encode(), A("198.51.100.11"), 1.0)
    (send,) = _sent(hub)
    assert decode_nhrp(send.data).error_code == ErrorCode.HOP_COUNT_EXCEEDED
    from dmvpn.wire import Cie

    looped = _resolution(transit=(Cie(protocol=A("10.0.0.1"), nbma=A("192.0.2.1")),))
    hub.receive(looped.encode(), A("198.51.100.11"), 1.0)
    (send,) = _sent(hub)
    assert decode_nhrp(send.data).error_code == ErrorCode.LOOP_DETECTED  # RFC: 3, not nhrpd's 2
    hub.receive(b"\x00\x01\x08\x00garbage", A("198.51.100.11"), 1.0)
    assert _sent(hub) == [] and hub.stats["rx.malformed"] == 1


def test_redirects_are_rate_limited_per_flow() -> None:
    hub, _ = _phase3_hub()
    from dmvpn.wire import IPv4Header

    pkt = IPv4Header(src=A("192.168.11.10"), dst=A("192.168.12.10"), protocol=1).encode(bytes(64))
    for i in range(100):
        hub.hairpin(pkt, A("198.51.100.11"), 1.0 + i * 0.01)
    (send,) = _sent(hub)
    ti = decode_nhrp(send.data)
    assert ti.type == PacketType.TRAFFIC_INDICATION
    assert ti.dst_proto == A("192.168.11.10")  # the original packet's source, as nhrpd
    assert len(ti.contents) == 28  # IP header + 8 bytes, as Cisco
    assert hub.stats["redirect.rate_limited"] == 99
    hub.hairpin(pkt, A("198.51.100.11"), 20.0)  # the interval has passed
    assert len(_sent(hub)) == 1


def test_max_send_bounds_everything() -> None:
    routing = StaticRouting()
    cfg = EngineConfig(
        protocol_address=A("10.0.0.1"),
        nbma_address=A("192.0.2.1"),
        server=True,
        max_send=10,
        max_send_interval=10.0,
    )
    hub = Engine(cfg, routing)
    hub.start(0.0)
    for i in range(200):
        reg = NhrpPacket(
            type=PacketType.REGISTRATION_REQUEST,
            src_nbma=A("198.51.100.1") + i,
            src_proto=A("10.0.1.0") + i,
            dst_proto=A("10.0.0.1"),
            request_id=i,
        )
        hub.receive(reg.encode(), A("198.51.100.1") + i, 1.0)
    assert len(_sent(hub)) == 10
    assert hub.stats["tx.rate_limited"] == 190


def test_opennhrp_zero_cie_purge_keeps_the_registration(vectors: Path) -> None:
    """cloutd_NHRP.pcapng: a Linux spoke registers, then sends a Purge Request
    with zero CIEs; the hub answers it, and the spoke stays registered."""
    reg, _, purge, _ = records(vectors / "cloutd_NHRP.pcapng")
    assert reg.nhrp is not None and purge.nhrp is not None
    hub = Engine(
        EngineConfig(protocol_address=A("10.0.0.1"), nbma_address=A("198.51.100.4"), server=True)
    )
    hub.start(0.0)
    hub.receive(reg.nhrp_bytes or b"", A("198.51.100.5"), 0.0)
    hub.pop_outputs()
    hub.receive(purge.nhrp_bytes or b"", A("198.51.100.5"), 1.0)
    outs = hub.pop_outputs()
    (send,) = [o for o in outs if isinstance(o, SendPacket)]
    reply = decode_nhrp(send.data)
    assert reply.type == PacketType.PURGE_REPLY and reply.request_id == purge.nhrp.request_id
    assert not any(isinstance(o, BindingRemoved) for o in outs)
    assert hub.bound(A("10.0.0.2")) == A("198.51.100.5")


def test_spoke_registration_layout_and_deregistration() -> None:
    cfg = EngineConfig(
        protocol_address=A("10.0.0.11"),
        nbma_address=A("198.51.100.11"),
        nhs=(NhsConfig(A("10.0.0.1"), A("192.0.2.1")),),
        authentication=b"pw",
        request_id_start=40,
    )
    spoke = Engine(cfg)
    spoke.start(0.0)
    outs = spoke.pop_outputs()
    assert BindingAdded(A("10.0.0.1"), A("192.0.2.1"), "nhs") in outs
    (send,) = [o for o in outs if isinstance(o, SendPacket)]
    req = send.packet
    assert (req.type, req.request_id, req.flags) == (PacketType.REGISTRATION_REQUEST, 40, 0x8002)
    assert [e.TYPE for e in req.extensions] == [3, 4, 5, 7, 9, 0]  # Cisco's order
    assert spoke.get_timer() == 1.0
    # Retransmission reuses the request ID.
    spoke.handle_timer(1.0)
    (again,) = _sent(spoke)
    assert again.packet.request_id == 40
    # The hub answers; refresh comes at a third of the holding time.
    hub = Engine(
        EngineConfig(
            protocol_address=A("10.0.0.1"),
            nbma_address=A("192.0.2.1"),
            server=True,
            authentication=b"pw",
        )
    )
    hub.start(0.0)
    hub.receive(again.data, A("198.51.100.11"), 1.5)
    (reply,) = _sent(hub)
    spoke.receive(reply.data, A("192.0.2.1"), 1.6)
    assert spoke.nhs_view(1.6)[0]["state"] == "up"
    spoke.stop(100.0)
    outs = spoke.pop_outputs()
    (purge,) = [o for o in outs if isinstance(o, SendPacket)]
    assert purge.packet.type == PacketType.PURGE_REQUEST
    assert purge.packet.request_id == 40  # the registration it withdraws (Cisco)
    assert UnprotectPeer(A("192.0.2.1")) in outs
    hub.receive(purge.data, A("198.51.100.11"), 100.1)
    assert hub.bound(A("10.0.0.11")) is None


@pytest.mark.parametrize("field", ["version", "hop_count"])
def test_bad_version_and_zero_hop_count(field: str) -> None:
    hub = _cisco_hub(password=None)
    req = NhrpPacket(
        type=PacketType.REGISTRATION_REQUEST,
        src_nbma=A("192.0.2.9"),
        src_proto=A("10.0.0.9"),
        dst_proto=A("155.1.0.5"),
    )
    hub.receive(
        replace(req, **{field: 2 if field == "version" else 0}).encode(), A("192.0.2.9"), 0.0
    )
    sent = _sent(hub)
    if field == "version":
        assert decode_nhrp(sent[0].data).error_code == ErrorCode.PROTOCOL_ERROR
    else:
        assert sent == [] and hub.stats["rx.hop_count_zero"] == 1


def test_error_indication_with_hop_count_zero_is_read() -> None:
    # nhrpd (10.3) refuses with hop count 0 and no extensions: we log it,
    # and with a password configured its missing authentication is named.
    err = NhrpPacket(
        type=PacketType.ERROR_INDICATION,
        hop_count=0,
        src_nbma=A("192.0.2.9"),
        src_proto=A("10.0.0.2"),
        dst_proto=A("155.1.0.5"),
        error_code=ErrorCode.AUTHENTICATION_FAILURE,
        indication_unused=2,
    )
    open_hub = _cisco_hub(password=None)
    open_hub.receive(err.encode(), A("192.0.2.2"), 0.0)
    events = [o for o in open_hub.pop_outputs() if isinstance(o, Event)]
    assert [e.message for e in events] == ["Error Indication code 11 from 192.0.2.2"]
    assert "rx.hop_count_zero" not in open_hub.stats
    with_password = _cisco_hub()
    with_password.receive(err.encode(), A("192.0.2.2"), 0.0)
    events = [o for o in with_password.pop_outputs() if isinstance(o, Event)]
    assert [e.message for e in events] == ["Error Indication from 192.0.2.2 failed authentication"]


def test_error_indications_from_an_nhs_cause_one_reregistration_not_a_storm() -> None:
    # An NHS may have lost our registration (a restart): one registration at
    # once. An NHS that answers every one with an Error Indication (nhrpd
    # with a password we do not send) gets no more than one per retry_max.
    spoke = Engine(
        EngineConfig(
            protocol_address=A("10.0.0.11"),
            nbma_address=A("198.51.100.11"),
            nhs=(NhsConfig(A("10.0.0.1"), A("192.0.2.1")),),
        )
    )
    hub = Engine(
        EngineConfig(protocol_address=A("10.0.0.1"), nbma_address=A("192.0.2.1"), server=True)
    )
    spoke.start(0.0)
    hub.start(0.0)
    hub.pop_outputs()
    for send in _sent(spoke):
        hub.receive(send.data, A("198.51.100.11"), 0.0)
    for send in _sent(hub):
        spoke.receive(send.data, A("192.0.2.1"), 0.0)
    assert spoke.nhs_view(0.0)[0]["state"] == "up"
    err = NhrpPacket(
        type=PacketType.ERROR_INDICATION,
        hop_count=0,
        src_nbma=A("192.0.2.1"),
        src_proto=A("10.0.0.1"),
        dst_proto=A("10.0.0.11"),
        error_code=ErrorCode.AUTHENTICATION_FAILURE,
    ).encode()
    sent = []
    for i in range(100):  # a thousand a second, as two disagreeing nhrpd exchange
        spoke.receive(err, A("192.0.2.1"), 1.0 + i / 1000)
        sent += [s for s in _sent(spoke) if s.packet.type == PacketType.REGISTRATION_REQUEST]
    assert len(sent) == 1
    spoke.receive(err, A("192.0.2.1"), 1.0 + spoke.config.retry_max)
    assert [s.packet.type for s in _sent(spoke)] == [PacketType.REGISTRATION_REQUEST]


def test_retune_keeps_state_and_takes_new_knobs() -> None:
    hub, _ = _phase3_hub()
    from dataclasses import replace as dc_replace

    from dmvpn.wire import IPv4Header

    hub.retune(dc_replace(hub.config, redirect=False, holding_time=60), 2.0)
    assert hub.bound(A("10.0.0.11")) == A("198.51.100.11")  # registrations kept
    pkt = IPv4Header(src=A("192.168.11.10"), dst=A("192.168.12.10"), protocol=1).encode(bytes(8))
    hub.hairpin(pkt, A("198.51.100.11"), 3.0)
    assert _sent(hub) == []  # redirect now off
