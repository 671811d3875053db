"""NHRP numbers (RFC 2332 section 5, Cisco and the DMVPN draft) and addresses.

Addresses on the wire are a length and bytes. They are kept as
:class:`ipaddress.IPv4Address` / :class:`ipaddress.IPv6Address` when they are 4
or 16 bytes long, and as raw ``bytes`` otherwise (the empty address, or a
length no address family we know has), so any packet round-trips exactly.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag
from ipaddress import IPv4Address, IPv6Address
from typing import TypeAlias

Address: TypeAlias = IPv4Address | IPv6Address | bytes

NHRP_VERSION = 1
# Cisco and nhrpd send 255; Cisco drops a packet arriving with hop count 0
# (frr issue 951), so never send less than 1.
DEFAULT_HOP_COUNT = 255


class AddressFamily(IntEnum):
    """IANA address family numbers, as used in ar$afn (RFC 2332 5.2.0.1)."""

    IPV4 = 1
    IPV6 = 2


class ProtocolType(IntEnum):
    """ar$pro.type: an Ethernet type for the overlay protocol."""

    IPV4 = 0x0800
    IPV6 = 0x86DD


class PacketType(IntEnum):
    RESOLUTION_REQUEST = 1
    RESOLUTION_REPLY = 2
    REGISTRATION_REQUEST = 3
    REGISTRATION_REPLY = 4
    PURGE_REQUEST = 5
    PURGE_REPLY = 6
    ERROR_INDICATION = 7
    # From the DMVPN draft (Cisco "redirect"); not in RFC 2332.
    TRAFFIC_INDICATION = 8


class ResolutionFlag(IntFlag):
    """Mandatory-part flags of Resolution Request/Reply (RFC 2332 5.2.1)."""

    Q = 0x8000  # requester is a router
    A = 0x4000  # authoritative
    D = 0x2000  # destination is stable
    U = 0x1000  # uniqueness
    S = 0x0800  # source is stable
    NAT = 0x0002  # Cisco: sender understands the NAT extension


class RegistrationFlag(IntFlag):
    """Mandatory-part flags of Registration Request/Reply (RFC 2332 5.2.3)."""

    U = 0x8000  # unique
    NAT = 0x0002


class PurgeFlag(IntFlag):
    """Mandatory-part flags of Purge Request/Reply (RFC 2332 5.2.5)."""

    N = 0x8000  # no reply
    NAT = 0x0002


FLAG_TYPES: dict[PacketType, type[IntFlag]] = {
    PacketType.RESOLUTION_REQUEST: ResolutionFlag,
    PacketType.RESOLUTION_REPLY: ResolutionFlag,
    PacketType.REGISTRATION_REQUEST: RegistrationFlag,
    PacketType.REGISTRATION_REPLY: RegistrationFlag,
    PacketType.PURGE_REQUEST: PurgeFlag,
    PacketType.PURGE_REPLY: PurgeFlag,
}


class CieCode(IntEnum):
    """CIE codes (RFC 2332 5.2.0.1)."""

    SUCCESS = 0
    ADMINISTRATIVELY_PROHIBITED = 4
    INSUFFICIENT_RESOURCES = 5
    # nhrpd sends 11 where RFC 2332 says 12 for "no binding".
    NO_BINDING_NHRPD = 11
    NO_BINDING = 12
    BINDING_NOT_UNIQUE = 13
    UNIQUE_ADDRESS_REGISTERED = 14


class ErrorCode(IntEnum):
    """Error Indication codes (RFC 2332 5.2.7)."""

    UNRECOGNIZED_EXTENSION = 1
    # nhrpd and OpenNHRP send 2 for "loop detected" (a known bug); RFC says 3.
    LOOP_DETECTED_NHRPD = 2
    LOOP_DETECTED = 3
    PROTOCOL_ADDRESS_UNREACHABLE = 6
    PROTOCOL_ERROR = 7
    SDU_SIZE_EXCEEDED = 8
    INVALID_EXTENSION = 9
    INVALID_RESOLUTION_REPLY = 10
    AUTHENTICATION_FAILURE = 11
    HOP_COUNT_EXCEEDED = 15


class TrafficCode(IntEnum):
    REDIRECT = 0


class ExtensionType(IntEnum):
    """Extension types (RFC 2332 5.3; 8 is Vendor Private, 9 Cisco NAT)."""

    END = 0
    RESPONDER_ADDRESS = 3
    FORWARD_TRANSIT_NHS = 4
    REVERSE_TRANSIT_NHS = 5
    AUTHENTICATION = 7
    VENDOR_PRIVATE = 8
    NAT_ADDRESS = 9


EXT_COMPULSORY = 0x8000
EXT_TYPE_MASK = 0x3FFF

# ar$shtl / ar$sstl and the CIE type/length bytes: bit 7 reserved, bit 6 the
# E.164 type, bits 0-5 the length (RFC 2332 5.2.0.1).
TL_RESERVED = 0x80
TL_E164 = 0x40
TL_LEN = 0x3F

_ADDR_CACHE: dict[bytes, Address] = {}
_ADDR_CACHE_MAX = 1 << 16


def address_from_bytes(raw: bytes) -> Address:
    """Typed address for ``raw`` (memoised: decoding is on the hot path)."""
    addr = _ADDR_CACHE.get(raw)
    if addr is not None:
        return addr
    n = len(raw)
    if n == 4:
        addr = IPv4Address(raw)
    elif n == 16:
        addr = IPv6Address(raw)
    else:
        return raw
    if len(_ADDR_CACHE) >= _ADDR_CACHE_MAX:
        _ADDR_CACHE.clear()
    _ADDR_CACHE[raw] = addr
    return addr


def address_bytes(addr: Address) -> bytes:
    """The wire form of an address."""
    if isinstance(addr, bytes):
        return addr
    return addr.packed


def address_text(addr: Address) -> str:
    """How an address is shown to people: dotted/colon form, else hex."""
    if isinstance(addr, bytes):
        return addr.hex() if addr else ""
    return str(addr)


def code_name(enum: type[IntEnum], value: int) -> str:
    """Enum member name for ``value``, or the number when unknown."""
    try:
        return enum(value).name
    except ValueError:
        return str(value)
