"""The userspace forwarder over an IPv6 underlay (I/O replaced by lists):
peers at IPv6 NBMA addresses get 06:00 TAP MACs, and frames to them leave
as GRE to their IPv6 address; GRE from them reaches the TAP with that MAC;
ARP via the hub and a hub's hairpin work the same."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import Any

from dmvpn.dataplane.forwarding import BROADCAST, Forwarder
from dmvpn.dataplane.nbmamac import nbma_mac
from dmvpn.wire import ArpOp, ArpPacket, GrePacket, IPv4Header, decode_arp, decode_gre

from .test_forwarding import FakeEngine

A, B = IPv4Address, IPv6Address
ME = B("2001:db8:30::11")
HUB = B("2001:db8:30::1")
PEER = B("2001:db8:30::12")
LOCAL_MAC = nbma_mac(ME)


def _forwarder(redirect: bool = False) -> tuple[Forwarder, FakeEngine, list[Any], list[bytes]]:
    engine = FakeEngine()
    sent: list[tuple[Any, bytes]] = []
    tap: list[bytes] = []
    fw = Forwarder(
        engine=engine,
        tunnel_address=A("10.0.0.11"),
        local_mac=LOCAL_MAC,
        key=42,
        send_gre=lambda n, d: sent.append((n, d)),
        write_tap=tap.append,
        redirect=redirect,
    )
    fw.nhs = [HUB]
    return fw, engine, sent, tap


def _ip(src: str, dst: str) -> bytes:
    return IPv4Header(src=A(src), dst=A(dst), protocol=1).encode(bytes(16))


def test_bound_peer_at_an_ipv6_nbma_address_gets_gre_over_ipv6() -> None:
    fw, _engine, sent, tap = _forwarder()
    fw.bind(A("10.0.0.12"), PEER)
    # The gratuitous ARP moving the kernel's entry names the 06:00 MAC.
    arp = decode_arp(tap[-1][14:])
    assert arp.sender_mac == nbma_mac(PEER) and arp.sender_mac[:2] == b"\x06\x00"
    inner = _ip("192.168.1.10", "192.168.2.10")
    fw.from_tap(nbma_mac(PEER) + LOCAL_MAC + b"\x08\x00" + inner, 1.0)
    ((nbma, data),) = sent
    assert nbma == PEER
    gre = decode_gre(data)
    assert gre.key == 42 and gre.payload == inner
    assert fw.peers[PEER].tx_packets == 1


def test_gre_from_an_ipv6_peer_reaches_the_tap_and_nhrp_the_engine() -> None:
    fw, engine, _, tap = _forwarder()
    inner = _ip("192.168.2.10", "192.168.1.10")
    fw.from_gre(GrePacket(0x0800, inner, key=42).encode(), PEER, 1.0)
    assert tap[-1] == LOCAL_MAC + nbma_mac(PEER) + b"\x08\x00" + inner
    fw.from_gre(GrePacket(0x2001, b"nhrp", key=42).encode(), PEER, 1.0)
    assert engine.calls[-1] == ("receive", b"nhrp", PEER)
    assert fw.peers[PEER].rx_packets == 2


def test_unbound_next_hop_goes_via_the_ipv6_hub_and_hairpins_are_seen() -> None:
    fw, engine, sent, tap = _forwarder(redirect=True)
    arp = ArpPacket(ArpOp.REQUEST, LOCAL_MAC, A("10.0.0.11"), bytes(6), A("10.0.0.13")).encode()
    fw.from_tap(BROADCAST + LOCAL_MAC + b"\x08\x06" + arp, 1.0)
    assert ("unbound", A("10.0.0.13")) in engine.calls
    assert decode_arp(tap[-1][14:]).sender_mac == nbma_mac(HUB)
    # A hub: a packet from spoke1 forwarded back out to spoke2 is a hairpin.
    fw.bind(A("10.0.0.12"), PEER)
    inner = _ip("192.168.1.10", "192.168.2.10")
    fw.from_gre(GrePacket(0x0800, inner, key=42).encode(), ME, 1.0)
    fw.from_tap(nbma_mac(PEER) + LOCAL_MAC + b"\x08\x00" + inner, 1.0)
    assert ("hairpin", ME) in engine.calls
    assert sent[-1][0] == PEER
