"""Open our NAT's mapping towards a new direct peer (docs/NAT.md).

Behind a NAT that drops unsolicited packets from outside (every home or
office router), GRE from a peer reaches us only once we have sent GRE to
that peer ourselves: the NAT then holds a mapping whose reply direction the
peer's packets match. When both ends of a shortcut are behind NAT and only
one of them has data to send (a ping, the first segment of a TCP
connection), the other never sends, and its NAT drops everything: a
deadlock. So a node behind NAT sends one packet to each peer it binds
directly: an ICMP echo to the peer's tunnel address, through the tunnel, so
it takes the new binding and leaves as GRE to the peer's (post-NAT) NBMA
address. The peer answers it like any echo; if our NAT or theirs still
drops it, nothing is lost but the probe.

Sent from a raw socket bound to the DMVPN interface, non-blocking: the
event loop never waits for it, and a failure (no route yet, buffer full) is
only counted by the caller.
"""

from __future__ import annotations

import os
import socket
import struct
from ipaddress import IPv4Address

__all__ = ["send_probe"]

# Marks our probes in captures: "dmvpn NAT probe".
_PAYLOAD = b"dmvpn NAT probe\x00"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return int(~(total + (total >> 16)) & 0xFFFF)


def echo_request(ident: int, seq: int) -> bytes:
    """An ICMP echo request (type 8) carrying the probe's payload."""
    header = struct.pack("!BBHHH", 8, 0, 0, ident & 0xFFFF, seq & 0xFFFF)
    return (
        struct.pack("!BBHHH", 8, 0, _checksum(header + _PAYLOAD), ident & 0xFFFF, seq & 0xFFFF)
        + _PAYLOAD
    )


def send_probe(interface: str, peer: IPv4Address, seq: int) -> bool:
    """Send one echo to `peer` (a tunnel address) out of `interface`; False
    if the kernel refused it."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
            sock.sendto(echo_request(os.getpid(), seq), (str(peer), 0))
    except OSError:
        return False
    return True
