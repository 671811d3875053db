"""GRE (RFC 2784 with the key and sequence number of RFC 2890).

Header: flags and version (16 bits), protocol type (16 bits), then, in this
order and only when flagged: checksum + reserved1 (C), key (K), sequence
number (S). DMVPN uses the key to tell clouds apart on one NBMA address.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from .checksum import internet_checksum
from .errors import DecodeError, EncodeError

FLAG_C = 0x8000
FLAG_K = 0x2000
FLAG_S = 0x1000
# RFC 2784 2.2: bits 1-12 of the first word are Reserved0 and must be zero
# unless the receiver implements RFC 1701 (we do not: routing and strict
# source route bits are obsolete). Bits 2 and 3 are K and S from RFC 2890.
_RESERVED0 = 0x4FF8
_VERSION_MASK = 0x0007

_HDR = struct.Struct("!HH")
_U32 = struct.Struct("!I")


class EtherType(IntEnum):
    """Protocol types that appear in GRE for DMVPN."""

    IPV4 = 0x0800
    ARP = 0x0806
    IPV6 = 0x86DD
    NHRP = 0x2001
    # Cisco sends CDP over GRE with this protocol type (seen in the vectors).
    CISCO_CDP = 0x2000
    TRANSPARENT_ETHERNET = 0x6558


@dataclass(frozen=True, slots=True)
class GrePacket:
    """A GRE packet: header fields and the payload that follows them.

    ``checksum`` says whether the C bit (and so a checksum) is present; the
    value is computed on encode and verified on decode.
    """

    protocol: int
    payload: bytes
    key: int | None = None
    sequence: int | None = None
    checksum: bool = False

    def encode(self) -> bytes:
        if not 0 <= self.protocol <= 0xFFFF:
            raise EncodeError(f"GRE protocol type {self.protocol} out of range")
        flags = 0
        parts: list[bytes] = []
        if self.checksum:
            flags |= FLAG_C
            parts.append(b"\x00\x00\x00\x00")
        if self.key is not None:
            if not 0 <= self.key <= 0xFFFFFFFF:
                raise EncodeError(f"GRE key {self.key} out of range")
            flags |= FLAG_K
            parts.append(_U32.pack(self.key))
        if self.sequence is not None:
            if not 0 <= self.sequence <= 0xFFFFFFFF:
                raise EncodeError(f"GRE sequence number {self.sequence} out of range")
            flags |= FLAG_S
            parts.append(_U32.pack(self.sequence))
        data = _HDR.pack(flags, self.protocol) + b"".join(parts) + self.payload
        if self.checksum:
            csum = internet_checksum(data)
            data = data[:4] + csum.to_bytes(2, "big") + data[6:]
        return data

    @property
    def header_length(self) -> int:
        return 4 + 4 * (self.checksum + (self.key is not None) + (self.sequence is not None))


def decode_gre(data: bytes | memoryview, *, verify_checksum: bool = True) -> GrePacket:
    """Decode a GRE packet; raise :class:`DecodeError` if it is not valid."""
    n = len(data)
    if n < 4:
        raise DecodeError(f"GRE header needs 4 bytes, {n} available", 0)
    flags, protocol = _HDR.unpack_from(data, 0)
    version = flags & _VERSION_MASK
    if version != 0:
        # RFC 2784 2.3.1: version 1 is PPTP; anything but 0 is not ours.
        raise DecodeError(f"GRE version {version} is not 0", 1)
    if flags & _RESERVED0:
        raise DecodeError(f"GRE reserved flag bits set (flags 0x{flags:04x})", 0)
    off = 4
    has_c = bool(flags & FLAG_C)
    key = sequence = None
    need = 4 + 4 * (has_c + bool(flags & FLAG_K) + bool(flags & FLAG_S))
    if n < need:
        raise DecodeError(
            f"GRE header with flags 0x{flags:04x} needs {need} bytes, {n} available", 0
        )
    if has_c:
        if internet_checksum(data) != 0 and verify_checksum:
            raise DecodeError("GRE checksum mismatch", 4)
        if data[6:8] != b"\x00\x00":
            raise DecodeError("GRE reserved1 field is not zero", 6)
        off = 8
    if flags & FLAG_K:
        (key,) = _U32.unpack_from(data, off)
        off += 4
    if flags & FLAG_S:
        (sequence,) = _U32.unpack_from(data, off)
        off += 4
    return GrePacket(protocol, bytes(data[off:]), key, sequence, has_c)
