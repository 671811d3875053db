"""Ethernet II frames, with 802.1Q/802.1ad tags kept (the TAP and captures)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import DecodeError, EncodeError

_ETH = struct.Struct("!6s6sH")
_TAG = struct.Struct("!HH")
VLAN_TPIDS = (0x8100, 0x88A8)
BROADCAST = b"\xff" * 6


@dataclass(frozen=True, slots=True)
class EthernetFrame:
    """An Ethernet frame. ``ethertype`` below 0x0600 is an 802.3 length (LLC)."""

    dst: bytes
    src: bytes
    ethertype: int
    payload: bytes
    # (TPID, TCI) of each VLAN tag, outermost first.
    vlan_tags: tuple[tuple[int, int], ...] = ()

    def encode(self) -> bytes:
        if len(self.dst) != 6 or len(self.src) != 6:
            raise EncodeError("Ethernet addresses must be 6 bytes")
        try:
            tags = b"".join(_TAG.pack(tpid, tci) for tpid, tci in self.vlan_tags)
            return self.dst + self.src + tags + self.ethertype.to_bytes(2, "big") + self.payload
        except (struct.error, OverflowError) as exc:
            raise EncodeError(f"Ethernet field out of range: {exc}") from None


def decode_ethernet(data: bytes) -> EthernetFrame:
    if len(data) < 14:
        raise DecodeError(f"Ethernet header needs 14 bytes, {len(data)} available", 0)
    dst, src, etype = _ETH.unpack_from(data, 0)
    off = 12
    tags: list[tuple[int, int]] = []
    while etype in VLAN_TPIDS:
        if len(data) < off + 6:
            raise DecodeError("truncated VLAN tag", off)
        tpid, tci = _TAG.unpack_from(data, off)
        tags.append((tpid, tci))
        off += 4
        etype = int.from_bytes(data[off : off + 2], "big")
    return EthernetFrame(dst, src, etype, data[off + 2 :], tuple(tags))


def mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)
