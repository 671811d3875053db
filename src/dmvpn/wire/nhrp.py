"""NHRP packets (RFC 2332 section 5, plus the DMVPN draft's Traffic Indication).

Layout: a 20-byte fixed header, then a type-specific part, then extensions
from ``ar$extoff`` to ``ar$pktsz``::

    fixed header   afn(2) pro.type(2) pro.snap(5) hopcnt(1) pktsz(2) chksum(2)
                   extoff(2) op.version(1) op.type(1) shtl(1) sstl(1)
    types 1-6      src proto len(1) dst proto len(1) flags(2) request id(4)
    type 7         src proto len(1) dst proto len(1) unused(2) code(2) offset(2)
    type 8         src proto len(1) dst proto len(1) unused(2) code(2) unused(2)
    all            src NBMA, src NBMA subaddress, src proto, dst proto
    types 1-6      CIEs up to extoff (or pktsz)
    types 7, 8     the packet in error / the packet that caused the indication,
                   up to extoff (or pktsz)

One flat, immutable value covers all eight types: the fields a type does not
use stay at their defaults, which :meth:`NhrpPacket.encode` checks.
"""

from __future__ import annotations

import builtins
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ._fast import fast_constructor, fast_evolve
from .checksum import internet_checksum
from .cie import Cie, decode_cies
from .errors import DecodeError, EncodeError
from .extensions import Extension, decode_extensions, encode_extensions
from .nhrp_types import (
    DEFAULT_HOP_COUNT,
    NHRP_VERSION,
    TL_E164,
    TL_LEN,
    TL_RESERVED,
    Address,
    AddressFamily,
    PacketType,
    ProtocolType,
    address_bytes,
    address_from_bytes,
)

_FIXED = struct.Struct("!HH5sBHHHBBBB")
FIXED_LEN = _FIXED.size  # 20
_MANDATORY = struct.Struct("!BBHI")
_INDICATION = struct.Struct("!BBHHH")
MANDATORY_LEN = 8

_TYPES = {t.value: t for t in PacketType}
# Plain ints on the hot path: an IntEnum attribute lookup costs ~70 ns.
_PURGE_REPLY = int(PacketType.PURGE_REPLY)
_ERROR = int(PacketType.ERROR_INDICATION)
_TRAFFIC = int(PacketType.TRAFFIC_INDICATION)
_SNAP_ZERO = bytes(5)

# Decoded CIE lists and extension lists by their bytes (values are immutable,
# so equal bytes may share one). The CIE of a Registration Request and the
# extensions of every request of one cloud (empty responder and transit
# records, the same password, the NHS in the NAT extension) are the same
# bytes from every spoke: a hub decodes them once (issue 20). Bounded in
# entries and key length; a miss decodes as before, errors included.
_T = TypeVar("_T")
_MEMO_MAX = 1024
_MEMO_KEY_MAX = 256
_CIES_MEMO: dict[bytes, tuple[Cie, ...]] = {}
_EXTS_MEMO: dict[bytes, tuple[Extension, ...]] = {}
# Encoded extension lists by identity: (the tuple, its bytes), the tuple held
# so that its id stays its own (immutable: it encodes the same every time).
# A hub answers every spoke of a cloud with one tuple (nhrp/packets.py).
_EXTS_ENCODED: dict[int, tuple[tuple[Extension, ...], bytes]] = {}


def _memoised(
    memo: dict[bytes, _T],
    decode: Callable[[bytes, int, int], _T],
    data: bytes,
    start: int,
    end: int,
) -> _T:
    """``decode(data, start, end)``, remembered in ``memo`` by those bytes."""
    if end - start > _MEMO_KEY_MAX:
        return decode(data, start, end)
    key = data[start:end]
    found = memo.get(key)
    if found is None:
        found = decode(data, start, end)
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        memo[key] = found
    return found


def _decode_cies(data: bytes, start: int, end: int) -> tuple[Cie, ...]:
    return _memoised(_CIES_MEMO, decode_cies, data, start, end)


def _decode_extensions(data: bytes, start: int, end: int) -> tuple[Extension, ...]:
    return _memoised(_EXTS_MEMO, decode_extensions, data, start, end)


@dataclass(frozen=True, slots=True, kw_only=True)
class NhrpPacket:
    type: PacketType
    afn: int = AddressFamily.IPV4
    protocol_type: int = ProtocolType.IPV4
    snap: bytes = _SNAP_ZERO
    hop_count: int = DEFAULT_HOP_COUNT
    version: int = NHRP_VERSION
    src_nbma: Address = b""
    src_nbma_sub: bytes = b""
    src_proto: Address = b""
    dst_proto: Address = b""
    # Types 1-6 (the "mandatory part" proper).
    flags: int = 0
    request_id: int = 0
    cies: tuple[Cie, ...] = ()
    # Type 7.
    error_code: int = 0
    error_offset: int = 0
    # Type 8.
    traffic_code: int = 0
    # Types 7 and 8: the packet in error / the packet that caused the indication.
    contents: bytes = b""
    extensions: tuple[Extension, ...] = ()
    src_nbma_e164: bool = False
    src_nbma_sub_e164: bool = False
    # Types 7 and 8: the first ar$unused field as received. RFC 2332 says
    # zero; nhrpd 10.3 leaves the offending packet's flags there. Kept so
    # that such a packet re-encodes byte for byte.
    indication_unused: int = 0

    @property
    def is_indication(self) -> bool:
        return self.type >= PacketType.ERROR_INDICATION

    def evolve(self, **changes: object) -> NhrpPacket:
        """A copy with ``changes`` (like dataclasses.replace, five times
        faster: a hub builds every reply this way)."""
        packet: NhrpPacket = _evolve_packet(self, **changes)
        return packet

    def extension(self, cls: builtins.type[Extension]) -> Extension | None:
        """The first extension of class ``cls``, if any."""
        for ext in self.extensions:
            if type(ext) is cls:
                return ext
        return None

    def extension_offsets(self) -> tuple[int, ...]:
        """Where each extension starts in :meth:`encode`'s bytes, the first at
        ``ar$extoff``: the offsets an Error Indication names (RFC 2332 5.2.7).

        Decoding keeps every length, so for a decoded packet these are also
        the offsets in the bytes it came from. Not on a hot path: an error
        answer needs it.
        """
        base = len(self.evolve(extensions=()).encode())
        out = bytearray()
        offsets = []
        for ext in self.extensions:
            offsets.append(base + len(out))
            encode_extensions((ext,), out)
        return tuple(offsets)

    def encode(self) -> bytes:
        """The packet on the wire: lengths, extoff and checksum computed."""
        nbma = address_bytes(self.src_nbma)
        sub = self.src_nbma_sub
        sproto = address_bytes(self.src_proto)
        dproto = address_bytes(self.dst_proto)
        if len(nbma) > TL_LEN or len(sub) > TL_LEN:
            raise EncodeError("source NBMA address or subaddress longer than 63 bytes")
        if len(sproto) > 0xFF or len(dproto) > 0xFF:
            raise EncodeError("protocol address longer than 255 bytes")
        if len(self.snap) != 5:
            raise EncodeError("ar$pro.snap must be 5 bytes")
        t = self.type
        # Header and type-specific part are packed last, when the sizes are known.
        out = bytearray(FIXED_LEN + MANDATORY_LEN)
        out += nbma
        out += sub
        out += sproto
        out += dproto
        try:
            if t <= _PURGE_REPLY:
                if (
                    self.contents
                    or self.error_code
                    or self.error_offset
                    or self.traffic_code
                    or self.indication_unused
                ):
                    raise EncodeError(f"{t.name} carries no error, traffic code or contents")
                _MANDATORY.pack_into(
                    out, FIXED_LEN, len(sproto), len(dproto), self.flags, self.request_id
                )
                for cie in self.cies:
                    cie.encode_into(out)
            else:
                if self.flags or self.request_id or self.cies:
                    raise EncodeError(f"{t.name} has no flags, request ID or CIEs")
                if t == _ERROR:
                    if self.traffic_code:
                        raise EncodeError("an Error Indication has no traffic code")
                    fields = (self.error_code, self.error_offset)
                else:
                    if self.error_code or self.error_offset:
                        raise EncodeError("a Traffic Indication has no error code or offset")
                    fields = (self.traffic_code, 0)
                _INDICATION.pack_into(
                    out, FIXED_LEN, len(sproto), len(dproto), self.indication_unused, *fields
                )
                out += self.contents
            extoff = 0
            exts = self.extensions
            if exts:
                extoff = len(out)
                known = _EXTS_ENCODED.get(id(exts))
                if known is not None and known[0] is exts:
                    out += known[1]
                else:
                    encode_extensions(exts, out)
                    if len(out) - extoff <= _MEMO_KEY_MAX:
                        if len(_EXTS_ENCODED) >= _MEMO_MAX:
                            _EXTS_ENCODED.clear()
                        _EXTS_ENCODED[id(exts)] = (exts, bytes(out[extoff:]))
            pktsz = len(out)
            if pktsz > 0xFFFF:
                raise EncodeError(f"packet of {pktsz} bytes exceeds ar$pktsz")
            shtl = len(nbma) | (TL_E164 if self.src_nbma_e164 else 0)
            sstl = len(sub) | (TL_E164 if self.src_nbma_sub_e164 else 0)
            _FIXED.pack_into(
                out,
                0,
                self.afn,
                self.protocol_type,
                self.snap,
                self.hop_count,
                pktsz,
                0,
                extoff,
                self.version,
                t,
                shtl,
                sstl,
            )
        except struct.error as exc:
            raise EncodeError(f"{t.name}: field out of range: {exc}") from None
        out[12:14] = internet_checksum(out).to_bytes(2, "big")
        return bytes(out)


_make_packet = fast_constructor(NhrpPacket)
_evolve_packet = fast_evolve(NhrpPacket)


def decode_nhrp(data: bytes, *, verify_checksum: bool = True) -> NhrpPacket:
    """Decode one NHRP packet from the start of ``data``.

    Bytes past ``ar$pktsz`` (link-layer padding) are ignored. Every way the
    bytes can be wrong raises :class:`DecodeError` naming field and offset.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    n = len(data)
    if n < FIXED_LEN + MANDATORY_LEN:
        raise DecodeError(f"NHRP packet needs at least 28 bytes, {n} available", 0)
    (afn, pro, snap, hop, pktsz, _csum, extoff, version, optype, shtl, sstl) = _FIXED.unpack_from(
        data, 0
    )
    if pktsz > n:
        raise DecodeError(f"ar$pktsz {pktsz} exceeds the {n} bytes available", 10)
    if pktsz < FIXED_LEN + MANDATORY_LEN:
        raise DecodeError(f"ar$pktsz {pktsz} is shorter than the 28-byte minimum", 10)
    if pktsz < n:
        data = data[:pktsz]
    if verify_checksum and internet_checksum(data) != 0:
        raise DecodeError("NHRP checksum mismatch", 12)
    ptype = _TYPES.get(optype)
    if ptype is None:
        raise DecodeError(f"unknown NHRP packet type {optype}", 17)
    if (shtl | sstl) & TL_RESERVED:
        raise DecodeError("reserved bit set in ar$shtl/ar$sstl", 18)
    if extoff:
        if extoff < FIXED_LEN + MANDATORY_LEN or extoff > pktsz:
            raise DecodeError(f"ar$extoff {extoff} outside the packet (size {pktsz})", 14)
        body_end = extoff
    else:
        body_end = pktsz

    mandatory = optype <= _PURGE_REPLY
    if mandatory:
        sprotolen, dprotolen, flags, reqid = _MANDATORY.unpack_from(data, FIXED_LEN)
        code = offset_or_unused = unused = 0
    else:
        sprotolen, dprotolen, unused, code, offset_or_unused = _INDICATION.unpack_from(
            data, FIXED_LEN
        )
        flags = reqid = 0
    a = FIXED_LEN + MANDATORY_LEN
    s = a + (shtl & TL_LEN)
    p = s + (sstl & TL_LEN)
    d = p + sprotolen
    e = d + dprotolen
    if e > body_end:
        raise DecodeError(
            f"addresses ({e - a} bytes) overrun the mandatory part (ends at {body_end})", a
        )
    src_nbma = address_from_bytes(data[a:s])
    src_sub = data[s:p]
    src_proto = address_from_bytes(data[p:d])
    dst_proto = address_from_bytes(data[d:e])
    cies: tuple[Cie, ...] = ()
    contents = b""
    if mandatory:
        if e < body_end:
            cies = _decode_cies(data, e, body_end)
    else:
        contents = data[e:body_end]
    exts = _decode_extensions(data, extoff, pktsz) if extoff else ()
    is_error = optype == _ERROR
    # Field order of NhrpPacket, as declared above.
    return _make_packet(
        ptype,
        afn,
        pro,
        snap,
        hop,
        version,
        src_nbma,
        src_sub,
        src_proto,
        dst_proto,
        flags,
        reqid,
        cies,
        code if is_error else 0,
        offset_or_unused if is_error else 0,
        code if optype == _TRAFFIC else 0,
        contents,
        exts,
        bool(shtl & TL_E164),
        bool(sstl & TL_E164),
        unused,
    )
