"""NHRP codec details beyond the captures: layouts, limits and errors."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from dmvpn.wire import (
    AuthenticationExtension,
    Cie,
    DecodeError,
    EncodeError,
    EndExtension,
    ErrorCode,
    NatAddressExtension,
    NhrpPacket,
    PacketType,
    ResolutionFlag,
    UnknownExtension,
    decode_nhrp,
    internet_checksum,
)

from ..vectors import nhrp_payloads

A = IPv4Address("192.0.2.1")
B = IPv4Address("10.0.0.1")
C = IPv4Address("10.0.0.2")


def _fix_checksum(data: bytearray) -> bytes:
    data[12:14] = b"\x00\x00"
    data[12:14] = internet_checksum(bytes(data)).to_bytes(2, "big")
    return bytes(data)


def test_resolution_request_layout() -> None:
    pkt = NhrpPacket(
        type=PacketType.RESOLUTION_REQUEST,
        src_nbma=A,
        src_proto=B,
        dst_proto=C,
        flags=ResolutionFlag.Q | ResolutionFlag.NAT,
        request_id=0x11223344,
    )
    data = pkt.encode()
    assert len(data) == 20 + 8 + 12
    assert data[:10] == bytes.fromhex("0001 0800 0000000000 ff".replace(" ", ""))
    assert int.from_bytes(data[10:12], "big") == 40  # ar$pktsz
    assert data[14:16] == b"\x00\x00"  # no extensions: ar$extoff 0
    assert data[16:20] == bytes([1, 1, 4, 0])  # version, type, shtl, sstl
    assert data[20:28] == bytes.fromhex("0404800211223344")
    assert internet_checksum(data) == 0


def test_error_indication_layout_and_contents() -> None:
    inner = NhrpPacket(type=PacketType.REGISTRATION_REQUEST, src_nbma=A, src_proto=C, dst_proto=B)
    err = NhrpPacket(
        type=PacketType.ERROR_INDICATION,
        src_nbma=A,
        src_proto=B,
        dst_proto=C,
        error_code=ErrorCode.HOP_COUNT_EXCEEDED,
        error_offset=8,
        contents=inner.encode(),
    )
    data = err.encode()
    assert data[20:28] == bytes.fromhex("04040000000f0008")
    back = decode_nhrp(data)
    assert back == err
    assert decode_nhrp(back.contents) == inner


def test_nhrpd_error_indication_reencodes_exactly() -> None:
    # FRR nhrpd 10.3 refusing a registration with the wrong password (seen in
    # the interop lab): flags 0x0002 of the offending packet in ar$unused,
    # its own peer's NBMA as source NBMA, the packet in error cut short.
    data = bytes.fromhex(
        "0001080000000000000000 50c0a6000001070400 040400020 00b0000ac1e000c0a0000020a00000c"
        "000108000000000000ff006a9ad5003401030400040400020000 0002ac1e000c0a00000c0a000002".replace(
            " ", ""
        )
    )
    pkt = decode_nhrp(data)
    assert pkt.type == PacketType.ERROR_INDICATION and pkt.error_code == 11
    assert pkt.indication_unused == 2 and len(pkt.contents) == 40
    assert pkt.encode() == data
    with pytest.raises(EncodeError, match="carries no error"):
        NhrpPacket(type=PacketType.PURGE_REQUEST, indication_unused=1).encode()


def test_traffic_indication_contents_end_at_extoff() -> None:
    embedded = bytes.fromhex("4500001c0000400040010000c0a80b0ac0a80c0a") + bytes(8)
    ti = NhrpPacket(
        type=PacketType.TRAFFIC_INDICATION,
        src_nbma=A,
        src_proto=B,
        dst_proto=C,
        contents=embedded,
        extensions=(AuthenticationExtension(data=b"pw"), EndExtension()),
    )
    data = ti.encode()
    extoff = int.from_bytes(data[14:16], "big")
    assert data[extoff - len(embedded) : extoff] == embedded
    assert decode_nhrp(data).contents == embedded


def test_ipv6_both_layers_subaddress_and_e164() -> None:
    pkt = NhrpPacket(
        type=PacketType.REGISTRATION_REQUEST,
        afn=2,
        protocol_type=0x86DD,
        src_nbma=IPv6Address("2001:db8::1"),
        src_nbma_sub=b"\x01\x02",
        src_nbma_e164=True,
        src_nbma_sub_e164=True,
        src_proto=IPv6Address("2001:db8:1::1"),
        dst_proto=IPv6Address("2001:db8:1::2"),
        cies=(Cie(nbma=b"\x12\x34\x56", nbma_e164=True, nbma_sub=b"\x09", protocol=b""),),
    )
    data = pkt.encode()
    assert data[18] == 0x40 | 16 and data[19] == 0x40 | 2
    assert decode_nhrp(data) == pkt


def test_unknown_extensions_keep_their_compulsory_bit() -> None:
    pkt = NhrpPacket(
        type=PacketType.RESOLUTION_REQUEST,
        src_nbma=A,
        src_proto=B,
        dst_proto=C,
        extensions=(
            UnknownExtension(type=0x77, data=b"\x01", compulsory=True),
            UnknownExtension(type=0x78, data=b"", compulsory=False),
            EndExtension(),
        ),
    )
    back = decode_nhrp(pkt.encode())
    assert back.extensions == pkt.extensions
    assert [e.compulsory for e in back.extensions] == [True, False, True]


def test_nat_extension_number_with_device_capabilities_value() -> None:
    # RFC 2735 Device Capabilities shares number 9: 8 bytes, not CIEs. Kept raw.
    pkt = NhrpPacket(
        type=PacketType.RESOLUTION_REQUEST,
        src_nbma=A,
        src_proto=B,
        dst_proto=C,
        extensions=(UnknownExtension(type=9, data=bytes(8)), EndExtension()),
    )
    back = decode_nhrp(pkt.encode())
    assert back == pkt
    nat = NhrpPacket(
        type=PacketType.REGISTRATION_REQUEST,
        src_nbma=A,
        src_proto=B,
        dst_proto=C,
        extensions=(NatAddressExtension(cies=()), EndExtension()),
    )
    assert decode_nhrp(nat.encode()) == nat


def _base() -> bytearray:
    pkt = NhrpPacket(
        type=PacketType.REGISTRATION_REQUEST,
        src_nbma=A,
        src_proto=B,
        dst_proto=C,
        cies=(Cie(prefix_length=32, holding_time=7200),),
        extensions=(AuthenticationExtension(data=b"secret"), EndExtension()),
    )
    return bytearray(pkt.encode())


def _with(offset: int, value: bytes) -> bytes:
    data = _base()
    data[offset : offset + len(value)] = value
    return _fix_checksum(data)


@pytest.mark.parametrize(
    ("data", "reason", "offset"),
    [
        (b"\x00" * 10, "at least 28 bytes", 0),
        (bytes(_base()[:-1]), "exceeds the", 10),
        (_with(10, b"\x00\x10"), "shorter than the 28-byte minimum", 10),
        (_with(17, b"\x09"), "unknown NHRP packet type 9", 17),
        (_with(18, b"\x84"), "reserved bit", 18),
        (_with(14, b"\x00\x05"), "ar$extoff 5 outside", 14),
        (_with(20, b"\xff"), "overrun the mandatory part", 28),
        (_with(48, b"\x3f"), "CIE addresses", 40),
    ],
)
def test_malformed_packets_name_the_field(data: bytes, reason: str, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        decode_nhrp(data)
    assert reason in info.value.reason
    assert info.value.offset == offset


def test_checksum_mismatch() -> None:
    data = _base()
    data[25] ^= 0x10
    with pytest.raises(DecodeError, match="checksum") as info:
        decode_nhrp(bytes(data))
    assert info.value.offset == 12
    assert decode_nhrp(bytes(data), verify_checksum=False).request_id != 0


def test_end_must_be_last_and_extensions_must_fit() -> None:
    data = _base() + bytearray(b"\x00")
    data[-5:-1] = b"\x80\x00\x00\x01"  # End with a one-byte value
    data[10:12] = len(data).to_bytes(2, "big")
    with pytest.raises(DecodeError, match="End extension with length"):
        decode_nhrp(_fix_checksum(data))
    data = _base() + bytearray(b"\x00\x00\x00\x00")
    data[10:12] = len(data).to_bytes(2, "big")
    with pytest.raises(DecodeError, match="after the End extension"):
        decode_nhrp(_fix_checksum(data))


def test_trailing_padding_is_ignored() -> None:
    data = bytes(_base())
    assert decode_nhrp(data + bytes(6)) == decode_nhrp(data)


def test_encode_refuses_inconsistent_values() -> None:
    with pytest.raises(EncodeError, match="no flags"):
        NhrpPacket(type=PacketType.TRAFFIC_INDICATION, flags=1).encode()
    with pytest.raises(EncodeError, match="contents"):
        NhrpPacket(type=PacketType.PURGE_REQUEST, contents=b"x").encode()
    with pytest.raises(EncodeError, match="out of range"):
        NhrpPacket(type=PacketType.PURGE_REQUEST, request_id=2**32).encode()
    with pytest.raises(EncodeError, match="63 bytes"):
        NhrpPacket(type=PacketType.PURGE_REQUEST, src_nbma=bytes(64)).encode()


def test_extension_offsets_walk_the_extensions_from_extoff(vectors: Path) -> None:
    seen = 0
    for data in nhrp_payloads(vectors):
        try:
            pkt = decode_nhrp(data)
        except DecodeError:
            continue
        offsets = pkt.extension_offsets()
        assert len(offsets) == len(pkt.extensions)
        if not offsets:
            continue
        seen += 1
        # The same walk as over the raw bytes: ar$extoff, then each header's length.
        off = int.from_bytes(data[14:16], "big")
        for at in offsets:
            assert at == off
            off += 4 + int.from_bytes(data[off + 2 : off + 4], "big")
    assert seen > 5
    bare = NhrpPacket(type=PacketType.RESOLUTION_REQUEST, src_nbma=A, src_proto=B, dst_proto=C)
    assert bare.extension_offsets() == ()
