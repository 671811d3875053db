"""Minimal IPv4 (RFC 791) and IPv6 (RFC 8200) headers.

Enough for the data plane (addresses, protocol, TTL) and for the packet a
Traffic Indication carries, which Cisco cuts to the IP header + 8 bytes: so
the payload may be shorter than the header's total length says.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from .checksum import internet_checksum
from .errors import DecodeError, EncodeError

_V4 = struct.Struct("!BBHHHBBH4s4s")
_V6 = struct.Struct("!IHBB16s16s")

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_GRE = 47
PROTO_ESP = 50
# IANA "NARP": NHRP directly over IP (RFC 2332 appendix; tcpdump decodes it).
PROTO_NHRP = 54
PROTO_ICMPV6 = 58


@dataclass(frozen=True, slots=True, kw_only=True)
class IPv4Header:
    src: IPv4Address
    dst: IPv4Address
    protocol: int
    ttl: int = 64
    tos: int = 0
    identification: int = 0
    flags_fragment: int = 0x4000  # DF
    options: bytes = b""
    total_length: int | None = None  # None: header + payload
    checksum: int | None = None  # None: computed

    @property
    def header_length(self) -> int:
        return 20 + len(self.options)

    def encode(self, payload: bytes = b"") -> bytes:
        if len(self.options) % 4 or len(self.options) > 40:
            raise EncodeError("IPv4 options must be a multiple of 4 bytes, at most 40")
        hl = self.header_length
        total = hl + len(payload) if self.total_length is None else self.total_length
        try:
            hdr = (
                _V4.pack(
                    0x40 | (hl // 4),
                    self.tos,
                    total,
                    self.identification,
                    self.flags_fragment,
                    self.ttl,
                    self.protocol,
                    0,
                    self.src.packed,
                    self.dst.packed,
                )
                + self.options
            )
        except struct.error as exc:
            raise EncodeError(f"IPv4 field out of range: {exc}") from None
        csum = internet_checksum(hdr) if self.checksum is None else self.checksum
        return hdr[:10] + csum.to_bytes(2, "big") + hdr[12:] + payload


@dataclass(frozen=True, slots=True, kw_only=True)
class IPv6Header:
    src: IPv6Address
    dst: IPv6Address
    next_header: int
    hop_limit: int = 64
    traffic_class: int = 0
    flow_label: int = 0
    payload_length: int | None = None  # None: len(payload)

    @property
    def header_length(self) -> int:
        return 40

    @property
    def protocol(self) -> int:
        return self.next_header

    def encode(self, payload: bytes = b"") -> bytes:
        plen = len(payload) if self.payload_length is None else self.payload_length
        first = (6 << 28) | (self.traffic_class << 20) | self.flow_label
        try:
            return (
                _V6.pack(
                    first, plen, self.next_header, self.hop_limit, self.src.packed, self.dst.packed
                )
                + payload
            )
        except struct.error as exc:
            raise EncodeError(f"IPv6 field out of range: {exc}") from None


def decode_ipv4(data: bytes, *, verify_checksum: bool = False) -> tuple[IPv4Header, bytes]:
    """Header and payload. The payload is cut at total length when shorter."""
    n = len(data)
    if n < 20:
        raise DecodeError(f"IPv4 header needs 20 bytes, {n} available", 0)
    vihl, tos, total, ident, ff, ttl, proto, csum, src, dst = _V4.unpack_from(data, 0)
    if vihl >> 4 != 4:
        raise DecodeError(f"IP version {vihl >> 4} is not 4", 0)
    hl = (vihl & 0x0F) * 4
    if hl < 20:
        raise DecodeError(f"IPv4 header length {hl} below 20", 0)
    if n < hl:
        raise DecodeError(f"IPv4 header of {hl} bytes, {n} available", 0)
    if verify_checksum and internet_checksum(data[:hl]) != 0:
        raise DecodeError("IPv4 header checksum mismatch", 10)
    end = total if hl <= total <= n else n
    hdr = IPv4Header(
        src=IPv4Address(src),
        dst=IPv4Address(dst),
        protocol=proto,
        ttl=ttl,
        tos=tos,
        identification=ident,
        flags_fragment=ff,
        options=bytes(data[20:hl]),
        total_length=total,
        checksum=csum,
    )
    return hdr, bytes(data[hl:end])


def decode_ipv6(data: bytes) -> tuple[IPv6Header, bytes]:
    n = len(data)
    if n < 40:
        raise DecodeError(f"IPv6 header needs 40 bytes, {n} available", 0)
    first, plen, nh, hlim, src, dst = _V6.unpack_from(data, 0)
    if first >> 28 != 6:
        raise DecodeError(f"IP version {first >> 28} is not 6", 0)
    hdr = IPv6Header(
        src=IPv6Address(src),
        dst=IPv6Address(dst),
        next_header=nh,
        hop_limit=hlim,
        traffic_class=(first >> 20) & 0xFF,
        flow_label=first & 0xFFFFF,
        payload_length=plen,
    )
    return hdr, bytes(data[40 : 40 + plen])


def decode_ip(data: bytes) -> tuple[IPv4Header | IPv6Header, bytes]:
    """IPv4 or IPv6, by the version nibble."""
    if not data:
        raise DecodeError("empty IP packet", 0)
    version = data[0] >> 4
    if version == 4:
        return decode_ipv4(data)
    if version == 6:
        return decode_ipv6(data)
    raise DecodeError(f"IP version {version} is neither 4 nor 6", 0)
