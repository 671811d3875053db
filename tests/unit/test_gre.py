from __future__ import annotations

import pytest

from dmvpn.wire import DecodeError, EncodeError, GrePacket, decode_gre


def test_key_and_sequence_layout() -> None:
    pkt = GrePacket(0x2001, b"xyz", key=0x01020304, sequence=0x0A0B0C0D)
    data = pkt.encode()
    assert data == bytes.fromhex("30002001010203040a0b0c0d") + b"xyz"
    assert decode_gre(data) == pkt
    assert pkt.header_length == 12


def test_checksum_computed_and_verified() -> None:
    pkt = GrePacket(0x0800, b"\x45" + bytes(19), key=7, checksum=True)
    data = pkt.encode()
    assert data[:2] == b"\xa0\x00"  # C and K
    assert decode_gre(data) == pkt
    bad = data[:-1] + b"\x01"
    with pytest.raises(DecodeError, match="checksum") as info:
        decode_gre(bad)
    assert info.value.offset == 4
    assert decode_gre(bad, verify_checksum=False).payload.endswith(b"\x01")


@pytest.mark.parametrize(
    ("data", "reason", "offset"),
    [
        (b"\x20\x00", "needs 4 bytes", 0),
        (b"\x00\x01\x08\x00", "version 1", 1),
        (b"\x40\x00\x08\x00", "reserved flag", 0),
        (b"\x20\x00\x20\x01\x00\x00", "needs 8 bytes", 0),
        (b"\xb0\x00\x20\x01" + bytes(8), "needs 16 bytes", 0),
    ],
)
def test_bad_headers(data: bytes, reason: str, offset: int) -> None:
    with pytest.raises(DecodeError, match=reason) as info:
        decode_gre(data)
    assert info.value.offset == offset


def test_encode_range_checks() -> None:
    with pytest.raises(EncodeError, match="key"):
        GrePacket(0x2001, b"", key=2**32).encode()
    with pytest.raises(EncodeError, match="protocol"):
        GrePacket(0x10000, b"").encode()
