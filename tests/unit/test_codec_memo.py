"""The codec's memos (issue 20): decoded CIE and extension lists shared by
their bytes, encoded CIEs and extensions remembered by identity. Neither
may change a value or a byte, whatever objects come and go."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

from hypothesis import given, settings
from hypothesis import strategies as st

from dmvpn.wire import (
    AuthenticationExtension,
    Cie,
    DecodeError,
    EndExtension,
    ForwardTransitNhsExtension,
    NatAddressExtension,
    NhrpPacket,
    PacketType,
    ResponderAddressExtension,
    decode_nhrp,
    internet_checksum,
)
from dmvpn.wire import cie as cie_module
from dmvpn.wire import extensions as ext_module
from dmvpn.wire import nhrp as nhrp_module

from ..strategies import any_address, cies, nhrp_packets

A = IPv4Address


def _request(src_nbma: bytes | IPv4Address, rid: int) -> NhrpPacket:
    return NhrpPacket(
        type=PacketType.REGISTRATION_REQUEST,
        src_nbma=src_nbma,
        src_proto=A("10.1.0.1") + rid,
        dst_proto=A("10.0.0.1"),
        request_id=rid,
        cies=(Cie(prefix_length=32, mtu=1400, holding_time=7200),),
        extensions=(
            ResponderAddressExtension(),
            ForwardTransitNhsExtension(),
            AuthenticationExtension(data=b"secret"),
            NatAddressExtension(cies=(Cie(prefix_length=32, nbma=A("192.0.2.1")),)),
            EndExtension(),
        ),
    )


def test_same_extension_bytes_at_another_offset_decode_the_same() -> None:
    a = _request(A("198.18.0.1"), 1)
    b = _request(bytes(range(20)), 2)  # a 20-byte NBMA: extensions further on
    da, db = decode_nhrp(a.encode()), decode_nhrp(b.encode())
    assert da == a and db == b
    assert da.extensions == db.extensions
    assert da.extensions is db.extensions  # decoded once, shared
    assert da.cies is db.cies


def test_an_error_in_remembered_bytes_still_names_its_own_offset() -> None:
    good = _request(A("198.18.0.1"), 1).encode()
    decode_nhrp(good)
    # The same (remembered) extension bytes, but the packet cut short inside
    # them: an error, with the offset in this packet, and nothing remembered.
    cut = bytearray(good[:-2])
    cut[10:12] = len(cut).to_bytes(2, "big")
    cut[12:14] = b"\0\0"
    cut[12:14] = internet_checksum(cut).to_bytes(2, "big")
    try:
        decode_nhrp(bytes(cut))
    except DecodeError as exc:
        assert exc.offset >= 28
    else:  # pragma: no cover
        raise AssertionError("decoded a truncated End")


def test_memos_stay_bounded_and_right_past_their_size() -> None:
    n = nhrp_module._MEMO_MAX + 50
    for i in range(n):
        pkt = replace(
            _request(A("198.18.0.1"), i + 1),
            cies=(Cie(prefix_length=32, mtu=i % 65536, holding_time=7200),),
        )
        data = pkt.encode()
        back = decode_nhrp(data)
        assert back == pkt and back.encode() == data
    assert len(nhrp_module._CIES_MEMO) <= nhrp_module._MEMO_MAX
    assert len(ext_module._ENCODED) <= ext_module._ENCODED_MAX
    assert len(cie_module._ENCODED) <= cie_module._ENCODED_MAX


@settings(max_examples=300)
@given(st.lists(cies(any_address(63), any_address(255), False), min_size=1, max_size=30))
def test_a_cie_encodes_as_without_the_memo(items: list[Cie]) -> None:
    # Fresh objects come and go (ids reused): each must encode as itself.
    for c in items:
        for _ in range(2):
            remembered = bytearray()
            c.encode_into(remembered)
            plain = bytearray()
            c._encode_into(plain)
            assert remembered == plain
        copy = replace(c)
        again = bytearray()
        copy.encode_into(again)
        assert again == remembered


@settings(max_examples=300)
@given(nhrp_packets())
def test_a_packet_encodes_the_same_twice_and_as_a_copy(pkt: NhrpPacket) -> None:
    data = pkt.encode()
    assert pkt.encode() == data  # second time from the memos
    copy = replace(
        pkt,
        cies=tuple(replace(c) for c in pkt.cies),
        extensions=tuple(replace(e) for e in pkt.extensions),
    )
    assert copy.encode() == data
    assert decode_nhrp(data).encode() == data


@settings(max_examples=200)
@given(nhrp_packets(), nhrp_packets())
def test_evolve_is_replace(pkt: NhrpPacket, other: NhrpPacket) -> None:
    assert pkt.evolve() == pkt
    names = ("type", "hop_count", "cies", "extensions", "src_nbma", "request_id", "flags")
    changes = {name: getattr(other, name) for name in names}
    assert pkt.evolve(**changes) == replace(pkt, **changes)  # type: ignore[arg-type]
    for name in names:
        one = {name: getattr(other, name)}
        assert pkt.evolve(**one) == replace(pkt, **one)  # type: ignore[arg-type]


def test_evolve_refuses_a_field_that_is_not_there() -> None:
    pkt = _request(A("198.18.0.1"), 1)
    try:
        pkt.evolve(nonsense=1)
    except TypeError:
        pass
    else:  # pragma: no cover
        raise AssertionError("evolve took an unknown field")
