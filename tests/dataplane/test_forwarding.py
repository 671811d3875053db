"""The userspace mGRE forwarding logic with its I/O replaced by lists."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

from dmvpn.dataplane.forwarding import BROADCAST, Forwarder, mac_nbma, nbma_mac
from dmvpn.wire import (
    ArpOp,
    ArpPacket,
    GrePacket,
    IPv4Header,
    decode_arp,
    decode_gre,
)

A = IPv4Address
LOCAL_MAC = b"\x02\xaa\x00\x00\x00\x01"
HUB = A("192.0.2.1")
PEER = A("198.51.100.12")


class FakeEngine:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def receive(self, data: bytes, src_nbma: Any, now: float) -> None:
        self.calls.append(("receive", data, src_nbma))

    def next_hop_unbound(self, next_hop: Any, now: float) -> None:
        self.calls.append(("unbound", next_hop))

    def hairpin(self, packet: bytes, from_nbma: Any, now: float) -> None:
        self.calls.append(("hairpin", from_nbma))

    def binding_used(self, addr: Any, now: float) -> None:
        self.calls.append(("used", addr))


def _forwarder(redirect: bool = False) -> tuple[Forwarder, FakeEngine, list, list]:  # type: ignore[type-arg]
    engine = FakeEngine()
    sent: list[tuple[IPv4Address, bytes]] = []
    tap: list[bytes] = []
    fw = Forwarder(engine=engine, tunnel_address=A("10.0.0.11"), local_mac=LOCAL_MAC, key=42,
                   send_gre=lambda n, d: sent.append((n, d)), write_tap=tap.append,
                   redirect=redirect)  # fmt: skip
    fw.nhs = [HUB]
    return fw, engine, sent, tap


def _arp_request(target: str) -> bytes:
    arp = ArpPacket(ArpOp.REQUEST, LOCAL_MAC, A("10.0.0.11"), bytes(6), A(target)).encode()
    return BROADCAST + LOCAL_MAC + b"\x08\x06" + arp


def _ip(src: str, dst: str) -> bytes:
    return IPv4Header(src=A(src), dst=A(dst), protocol=1).encode(bytes(16))


def test_mac_carries_the_nbma_address() -> None:
    assert nbma_mac(PEER) == bytes.fromhex("0200c633640c")
    assert mac_nbma(nbma_mac(PEER)) == PEER and mac_nbma(LOCAL_MAC) is None


def test_arp_answered_from_bindings_else_via_the_hub() -> None:
    fw, engine, _, tap = _forwarder()
    fw.bindings[A("10.0.0.12")] = PEER
    fw.from_tap(_arp_request("10.0.0.12"), 0.0)
    reply = decode_arp(tap[-1][14:])
    assert reply.op == ArpOp.REPLY and reply.sender_mac == nbma_mac(PEER)
    assert tap[-1][:6] == LOCAL_MAC
    fw.from_tap(_arp_request("10.0.0.13"), 0.0)
    assert decode_arp(tap[-1][14:]).sender_mac == nbma_mac(HUB)  # temporary: via the hub
    assert engine.calls == [("unbound", A("10.0.0.13"))]
    # When the binding comes, a gratuitous ARP moves the neighbour entry.
    fw.bind(A("10.0.0.13"), A("198.51.100.13"))
    grat = decode_arp(tap[-1][14:])
    assert grat.sender_ip == A("10.0.0.13") and grat.sender_mac == nbma_mac(A("198.51.100.13"))


def test_frames_become_gre_with_the_key_to_the_mac_s_nbma() -> None:
    fw, engine, sent, _ = _forwarder()
    packet = _ip("192.168.11.10", "192.168.12.10")
    fw.from_tap(nbma_mac(PEER) + LOCAL_MAC + b"\x08\x00" + packet, 5.0)
    ((nbma, data),) = sent
    gre = decode_gre(data)
    assert nbma == PEER and gre.key == 42 and gre.protocol == 0x0800 and gre.payload == packet
    assert engine.calls == [("used", A("192.168.12.10"))]


def test_multicast_is_replicated_to_the_map_multicast_set() -> None:
    fw, _, sent, _ = _forwarder()
    fw.multicast = [PEER, A("198.51.100.13")]
    hello = _ip("10.0.0.11", "224.0.0.5")  # OSPF AllSPFRouters
    fw.from_tap(b"\x01\x00\x5e\x00\x00\x05" + LOCAL_MAC + b"\x08\x00" + hello, 0.0)
    assert [n for n, _ in sent] == [PEER, A("198.51.100.13")]


def test_gre_in_becomes_frames_nhrp_goes_to_the_engine_foreign_keys_dropped() -> None:
    fw, engine, _, tap = _forwarder()
    packet = _ip("192.168.12.10", "192.168.11.10")
    fw.from_gre(GrePacket(0x0800, packet, key=42).encode(), PEER, 0.0)
    assert tap[-1] == LOCAL_MAC + nbma_mac(PEER) + b"\x08\x00" + packet
    fw.from_gre(GrePacket(0x0800, _ip("10.0.0.12", "224.0.0.5"), key=42).encode(), PEER, 0.0)
    assert tap[-1][:6] == b"\x01\x00\x5e\x00\x00\x05"
    fw.from_gre(GrePacket(0x2001, b"nhrp", key=42).encode(), PEER, 0.0)
    assert engine.calls == [("receive", b"nhrp", PEER)]
    fw.from_gre(GrePacket(0x0800, packet, key=7).encode(), PEER, 0.0)
    fw.from_gre(GrePacket(0x0800, packet).encode(), PEER, 0.0)
    assert fw.stats["rx.foreign_key"] == 2 and len(tap) == 2


def test_hub_reports_hairpinned_traffic() -> None:
    fw, engine, sent, _ = _forwarder(redirect=True)
    packet = _ip("192.168.11.10", "192.168.12.10")
    fw.from_gre(GrePacket(0x0800, packet, key=42).encode(), A("198.51.100.11"), 0.0)
    fw.from_tap(nbma_mac(PEER) + LOCAL_MAC + b"\x08\x00" + packet, 0.0)
    assert ("hairpin", A("198.51.100.11")) in engine.calls
    assert sent[-1][0] == PEER
