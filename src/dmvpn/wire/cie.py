"""Client Information Entries (RFC 2332 5.2.0.1).

A CIE is 12 fixed bytes (code, prefix length, unused, MTU, holding time,
client NBMA type/length, client NBMA subaddress type/length, client protocol
length, preference) followed by the three addresses.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ._fast import fast_constructor
from .errors import DecodeError, EncodeError
from .nhrp_types import (
    TL_E164,
    TL_LEN,
    TL_RESERVED,
    Address,
    CieCode,
    address_bytes,
    address_from_bytes,
)

_CIE = struct.Struct("!BBHHHBBBB")
CIE_FIXED_LEN = _CIE.size  # 12


@dataclass(frozen=True, slots=True, kw_only=True)
class Cie:
    """One Client Information Entry.

    ``prefix_length`` 0xFF in a unique registration is what older Cisco and
    OpenNHRP send, newer Cisco send the host length: both are kept as given.
    """

    code: int = CieCode.SUCCESS
    prefix_length: int = 0
    mtu: int = 0
    holding_time: int = 0
    nbma: Address = b""
    nbma_sub: bytes = b""
    protocol: Address = b""
    preference: int = 0
    nbma_e164: bool = False
    nbma_sub_e164: bool = False

    def encode_into(self, out: bytearray) -> None:
        known = _ENCODED.get(id(self))
        if known is not None and known[0] is self:
            out += known[1]
            return
        start = len(out)
        self._encode_into(out)
        if len(_ENCODED) >= _ENCODED_MAX:
            _ENCODED.clear()
        _ENCODED[id(self)] = (self, bytes(out[start:]))

    def _encode_into(self, out: bytearray) -> None:
        nbma = address_bytes(self.nbma)
        proto = address_bytes(self.protocol)
        sub = self.nbma_sub
        if len(nbma) > TL_LEN or len(sub) > TL_LEN:
            raise EncodeError("CIE NBMA address or subaddress longer than 63 bytes")
        if len(proto) > 0xFF:
            raise EncodeError("CIE protocol address longer than 255 bytes")
        try:
            out += _CIE.pack(
                self.code,
                self.prefix_length,
                0,
                self.mtu,
                self.holding_time,
                len(nbma) | (TL_E164 if self.nbma_e164 else 0),
                len(sub) | (TL_E164 if self.nbma_sub_e164 else 0),
                len(proto),
                self.preference,
            )
        except struct.error as exc:
            raise EncodeError(f"CIE field out of range: {exc}") from None
        out += nbma
        out += sub
        out += proto


_make_cie = fast_constructor(Cie)

# Encoded bytes of CIEs by identity (see extensions._ENCODED): the CIE of a
# Registration Request is decoded once per cloud (wire/nhrp.py) and answered
# as it came. A CIE is at most 12 + 63 + 63 + 255 bytes.
_ENCODED_MAX = 1024
_ENCODED: dict[int, tuple[Cie, bytes]] = {}


def decode_cies(data: bytes, start: int, end: int) -> tuple[Cie, ...]:
    """Decode the CIEs that fill ``data[start:end]`` exactly."""
    cies: list[Cie] = []
    off = start
    while off < end:
        if end - off < CIE_FIXED_LEN:
            raise DecodeError(f"truncated CIE: {end - off} bytes left, 12 needed", off)
        code, plen, _unused, mtu, htime, atl, satl, protolen, pref = _CIE.unpack_from(data, off)
        if (atl | satl) & TL_RESERVED:
            raise DecodeError("reserved bit set in CIE address type/length", off + 8)
        alen = atl & TL_LEN
        slen = satl & TL_LEN
        a = off + CIE_FIXED_LEN
        s = a + alen
        p = s + slen
        nxt = p + protolen
        if nxt > end:
            raise DecodeError(f"CIE addresses ({alen}+{slen}+{protolen} bytes) overrun", off)
        # Field order of Cie: code, prefix_length, mtu, holding_time, nbma,
        # nbma_sub, protocol, preference, nbma_e164, nbma_sub_e164.
        cies.append(
            _make_cie(
                code,
                plen,
                mtu,
                htime,
                address_from_bytes(data[a:s]),
                data[s:p],
                address_from_bytes(data[p:nxt]),
                pref,
                bool(atl & TL_E164),
                bool(satl & TL_E164),
            )
        )
        off = nxt
    return tuple(cies)
