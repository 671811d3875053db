"""VRRP version 3 for IPv4 (RFC 5798 section 5): the advertisement.

The dual spoke's first-hop redundancy (daemon/vrrp.py) speaks it on the
site LAN, so a real VRRPv3 router (FRR's vrrpd, a Cisco) can share the
group. The checksum covers an IPv4 pseudo-header (RFC 5798 5.2.8), so
encoding and decoding take the packet's source and destination.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from .checksum import internet_checksum
from .errors import DecodeError, EncodeError

__all__ = ["VRRP_GROUP", "VRRP_PROTOCOL", "VrrpAdvert", "decode_vrrp", "virtual_mac"]

VRRP_PROTOCOL = 112  # IP protocol number
VRRP_GROUP = IPv4Address("224.0.0.18")  # where advertisements go, TTL 255
_VERSION_TYPE = 0x31  # version 3, type 1 (advertisement)


def virtual_mac(vrid: int) -> str:
    """The group's MAC address, 00:00:5e:00:01:VRID (RFC 5798 7.3)."""
    return f"00:00:5e:00:01:{vrid:02x}"


@dataclass(frozen=True, slots=True)
class VrrpAdvert:
    vrid: int  # 1-255
    priority: int  # 0: the master resigns; 255: the address owner
    interval_cs: int  # maximum advertisement interval, centiseconds (12 bits)
    addresses: tuple[IPv4Address, ...]

    def encode(self, src: IPv4Address, dst: IPv4Address = VRRP_GROUP) -> bytes:
        if not 1 <= self.vrid <= 255 or not 0 <= self.priority <= 255:
            raise EncodeError(f"vrid {self.vrid} / priority {self.priority} out of range")
        if not 0 < self.interval_cs <= 0xFFF or not 0 < len(self.addresses) <= 255:
            raise EncodeError(f"interval {self.interval_cs} cs / {len(self.addresses)} addresses")
        body = bytearray(
            struct.pack(
                "!BBBBHH",
                _VERSION_TYPE,
                self.vrid,
                self.priority,
                len(self.addresses),
                self.interval_cs,
                0,
            )
        )
        for addr in self.addresses:
            body += addr.packed
        struct.pack_into("!H", body, 6, internet_checksum(_pseudo(src, dst, len(body)) + body))
        return bytes(body)


def _pseudo(src: IPv4Address, dst: IPv4Address, length: int) -> bytes:
    return src.packed + dst.packed + struct.pack("!BBH", 0, VRRP_PROTOCOL, length)


def decode_vrrp(data: bytes, src: IPv4Address, dst: IPv4Address) -> VrrpAdvert:
    """A VRRPv3 advertisement (without its IP header); DecodeError otherwise."""
    if len(data) < 8:
        raise DecodeError("shorter than a VRRP header", 0)
    if data[0] != _VERSION_TYPE:
        raise DecodeError(f"not a VRRPv3 advertisement (version/type {data[0]:#04x})", 0)
    vrid, priority, count, interval = struct.unpack_from("!BBBH", data, 1)
    if vrid == 0:
        raise DecodeError("VRID 0", 1)
    if len(data) < 8 + 4 * count:
        raise DecodeError(f"{count} addresses announced, fewer present", 3)
    if internet_checksum(_pseudo(src, dst, len(data)) + data) != 0:
        raise DecodeError("bad checksum", 6)
    addresses = tuple(IPv4Address(data[8 + 4 * i : 12 + 4 * i]) for i in range(count))
    return VrrpAdvert(vrid, priority, interval & 0xFFF, addresses)
