"""ARP for IPv4 over Ethernet (RFC 826): what the TAP data plane answers."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address

from .errors import DecodeError

_ARP = struct.Struct("!HHBBH6s4s6s4s")
ARP_LEN = _ARP.size  # 28


class ArpOp(IntEnum):
    REQUEST = 1
    REPLY = 2


@dataclass(frozen=True, slots=True)
class ArpPacket:
    op: int
    sender_mac: bytes
    sender_ip: IPv4Address
    target_mac: bytes
    target_ip: IPv4Address

    def encode(self) -> bytes:
        return _ARP.pack(
            1,
            0x0800,
            6,
            4,
            self.op,
            self.sender_mac,
            self.sender_ip.packed,
            self.target_mac,
            self.target_ip.packed,
        )


def decode_arp(data: bytes) -> ArpPacket:
    if len(data) < ARP_LEN:
        raise DecodeError(f"ARP packet needs 28 bytes, {len(data)} available", 0)
    htype, ptype, hlen, plen, op, smac, sip, tmac, tip = _ARP.unpack_from(data, 0)
    if htype != 1 or ptype != 0x0800 or hlen != 6 or plen != 4:
        raise DecodeError(f"not Ethernet/IPv4 ARP (htype {htype}, ptype 0x{ptype:04x})", 0)
    return ArpPacket(op, smac, IPv4Address(sip), tmac, IPv4Address(tip))
