"""Pure codecs: GRE, NHRP, and the Ethernet/ARP/IPv4/IPv6 the data plane needs.

Nothing here does I/O or reads a clock. Decoders take bytes and return
immutable values or raise :class:`DecodeError`; values encode themselves.
"""

from .arp import ArpOp, ArpPacket, decode_arp
from .checksum import internet_checksum
from .cie import Cie
from .errors import DecodeError, EncodeError
from .ethernet import EthernetFrame, decode_ethernet
from .extensions import (
    AuthenticationExtension,
    EndExtension,
    Extension,
    ForwardTransitNhsExtension,
    NatAddressExtension,
    ResponderAddressExtension,
    ReverseTransitNhsExtension,
    UnknownExtension,
    VendorPrivateExtension,
)
from .gre import EtherType, GrePacket, decode_gre
from .ip import IPv4Header, IPv6Header, decode_ip, decode_ipv4, decode_ipv6
from .nhrp import NhrpPacket, decode_nhrp
from .nhrp_group import CISCO_OUI, group_extension, group_of, group_problem
from .nhrp_types import (
    Address,
    AddressFamily,
    CieCode,
    ErrorCode,
    ExtensionType,
    PacketType,
    ProtocolType,
    PurgeFlag,
    RegistrationFlag,
    ResolutionFlag,
    TrafficCode,
    address_bytes,
    address_from_bytes,
    address_text,
)

__all__ = [
    "Address",
    "AddressFamily",
    "ArpOp",
    "ArpPacket",
    "CISCO_OUI",
    "AuthenticationExtension",
    "Cie",
    "CieCode",
    "DecodeError",
    "EncodeError",
    "EndExtension",
    "ErrorCode",
    "EtherType",
    "EthernetFrame",
    "Extension",
    "ExtensionType",
    "ForwardTransitNhsExtension",
    "GrePacket",
    "IPv4Header",
    "IPv6Header",
    "NatAddressExtension",
    "NhrpPacket",
    "PacketType",
    "ProtocolType",
    "PurgeFlag",
    "RegistrationFlag",
    "ResolutionFlag",
    "ResponderAddressExtension",
    "ReverseTransitNhsExtension",
    "TrafficCode",
    "UnknownExtension",
    "VendorPrivateExtension",
    "address_bytes",
    "address_from_bytes",
    "address_text",
    "decode_arp",
    "decode_ethernet",
    "decode_gre",
    "decode_ip",
    "decode_ipv4",
    "decode_ipv6",
    "decode_nhrp",
    "group_extension",
    "group_of",
    "group_problem",
    "internet_checksum",
]
