"""The C fast path against real sockets on loopback (needs root for raw
sockets; CI runs as root). A SOCK_SEQPACKET pair stands in for the TAP:
one read, one frame, like the TAP device."""

from __future__ import annotations

import os
import socket

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

from ipaddress import IPv4Address as A  # noqa: E402

LOCAL_MAC = b"\x02\x00\x7f\x00\x00\x01"


def _raw(addr: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
    s.bind((addr, 0))
    s.settimeout(1.0)
    return s


def test_tap_to_gre_forwards_unicast_and_punts_the_rest() -> None:
    tap, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tap.setblocking(False)
    out, peer = _raw("127.0.0.1"), _raw("127.0.0.2")
    try:
        inner = IPv4Header(src=A("192.168.1.10"), dst=A("192.168.2.10"), protocol=1).encode(
            b"x" * 30
        )
        kernel.send(nbma_mac(A("127.0.0.2")) + LOCAL_MAC + b"\x08\x00" + inner)
        arp = b"\xff" * 6 + LOCAL_MAC + b"\x08\x06" + bytes(28)
        kernel.send(arp)
        peers, punted = fastpath.tap_to_gre(tap.fileno(), out.fileno(), 42, 64)
        assert punted == [arp]
        ((nbma, packets, size, dst),) = peers
        assert (nbma, packets, size, dst) == (A("127.0.0.2").packed, 1, 8 + len(inner),
                                             A("192.168.2.10").packed)  # fmt: skip
        data = peer.recv(65535)
        gre = decode_gre(data[(data[0] & 15) * 4 :])
        assert (gre.key, gre.protocol, gre.payload) == (42, 0x0800, inner)
    finally:
        for s in (tap, kernel, out, peer):
            s.close()


def test_gre_to_tap_writes_frames_and_punts_nhrp_and_foreign_keys() -> None:
    tap, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    kernel.settimeout(1.0)
    sender, me = _raw("127.0.0.1"), _raw("127.0.0.2")
    me.setblocking(False)
    try:
        inner = IPv4Header(src=A("192.168.2.10"), dst=A("192.168.1.10"), protocol=1).encode(
            b"y" * 20
        )
        nhrp = GrePacket(0x2001, b"nhrp!", key=42).encode()
        foreign = GrePacket(0x0800, inner, key=7).encode()
        for gre in (GrePacket(0x0800, inner, key=42).encode(), nhrp, foreign):
            sender.sendto(gre, ("127.0.0.2", 0))
        peers, punted = fastpath.gre_to_tap(me.fileno(), tap.fileno(), 42, LOCAL_MAC, 64)
        assert kernel.recv(65535) == LOCAL_MAC + nbma_mac(A("127.0.0.1")) + b"\x08\x00" + inner
        assert [p[0] for p in peers] == [A("127.0.0.1").packed]
        assert punted == [(nhrp, A("127.0.0.1").packed), (foreign, A("127.0.0.1").packed)]
    finally:
        for s in (tap, kernel, sender, me):
            s.close()
