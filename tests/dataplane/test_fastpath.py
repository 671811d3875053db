"""The C pump against real sockets on loopback (raw sockets need root; CI
runs as root). A SOCK_SEQPACKET pair stands in for the TAP: one read, one
frame, like the TAP device."""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator
from ipaddress import IPv4Address as A

import pytest

from dmvpn.dataplane.forwarding import nbma_mac
from dmvpn.wire import GrePacket, IPv4Header, decode_gre

try:
    from dmvpn.dataplane import _fastpath as fastpath  # type: ignore[attr-defined]
except ImportError:
    if os.environ.get("CI"):
        raise  # CI installs gcc and builds it: missing there is a failure
    pytest.skip("C fast path not built (no compiler at install time)", allow_module_level=True)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets need root")

LOCAL_MAC = b"\x02\x00\x7f\x00\x00\x02"


def _raw(addr: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
    s.bind((addr, 0))
    s.settimeout(2.0)
    return s


@pytest.fixture
def pump() -> Iterator[dict[str, socket.socket]]:
    """A pump for the node at 127.0.0.2 (key 42), its 'TAP' and punt sockets,
    and a peer at 127.0.0.1."""
    tap, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tap.setblocking(False)
    kernel.settimeout(2.0)
    punt_r, punt_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    punt_r.settimeout(2.0)
    me, peer = _raw("127.0.0.2"), _raw("127.0.0.1")
    me.setblocking(False)
    stop_r, stop_w = os.pipe()
    args = (tap.fileno(), me.fileno(), 42, LOCAL_MAC, punt_w.fileno(), stop_r)
    thread = threading.Thread(target=fastpath.pump, args=args, daemon=True)
    thread.start()
    try:
        yield {"kernel": kernel, "punt": punt_r, "peer": peer}
    finally:
        os.write(stop_w, b"x")
        thread.join(timeout=5)
        assert not thread.is_alive()
        for s in (tap, kernel, punt_r, punt_w, me, peer):
            s.close()
        os.close(stop_r)
        os.close(stop_w)


def _ip(src: str, dst: str, body: bytes) -> bytes:
    return IPv4Header(src=A(src), dst=A(dst), protocol=1).encode(body)


def _next(punt: socket.socket, tag: bytes) -> bytes:
    while True:
        msg = punt.recv(70000)
        if msg[:1] == tag:
            return msg


def test_unicast_goes_straight_through_the_rest_is_punted(pump: dict[str, socket.socket]) -> None:
    kernel, punt, peer = pump["kernel"], pump["punt"], pump["peer"]
    inner = _ip("192.168.1.10", "192.168.2.10", b"x" * 30)
    kernel.send(nbma_mac(A("127.0.0.1")) + LOCAL_MAC + b"\x08\x00" + inner)
    data = peer.recv(65535)
    gre = decode_gre(data[(data[0] & 15) * 4 :])
    assert (gre.key, gre.protocol, gre.payload) == (42, 0x0800, inner)
    arp = b"\xff" * 6 + LOCAL_MAC + b"\x08\x06" + bytes(28)
    kernel.send(arp)
    assert _next(punt, b"T") == b"T" + arp
    # GRE in: plain IPv4 becomes a frame; NHRP and a foreign key are punted.
    back = _ip("192.168.2.10", "192.168.1.10", b"y" * 20)
    nhrp = GrePacket(0x2001, b"nhrp!", key=42).encode()
    foreign = GrePacket(0x0800, back, key=7).encode()
    for packet in (GrePacket(0x0800, back, key=42).encode(), nhrp, foreign):
        peer.sendto(packet, ("127.0.0.2", 0))
    assert kernel.recv(65535) == LOCAL_MAC + nbma_mac(A("127.0.0.1")) + b"\x08\x00" + back
    assert _next(punt, b"G") == b"G" + A("127.0.0.1").packed + nhrp
    assert _next(punt, b"G") == b"G" + A("127.0.0.1").packed + foreign
    # Per-peer totals arrive within 0.1 s.
    stats = _next(punt, b"S")
    nbma, (txp, txb, rxp, rxb), dst = stats[1:5], struct.unpack("=4Q", stats[5:37]), stats[37:41]
    assert (nbma, txp, txb, rxp, rxb) == (
        A("127.0.0.1").packed,
        1,
        8 + len(inner),
        1,
        8 + len(back),
    )
    assert dst == A("192.168.2.10").packed
