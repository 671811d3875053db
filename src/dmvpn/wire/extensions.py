"""NHRP extensions (RFC 2332 5.3, Cisco authentication and NAT).

Each extension is ``type`` (16 bits: compulsory bit 0x8000, type in the low 14
bits), ``length`` (16 bits, of the value only) and the value. Values are not
padded: Cisco sends a 9-byte authentication value followed directly by End.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

from ._fast import fast_constructor
from .cie import Cie, decode_cies
from .errors import DecodeError, EncodeError
from .nhrp_types import EXT_COMPULSORY, EXT_TYPE_MASK, ExtensionType

_EXT = struct.Struct("!HH")
_U32 = struct.Struct("!I")

# Cisco's authentication type 1: a cleartext password of at most 8 bytes.
AUTH_TYPE_CLEARTEXT = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class EndExtension:
    """End of extensions: the last one; nothing may follow it."""

    TYPE: ClassVar[int] = ExtensionType.END
    compulsory: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponderAddressExtension:
    """Empty in a request; one CIE describing the responder in a reply."""

    TYPE: ClassVar[int] = ExtensionType.RESPONDER_ADDRESS
    cies: tuple[Cie, ...] = ()
    compulsory: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardTransitNhsExtension:
    """Each NHS forwarding the request appends a CIE for itself."""

    TYPE: ClassVar[int] = ExtensionType.FORWARD_TRANSIT_NHS
    cies: tuple[Cie, ...] = ()
    compulsory: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class ReverseTransitNhsExtension:
    """Each NHS forwarding the reply appends a CIE for itself."""

    TYPE: ClassVar[int] = ExtensionType.REVERSE_TRANSIT_NHS
    cies: tuple[Cie, ...] = ()
    compulsory: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthenticationExtension:
    """Cisco layout: 32-bit authentication type, then the secret as is."""

    TYPE: ClassVar[int] = ExtensionType.AUTHENTICATION
    data: bytes = b""
    auth_type: int = AUTH_TYPE_CLEARTEXT
    compulsory: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class VendorPrivateExtension:
    TYPE: ClassVar[int] = ExtensionType.VENDOR_PRIVATE
    oui: bytes = b"\x00\x00\x00"
    data: bytes = b""
    compulsory: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class NatAddressExtension:
    """Cisco NAT address extension: zero or more CIEs.

    In a Registration Request the spoke lists its NHS; in the reply the NHS
    adds a CIE with the spoke's post-NAT NBMA address. Cisco sends it
    non-compulsory.
    """

    TYPE: ClassVar[int] = ExtensionType.NAT_ADDRESS
    cies: tuple[Cie, ...] = ()
    compulsory: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class UnknownExtension:
    """An extension this codec does not interpret, kept as bytes.

    The engine answers a compulsory one with error 1 (unrecognized extension)
    and forwards a non-compulsory one unchanged (RFC 2332 5.3).
    """

    type: int
    data: bytes = b""
    compulsory: bool = False

    @property
    def TYPE(self) -> int:
        return self.type


Extension: TypeAlias = (
    EndExtension
    | ResponderAddressExtension
    | ForwardTransitNhsExtension
    | ReverseTransitNhsExtension
    | AuthenticationExtension
    | VendorPrivateExtension
    | NatAddressExtension
    | UnknownExtension
)

_CIE_EXTENSIONS: dict[
    int,
    type[ResponderAddressExtension]
    | type[ForwardTransitNhsExtension]
    | type[ReverseTransitNhsExtension]
    | type[NatAddressExtension],
] = {
    ExtensionType.RESPONDER_ADDRESS: ResponderAddressExtension,
    ExtensionType.FORWARD_TRANSIT_NHS: ForwardTransitNhsExtension,
    ExtensionType.REVERSE_TRANSIT_NHS: ReverseTransitNhsExtension,
    ExtensionType.NAT_ADDRESS: NatAddressExtension,
}


_CIE_EXTENSION_CLASSES = frozenset(_CIE_EXTENSIONS.values())


# Encoded bytes of extensions by identity: (the extension, its bytes), the
# extension held so that its id stays its own. Values are immutable, so an
# extension encodes the same every time; a hub's replies carry the same
# objects over and over (the request's decoded once, wire/nhrp.py; its own
# responder and authentication, nhrp/packets.py). Bounded in entries and size.
_ENCODED_MAX = 1024
_ENCODED_LEN_MAX = 256
_ENCODED: dict[int, tuple[Extension, bytes]] = {}


def encode_extensions(exts: tuple[Extension, ...], out: bytearray) -> None:
    for ext in exts:
        known = _ENCODED.get(id(ext))
        if known is not None and known[0] is ext:
            out += known[1]
            continue
        start = len(out)
        out += b"\x00\x00\x00\x00"  # type and length, filled in below
        if type(ext) in _CIE_EXTENSION_CLASSES:
            for cie in ext.cies:  # type: ignore[union-attr]
                cie.encode_into(out)
        elif isinstance(ext, AuthenticationExtension):
            if not 0 <= ext.auth_type <= 0xFFFFFFFF:
                raise EncodeError(f"authentication type {ext.auth_type} out of range")
            out += _U32.pack(ext.auth_type)
            out += ext.data
        elif isinstance(ext, VendorPrivateExtension):
            if len(ext.oui) != 3:
                raise EncodeError("vendor private extension OUI must be 3 bytes")
            out += ext.oui
            out += ext.data
        elif isinstance(ext, UnknownExtension):
            if not 0 <= ext.type <= EXT_TYPE_MASK:
                raise EncodeError(f"extension type {ext.type} out of range")
            out += ext.data
        length = len(out) - start - 4
        if length > 0xFFFF:
            raise EncodeError(f"extension type {ext.TYPE} is {length} bytes long")
        _EXT.pack_into(out, start, ext.TYPE | (EXT_COMPULSORY if ext.compulsory else 0), length)
        if length <= _ENCODED_LEN_MAX:
            if len(_ENCODED) >= _ENCODED_MAX:
                _ENCODED.clear()
            _ENCODED[id(ext)] = (ext, bytes(out[start:]))


# Plain ints on the hot path: an IntEnum attribute lookup costs ~70 ns.
_END = int(ExtensionType.END)
_AUTH = int(ExtensionType.AUTHENTICATION)
_VENDOR = int(ExtensionType.VENDOR_PRIVATE)
_NAT = int(ExtensionType.NAT_ADDRESS)
_make_end = fast_constructor(EndExtension)
_make_auth = fast_constructor(AuthenticationExtension)
_make_vendor = fast_constructor(VendorPrivateExtension)
_make_unknown = fast_constructor(UnknownExtension)
_make_cie_ext = {t: fast_constructor(cls) for t, cls in _CIE_EXTENSIONS.items()}


def decode_extensions(data: bytes, start: int, end: int) -> tuple[Extension, ...]:
    """Decode the extensions in ``data[start:end]``; End must be the last."""
    exts: list[Extension] = []
    off = start
    while off < end:
        if end - off < 4:
            raise DecodeError(f"truncated extension header: {end - off} bytes left", off)
        raw_type, length = _EXT.unpack_from(data, off)
        compulsory = raw_type >= EXT_COMPULSORY
        if raw_type & 0x4000:
            # RFC 2332 5.3: bit 1 of the type field is reserved.
            raise DecodeError(f"reserved bit set in extension type 0x{raw_type:04x}", off)
        etype = raw_type & EXT_TYPE_MASK
        vstart = off + 4
        vend = vstart + length
        if vend > end:
            raise DecodeError(
                f"extension type {etype} length {length} overruns the packet", off + 2
            )
        # Field order as declared in each class above.
        ext: Extension
        make_cie_ext = _make_cie_ext.get(etype)
        if make_cie_ext is not None:
            try:
                ext = make_cie_ext(decode_cies(data, vstart, vend) if length else (), compulsory)
            except DecodeError:
                if etype != _NAT:
                    raise
                # RFC 2735 gives number 9 to Device Capabilities (8 bytes);
                # a value that is not Cisco CIEs is kept, not fatal.
                ext = _make_unknown(etype, data[vstart:vend], compulsory)
        elif etype == _END:
            if length:
                raise DecodeError(f"End extension with length {length}", off + 2)
            if vend != end:
                raise DecodeError(f"{end - vend} bytes after the End extension", vend)
            ext = _make_end(compulsory)
        elif etype == _AUTH:
            if length < 4:
                raise DecodeError(f"authentication extension of {length} bytes, 4 needed", off + 2)
            (auth_type,) = _U32.unpack_from(data, vstart)
            ext = _make_auth(data[vstart + 4 : vend], auth_type, compulsory)
        elif etype == _VENDOR:
            if length < 3:
                raise DecodeError(f"vendor private extension of {length} bytes, 3 needed", off + 2)
            ext = _make_vendor(data[vstart : vstart + 3], data[vstart + 3 : vend], compulsory)
        else:
            ext = _make_unknown(etype, data[vstart:vend], compulsory)
        exts.append(ext)
        off = vend
    return tuple(exts)
