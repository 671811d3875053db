"""Cutting an underlay GRO super-packet back to the tunnel MTU (segment.py)."""

from __future__ import annotations

from ipaddress import IPv4Address

from dmvpn.dataplane.segment import split_tcp4
from dmvpn.wire import GrePacket, IPv4Header, internet_checksum

from .test_forwarding import _forwarder

SRC, DST = IPv4Address("192.168.1.10"), IPv4Address("192.168.2.10")
OPTIONS = bytes.fromhex("0101080a0000000100000002")  # NOP NOP timestamps: a 32-byte header


def _tcp(payload: bytes, seq: int = 1000, flags: int = 0x18 | 0x80, ident: int = 7) -> bytes:
    th = bytearray(20) + OPTIONS
    th[0:4] = (40000).to_bytes(2, "big") + (5201).to_bytes(2, "big")
    th[4:8] = seq.to_bytes(4, "big")
    th[8:12] = (555).to_bytes(4, "big")
    th[12] = (len(th) // 4) << 4
    th[13] = flags
    th[14:16] = (502).to_bytes(2, "big")
    th[16:18] = b"\xde\xad"  # stale, as GRO leaves it
    header = IPv4Header(src=SRC, dst=DST, protocol=6, identification=ident, ttl=63)
    return header.encode(bytes(th) + payload)


def _tcp_ok(piece: bytes) -> bool:
    ihl = (piece[0] & 0x0F) * 4
    segment = piece[ihl:]
    pseudo = piece[12:20] + b"\x00\x06" + len(segment).to_bytes(2, "big")
    return internet_checksum(pseudo + segment) == 0


def test_a_super_packet_is_cut_as_gso_would_cut_it() -> None:
    payload = bytes(range(256)) * 20  # 5120 bytes
    pieces = split_tcp4(_tcp(payload, seq=0xFFFFF000), 1400)
    assert pieces is not None and len(pieces) == 4  # 1348 * 3 + 1076
    assert [len(p) for p in pieces] == [1400, 1400, 1400, 20 + 32 + 1076]
    assert b"".join(p[52:] for p in pieces) == payload
    seqs = [int.from_bytes(p[24:28], "big") for p in pieces]
    assert seqs == [(0xFFFFF000 + 1348 * i) & 0xFFFFFFFF for i in range(4)]  # wraps
    assert [int.from_bytes(p[4:6], "big") for p in pieces] == [7, 8, 9, 10]
    assert [p[33] for p in pieces] == [0x90, 0x10, 0x10, 0x18]  # CWR first, PSH last
    original = _tcp(b"")
    for p in pieces:
        assert internet_checksum(p[:20]) == 0 and _tcp_ok(p)
        assert int.from_bytes(p[2:4], "big") == len(p)
        # Ports, ack, window and options as they were.
        assert p[20:24] == original[20:24] and p[28:32] == original[28:32]
        assert p[34:36] == original[34:36] and p[40:52] == original[40:52]


def test_what_is_not_a_cuttable_tcp_super_packet_goes_as_it_is() -> None:
    big = _tcp(bytes(3000))
    assert split_tcp4(_tcp(bytes(1000)), 1400) is None  # fits already
    udp = bytearray(big)
    udp[9] = 17
    assert split_tcp4(bytes(udp), 1400) is None
    fragment = bytearray(big)
    fragment[6] |= 0x20  # MF
    assert split_tcp4(bytes(fragment), 1400) is None
    assert split_tcp4(big[:-1], 1400) is None  # total length disagrees
    assert split_tcp4(big, 40) is None  # no room for data


def test_the_forwarder_cuts_a_gro_super_packet_from_the_cloud() -> None:
    fw, _, _, tap = _forwarder()
    fw.mtu = 1400
    big = _tcp(bytes(4000))
    fw.from_gre(GrePacket(0x0800, big, key=42).encode(), IPv4Address("198.51.100.12"), 0.0)
    assert [len(f) - 14 for f in tap] == [1400, 1400, 52 + 4000 - 2 * 1348]
    assert fw.stats["rx.gro_split"] == 1 and fw.stats["rx.data"] == 1
    # What fits goes through untouched, stale checksum and all.
    small = _tcp(bytes(100))
    fw.from_gre(GrePacket(0x0800, small, key=42).encode(), IPv4Address("198.51.100.12"), 0.0)
    assert tap[-1][14:] == small and fw.stats["rx.gro_split"] == 1
