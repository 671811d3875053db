"""Every packet the encoder can produce decodes back to the same value."""

from __future__ import annotations

from hypothesis import given, settings

from dmvpn.wire import NhrpPacket, decode_nhrp

from ..strategies import nhrp_packets


@settings(max_examples=800)
@given(nhrp_packets())
def test_any_packet_roundtrips(pkt: NhrpPacket) -> None:
    data = pkt.encode()
    back = decode_nhrp(data)
    assert back == pkt
    assert back.encode() == data


@settings(max_examples=300)
@given(nhrp_packets(realistic=True))
def test_realistic_packet_roundtrips(pkt: NhrpPacket) -> None:
    data = pkt.encode()
    assert decode_nhrp(data) == pkt
