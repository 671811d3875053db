"""The userspace mGRE forwarding logic with its I/O replaced by lists."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import Any

from dmvpn.dataplane.forwarding import BROADCAST, FamilyDispatch, Forwarder, mac_nbma, nbma_mac
from dmvpn.dataplane.nd import link_local_nbma
from dmvpn.wire import (
    ArpOp,
    ArpPacket,
    DecodeError,
    GrePacket,
    IPv4Header,
    IPv6Header,
    decode_arp,
    decode_gre,
    internet_checksum,
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


def test_nhrp_in_every_gre_form_is_taken_as_decode_gre_takes_it() -> None:
    """The forwarder reads its own NHRP header without decoding it (issue
    20); every other form goes through decode_gre. Both must agree: same
    payload to the engine, same drops, for keyed and key-less clouds."""
    nhrp = b"\x00\x01\x08\x00" + bytes(range(40))
    forms = [
        GrePacket(0x2001, nhrp, key=42).encode(),
        GrePacket(0x2001, nhrp, key=42, checksum=True).encode(),
        GrePacket(0x2001, nhrp, key=42, sequence=9).encode(),
        GrePacket(0x2001, nhrp, key=43).encode(),
        GrePacket(0x2001, nhrp, key=42 << 8).encode(),
        GrePacket(0x2001, nhrp).encode(),
        GrePacket(0x2001, nhrp, checksum=True).encode(),
        GrePacket(0x2001, b"", key=42).encode(),
        GrePacket(0x2001, b"", key=42).encode()[:6],
        GrePacket(0x2001, b"").encode(),
        GrePacket(0x2001, b"").encode()[:3],
        b"\x20\x01\x20\x01" + nhrp,  # version 1 (PPTP)
        b"\x20\x80\x20\x01" + (42).to_bytes(4, "big") + nhrp,  # reserved bit
        b"\xb0\x00\x20\x01\x00\x00\x00\x00" + (42).to_bytes(4, "big") + nhrp,  # bad checksum
    ]
    for key in (42, None):
        for data in forms:
            engine = FakeEngine()
            fw = Forwarder(
                engine=engine,
                tunnel_address=A("10.0.0.11"),
                local_mac=LOCAL_MAC,
                key=key,
                send_gre=lambda n, d: None,
                write_tap=lambda f: None,
            )
            fw.from_gre(data, PEER, 0.0)
            try:
                gre = decode_gre(data)
            except DecodeError:
                assert engine.calls == [] and fw.stats["rx.bad_gre"] == 1, data.hex()
                assert PEER not in fw.peers
                continue
            if gre.key != key:
                assert engine.calls == [] and fw.stats["rx.foreign_key"] == 1, data.hex()
                assert PEER not in fw.peers
                continue
            assert engine.calls == [("receive", gre.payload, PEER)], (key, data.hex())
            assert fw.stats["rx.nhrp"] == 1 and fw.peers[PEER].rx_bytes == len(data)


def test_hub_reports_hairpinned_traffic() -> None:
    fw, engine, sent, _ = _forwarder(redirect=True)
    packet = _ip("192.168.11.10", "192.168.12.10")
    fw.from_gre(GrePacket(0x0800, packet, key=42).encode(), A("198.51.100.11"), 0.0)
    fw.from_tap(nbma_mac(PEER) + LOCAL_MAC + b"\x08\x00" + packet, 0.0)
    assert ("hairpin", A("198.51.100.11")) in engine.calls
    assert sent[-1][0] == PEER


# ---------------------------------------------------------------- IPv6 overlay

B6 = IPv6Address
OWN6 = B6("fd00::11")
ETH6 = b"\x86\xdd"


def _forwarder6(redirect: bool = False) -> tuple[Forwarder, FakeEngine, list, list]:  # type: ignore[type-arg]
    fw, engine, sent, tap = _forwarder(redirect)
    fw.tunnel_address6 = OWN6
    return fw, engine, sent, tap


def _icmp6(src: IPv6Address, dst: IPv6Address, body: bytes, hop_limit: int = 255) -> bytes:
    pseudo = src.packed + dst.packed + len(body).to_bytes(4, "big") + b"\x00\x00\x00\x3a"
    csum = internet_checksum(pseudo + body[:2] + b"\x00\x00" + body[4:])
    body = body[:2] + csum.to_bytes(2, "big") + body[4:]
    return IPv6Header(src=src, dst=dst, next_header=58, hop_limit=hop_limit).encode(body)


def _ns_frame(target: str, src: IPv6Address = OWN6, unicast_to: bytes | None = None) -> bytes:
    t = B6(target)
    solicited_node = B6(b"\xff\x02" + bytes(9) + b"\x01\xff" + t.packed[13:])
    body = bytes([135, 0, 0, 0, 0, 0, 0, 0]) + t.packed
    if src != B6("::"):
        body += b"\x01\x01" + LOCAL_MAC  # source link-layer address option
    packet = _icmp6(src, solicited_node if unicast_to is None else t, body)
    eth_dst = unicast_to or b"\x33\x33\xff" + t.packed[13:]
    return eth_dst + LOCAL_MAC + ETH6 + packet


def _check_na(frame: bytes, target: str, mac: bytes, dst: IPv6Address, flags: int) -> None:
    """An NA as RFC 4861 7.1.2 has a receiver check it: hop limit 255, the
    ICMPv6 checksum over the pseudo-header, code 0, the target and option."""
    assert frame[12:14] == ETH6 and frame[6:12] == mac
    ip = frame[14:]
    assert ip[6] == 58 and ip[7] == 255
    assert B6(ip[8:24]) == B6(target) and B6(ip[24:40]) == dst
    body = ip[40:]
    assert len(body) == int.from_bytes(ip[4:6], "big")
    pseudo = ip[8:40] + len(body).to_bytes(4, "big") + b"\x00\x00\x00\x3a"
    assert internet_checksum(pseudo + body) == 0
    assert body[0] == 136 and body[1] == 0 and body[4] == flags
    assert B6(body[8:24]) == B6(target) and body[24:26] == b"\x02\x01" and body[26:32] == mac


def test_neighbor_solicitation_answered_from_bindings_else_via_the_hub() -> None:
    fw, engine, sent, tap = _forwarder6()
    fw.bindings[B6("fd00::12")] = PEER
    fw.from_tap(_ns_frame("fd00::12"), 0.0)
    _check_na(tap[-1], "fd00::12", nbma_mac(PEER), OWN6, 0x60)  # Solicited + Override
    assert tap[-1][:6] == LOCAL_MAC and engine.calls == []
    # Unbound: resolve (IPv6 next hop), answer with the hub's MAC meanwhile.
    fw.from_tap(_ns_frame("fd00::13"), 0.0)
    _check_na(tap[-1], "fd00::13", nbma_mac(HUB), OWN6, 0x60)
    assert engine.calls == [("unbound", B6("fd00::13"))]
    # A unicast NS (the kernel's reachability probe) is answered the same way.
    fw.from_tap(_ns_frame("fd00::12", unicast_to=nbma_mac(PEER)), 0.0)
    _check_na(tap[-1], "fd00::12", nbma_mac(PEER), OWN6, 0x60)
    assert sent == [] and fw.stats["nd.answered"] == 2 and fw.stats["nd.via_nhs"] == 1
    # The binding arrives: an unsolicited NA (Override) moves the entry.
    fw.bind(B6("fd00::13"), A("198.51.100.13"))
    _check_na(tap[-1], "fd00::13", nbma_mac(A("198.51.100.13")), B6("ff02::1"), 0x20)
    assert tap[-1][:6] == b"\x33\x33\x00\x00\x00\x01"


def test_peer_link_local_addresses_resolve_from_their_eui64_form() -> None:
    fw, engine, _, tap = _forwarder6()
    # The kernel's EUI-64 address for MAC 02:00:c6:33:64:0c (PEER).
    assert link_local_nbma(B6("fe80::c6ff:fe33:640c")) == PEER
    assert link_local_nbma(B6("fe80::1")) is None
    fw.from_tap(_ns_frame("fe80::c6ff:fe33:640c", src=B6("fe80::aa")), 0.0)
    _check_na(tap[-1], "fe80::c6ff:fe33:640c", nbma_mac(PEER), B6("fe80::aa"), 0x60)
    fw.from_tap(_ns_frame("fe80::1234", src=B6("fe80::aa")), 0.0)
    assert len(tap) == 1 and engine.calls == [] and fw.stats["nd.unanswered"] == 1


def test_dad_router_solicitation_and_mld_never_reach_the_cloud() -> None:
    fw, engine, sent, tap = _forwarder6()
    fw.multicast = [HUB, PEER]
    fw.from_tap(_ns_frame("fd00::11", src=B6("::")), 0.0)  # DAD for our address
    rs = _icmp6(B6("fe80::aa"), B6("ff02::2"), bytes([133, 0, 0, 0, 0, 0, 0, 0]))
    fw.from_tap(b"\x33\x33\x00\x00\x00\x02" + LOCAL_MAC + ETH6 + rs, 0.0)
    # MLDv2 report behind a hop-by-hop header with the router alert.
    report = bytes([143, 0, 0, 0, 0, 0, 0, 0])
    hbh = bytes([58, 0, 5, 2, 0, 0, 1, 0])
    mld = IPv6Header(src=B6("fe80::aa"), dst=B6("ff02::16"), next_header=0, hop_limit=1).encode(
        hbh + report
    )
    fw.from_tap(b"\x33\x33\x00\x00\x00\x16" + LOCAL_MAC + ETH6 + mld, 0.0)
    assert sent == [] and tap == [] and engine.calls == []
    assert fw.stats["nd.dropped.dad"] == 1
    assert fw.stats["nd.dropped.router_solicitation"] == 1
    assert fw.stats["nd.dropped.mld"] == 1


def test_ipv6_frames_become_gre_86dd_and_multicast_is_replicated() -> None:
    fw, engine, sent, _ = _forwarder6()
    packet = _icmp6(B6("fd00:1::10"), B6("fd00:2::10"), bytes([128, 0, 0, 0, 0, 1, 0, 1]), 63)
    fw.from_tap(nbma_mac(PEER) + LOCAL_MAC + ETH6 + packet, 5.0)
    ((nbma, data),) = sent
    gre = decode_gre(data)
    assert nbma == PEER and gre.key == 42 and gre.protocol == 0x86DD and gre.payload == packet
    assert engine.calls == [("used", B6("fd00:2::10"))]
    fw.multicast = [HUB, PEER]
    # OSPFv3 AllSPFRouters
    hello = IPv6Header(src=B6("fe80::aa"), dst=B6("ff02::5"), next_header=89, hop_limit=1).encode(
        bytes(16)
    )
    fw.from_tap(b"\x33\x33\x00\x00\x00\x05" + LOCAL_MAC + ETH6 + hello, 0.0)
    assert [(n, decode_gre(d).protocol) for n, d in sent[1:]] == [(HUB, 0x86DD), (PEER, 0x86DD)]


def test_gre_86dd_becomes_frames_and_the_hub_reports_ipv6_hairpins() -> None:
    fw, engine, sent, tap = _forwarder6(redirect=True)
    packet = _icmp6(B6("fd00:1::10"), B6("fd00:2::10"), bytes([128, 0, 0, 0, 0, 1, 0, 1]), 63)
    fw.from_gre(GrePacket(0x86DD, packet, key=42).encode(), A("198.51.100.11"), 0.0)
    assert tap[-1] == LOCAL_MAC + nbma_mac(A("198.51.100.11")) + ETH6 + packet
    hello = IPv6Header(src=B6("fe80::aa"), dst=B6("ff02::5"), next_header=89).encode(bytes(8))
    fw.from_gre(GrePacket(0x86DD, hello, key=42).encode(), PEER, 0.0)
    assert tap[-1][:6] == b"\x33\x33\x00\x00\x00\x05"
    # A solicitation from the cloud is not ours to answer (we answer ND locally).
    ns = _ns_frame("fd00::11")[14:]
    fw.from_gre(GrePacket(0x86DD, ns, key=42).encode(), PEER, 0.0)
    assert len(tap) == 2 and fw.stats["nd.dropped.from_cloud"] == 1
    # The hub forwards host1's packet back out to spoke2: a hairpin.
    fw.from_tap(nbma_mac(PEER) + LOCAL_MAC + ETH6 + packet, 0.0)
    assert ("hairpin", A("198.51.100.11")) in engine.calls and sent[-1][0] == PEER


def test_ipv4_only_overlay_drops_ipv6_as_before() -> None:
    fw, engine, sent, tap = _forwarder()
    fw.multicast = [HUB]
    fw.from_tap(_ns_frame("fd00::12"), 0.0)
    packet = _icmp6(B6("fd00:1::10"), B6("fd00:2::10"), bytes(8))
    fw.from_tap(nbma_mac(PEER) + LOCAL_MAC + ETH6 + packet, 0.0)
    fw.from_gre(GrePacket(0x86DD, packet, key=42).encode(), PEER, 0.0)
    assert sent == [] and tap == [] and engine.calls == []
    assert fw.stats["tap.unsupported_ethertype"] == 2 and fw.stats["rx.unsupported"] == 1


def test_family_dispatch_sends_each_family_to_its_engine() -> None:
    e4, e6 = FakeEngine(), FakeEngine()
    hooks = FamilyDispatch(e4, e6)
    hooks.receive(b"\x00\x01\x86\xdd rest", HUB, 0.0)  # ar$pro.type 0x86DD
    hooks.receive(b"\x00\x01\x08\x00 rest", HUB, 0.0)
    hooks.next_hop_unbound(B6("fd00::12"), 0.0)
    hooks.next_hop_unbound(A("10.0.0.12"), 0.0)
    hooks.hairpin(b"\x60" + bytes(39), HUB, 0.0)
    hooks.hairpin(b"\x45" + bytes(19), PEER, 0.0)
    hooks.binding_used(B6("fd00:2::10"), 0.0)
    assert e6.calls == [
        ("receive", b"\x00\x01\x86\xdd rest", HUB),
        ("unbound", B6("fd00::12")),
        ("hairpin", HUB),
        ("used", B6("fd00:2::10")),
    ]
    assert e4.calls == [
        ("receive", b"\x00\x01\x08\x00 rest", HUB),
        ("unbound", A("10.0.0.12")),
        ("hairpin", PEER),
    ]
    # IPv4 only: everything to the one engine, as before.
    only = FamilyDispatch(e4)
    only.receive(b"\x00\x01\x86\xdd", HUB, 0.0)
    assert e4.calls[-1] == ("receive", b"\x00\x01\x86\xdd", HUB)


def test_mutated_ipv6_frames_and_gre_never_raise() -> None:
    import random

    rng = random.Random(6)
    fw, _, _, _ = _forwarder6(redirect=True)
    fw.multicast = [HUB]
    fw.bindings[B6("fd00::12")] = PEER
    seeds = [
        _ns_frame("fd00::12"),
        _ns_frame("fe80::c6ff:fe33:640c", src=B6("fe80::aa")),
        _ns_frame("fd00::11", src=B6("::")),
        nbma_mac(PEER) + LOCAL_MAC + ETH6 + _icmp6(B6("fd00:1::1"), B6("fd00:2::1"), bytes(8)),
        b"\x33\x33\x00\x00\x00\x16"
        + LOCAL_MAC
        + ETH6
        + IPv6Header(src=B6("fe80::aa"), dst=B6("ff02::16"), next_header=0).encode(
            bytes([58, 0, 5, 2, 0, 0, 1, 0, 143]) + bytes(7)
        ),
    ]
    for i in range(20_000):
        frame = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            frame[rng.randrange(14, len(frame))] = rng.randrange(256)
        frame = frame[: rng.randint(14, len(frame))] if i % 3 == 0 else frame
        fw.from_tap(bytes(frame), float(i))
        fw.from_gre(GrePacket(0x86DD, bytes(frame[14:]), key=42).encode(), PEER, float(i))
    assert fw.stats["nd.answered"] + fw.stats["nd.link_local"] > 0  # the seeds got through too
