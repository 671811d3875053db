"""A hub's reply extensions are made once per (request extensions,
responder, NAT CIEs, config) (issue 20): the memo must answer exactly what
building them afresh answers, and follow every change of its inputs."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

from dmvpn.nhrp import EngineConfig
from dmvpn.nhrp.packets import _reply_extensions, reply_extensions, self_cie
from dmvpn.wire import (
    AuthenticationExtension,
    Cie,
    EndExtension,
    ForwardTransitNhsExtension,
    NatAddressExtension,
    NhrpPacket,
    PacketType,
    ResponderAddressExtension,
    ReverseTransitNhsExtension,
    UnknownExtension,
    decode_nhrp,
)

A = IPv4Address
HUB = EngineConfig(
    protocol_address=A("10.0.0.1"),
    nbma_address=A("192.0.2.1"),
    server=True,
    authentication=b"secret",
)


def _request(extensions: tuple[object, ...]) -> NhrpPacket:
    pkt = NhrpPacket(
        type=PacketType.REGISTRATION_REQUEST,
        src_nbma=A("198.18.0.1"),
        src_proto=A("10.1.0.1"),
        dst_proto=A("10.0.0.1"),
        request_id=7,
        cies=(Cie(prefix_length=32, holding_time=7200),),
        extensions=extensions,  # type: ignore[arg-type]
    )
    return decode_nhrp(pkt.encode())  # as a hub sees it: the shared decoded tuple


CISCO = (
    ResponderAddressExtension(),
    ForwardTransitNhsExtension(),
    ReverseTransitNhsExtension(),
    AuthenticationExtension(data=b"secret"),
    NatAddressExtension(cies=(Cie(prefix_length=32, nbma=A("192.0.2.1")),)),
    EndExtension(),
)
OTHER = (
    ForwardTransitNhsExtension(compulsory=False),
    UnknownExtension(type=0x1234, data=b"x"),
    ResponderAddressExtension(compulsory=False),
    EndExtension(),
)


def test_the_memo_answers_what_building_afresh_answers() -> None:
    natted = (Cie(prefix_length=32, nbma=A("203.0.113.9"), protocol=A("10.1.0.1")),)
    no_auth = replace(HUB, authentication=None)
    no_nat = replace(HUB, nat_extension=False)
    for exts in (CISCO, OTHER, (EndExtension(),)):
        pkt = _request(exts)
        for config in (HUB, no_auth, no_nat):
            me = self_cie(config, config.nbma_address)
            other_me = self_cie(config, A("192.0.2.99"))
            for responder in (me, other_me, me):
                for nat in (None, natted, None, natted):
                    want = _reply_extensions(config, pkt.extensions, responder, nat)
                    for _ in range(2):
                        got = reply_extensions(config, pkt, responder, nat_cies=nat)
                        assert got == want, (exts, config, responder, nat)


def test_a_new_config_is_answered_with_its_own_password() -> None:
    pkt = _request(CISCO)
    me = self_cie(HUB, HUB.nbma_address)
    first = reply_extensions(HUB, pkt, me)
    changed = replace(HUB, authentication=b"other")
    second = reply_extensions(changed, pkt, me)
    assert AuthenticationExtension(data=b"secret") in first
    assert AuthenticationExtension(data=b"other") in second
    assert reply_extensions(HUB, pkt, me) == first
