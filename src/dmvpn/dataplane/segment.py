"""TCP/IPv4 super-packets from the underlay's GRO, cut back to the tunnel MTU.

Why: where the kernel's `gre` module is loaded (ip_gre pulls it in: most
servers, every lab guest), GRO merges consecutive GRE packets of one TCP
flow on the underlay NIC into one super-packet, and a raw GRE socket reads
it as it is: one GRE packet whose inner TCP segment is tens of kilobytes
(inner and outer total lengths updated, the inner TCP checksum stale). The
kernel gave no GSO metadata with it, so written to the TAP it is a plain
frame larger than the tunnel's MTU, which the forward path refuses with DF
set (`IpFragFails`): measured in guests, the userspace plane's TCP fell to
0.3-1.7 Mbit/s (bench/RESULTS.md). Cut here into segments that fit, as the
kernel's GSO would (sequence numbers advance, IP ids count up, FIN and PSH
only on the last piece, CWR only on the first, checksums computed afresh).
"""

from __future__ import annotations

from dmvpn.wire import internet_checksum

__all__ = ["split_tcp4"]

_TCP = 6
_FIN, _PSH, _CWR = 0x01, 0x08, 0x80


def split_tcp4(packet: bytes, mtu: int) -> list[bytes] | None:
    """``packet`` (an IPv4 packet longer than ``mtu``) as TCP segments that
    each fit ``mtu``; None if it is not one this can cut (not TCP, a
    fragment, lengths that disagree): it then goes on as it is."""
    if len(packet) < 40 or packet[0] >> 4 != 4 or packet[9] != _TCP:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or int.from_bytes(packet[2:4], "big") != len(packet):
        return None
    if int.from_bytes(packet[6:8], "big") & 0x3FFF:  # MF or an offset: a fragment
        return None
    tcp = packet[ihl:]
    thl = (tcp[12] >> 4) * 4
    mss = mtu - ihl - thl
    payload = packet[ihl + thl :]
    if thl < 20 or mss < 8 or len(tcp) < thl or len(payload) <= mss:
        return None
    seq = int.from_bytes(tcp[4:8], "big")
    ident = int.from_bytes(packet[4:6], "big")
    flags = tcp[13]
    out = []
    for i, off in enumerate(range(0, len(payload), mss)):
        chunk = payload[off : off + mss]
        last = off + mss >= len(payload)
        f = flags if last else flags & ~(_FIN | _PSH)
        if i:
            f &= ~_CWR
        ip = bytearray(packet[:ihl])
        ip[2:4] = (ihl + thl + len(chunk)).to_bytes(2, "big")
        ip[4:6] = ((ident + i) & 0xFFFF).to_bytes(2, "big")
        ip[10:12] = b"\0\0"
        ip[10:12] = internet_checksum(ip).to_bytes(2, "big")
        th = bytearray(tcp[:thl])
        th[4:8] = ((seq + off) & 0xFFFFFFFF).to_bytes(4, "big")
        th[13] = f
        th[16:18] = b"\0\0"
        length = (thl + len(chunk)).to_bytes(2, "big")
        pseudo = bytes(ip[12:20]) + b"\0" + bytes([_TCP]) + length
        th[16:18] = internet_checksum(pseudo + th + chunk).to_bytes(2, "big")
        out.append(bytes(ip) + bytes(th) + chunk)
    return out
