"""NHRP over an IPv6 underlay at the engine level: NBMA addresses in IPv6
(ar$afn 2, 16-byte source and client NBMA addresses), both protocol
families over them, and packets of the other NBMA family dropped and
counted without touching a binding (nhrp/family.py)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_network

from dmvpn.dataplane.forwarding import FamilyDispatch
from dmvpn.nhrp import BindingAdded, Engine, EngineConfig, NhsConfig, SendPacket, ShortcutAdded
from dmvpn.nhrp.routing import StaticRouting
from dmvpn.wire import (
    AddressFamily,
    Cie,
    IPv4Header,
    NatAddressExtension,
    PacketType,
    decode_nhrp,
)

A, B = IPv4Address, IPv6Address
HUB_NBMA = B("2001:db8:30::1")
S1_NBMA = B("2001:db8:30::11")
S2_NBMA = B("2001:db8:30::12")


class Node:
    def __init__(self, nbma: IPv6Address, v4: str, v6: str, *, hub: bool, lan: int = 0) -> None:
        self.nbma = nbma
        self.routing4 = StaticRouting()
        self.routing6 = StaticRouting()
        nhs4 = () if hub else (NhsConfig(A("10.0.0.1"), HUB_NBMA),)
        nhs6 = () if hub else (NhsConfig(B("fd00::1"), HUB_NBMA),)
        common = dict(nbma_address=nbma, server=hub, redirect=hub, shortcut=not hub)
        self.e4 = Engine(EngineConfig(protocol_address=A(v4), nhs=nhs4, **common), self.routing4)  # type: ignore[arg-type]
        self.e6 = Engine(EngineConfig(protocol_address=B(v6), nhs=nhs6, **common), self.routing6)  # type: ignore[arg-type]
        self.hooks = FamilyDispatch(self.e4, self.e6)
        if lan:
            self.routing4.add_local(f"192.168.{lan}.0/24")
            self.routing6.add_local(f"fd00:{lan}::/64")
        self.outputs: list[object] = []


def _run(nodes: dict[IPv6Address, Node], now: float) -> list[tuple[IPv6Address, SendPacket]]:
    wire = []
    for _ in range(50):
        moved = False
        for node in nodes.values():
            for engine in (node.e4, node.e6):
                for out in engine.pop_outputs():
                    if isinstance(out, SendPacket):
                        assert isinstance(out.nbma, IPv6Address)
                        wire.append((node.nbma, out))
                        nodes[out.nbma].hooks.receive(out.data, node.nbma, now)
                        moved = True
                    else:
                        node.outputs.append(out)
        if not moved:
            return wire
    raise AssertionError("the cloud never went quiet")


def _cloud() -> dict[IPv6Address, Node]:
    hub = Node(HUB_NBMA, "10.0.0.1", "fd00::1", hub=True)
    s1 = Node(S1_NBMA, "10.0.0.11", "fd00::11", hub=False, lan=1)
    s2 = Node(S2_NBMA, "10.0.0.12", "fd00::12", hub=False, lan=2)
    hub.routing4.add_route("192.168.1.0/24", A("10.0.0.11"))
    hub.routing4.add_route("192.168.2.0/24", A("10.0.0.12"))
    for s in (s1, s2):
        s.routing4.add_route("192.168.0.0/16", A("10.0.0.1"))
    nodes = {n.nbma: n for n in (hub, s1, s2)}
    for n in nodes.values():
        n.e4.start(0.0)
        n.e6.start(0.0)
    return nodes


def test_registration_over_ipv6_nbma_is_afn_2_and_binds_ipv6_nbma() -> None:
    nodes = _cloud()
    wire = _run(nodes, 0.0)
    packets = [decode_nhrp(s.data) for _, s in wire]
    assert packets and all(p.afn == AddressFamily.IPV6 for p in packets)
    for (sender, out), p in zip(wire, packets, strict=True):
        # Byte-exact re-encoding of what the engine sent.
        assert p.encode() == out.data
        if p.type in (PacketType.REGISTRATION_REQUEST, PacketType.RESOLUTION_REQUEST):
            assert p.src_nbma == sender  # replies keep the requester's
        assert all(isinstance(c.nbma, IPv6Address | bytes) for c in p.cies)
    hub = nodes[HUB_NBMA]
    bound = {(o.protocol, o.nbma) for o in hub.outputs if isinstance(o, BindingAdded)}
    assert bound == {
        (A("10.0.0.11"), S1_NBMA),
        (A("10.0.0.12"), S2_NBMA),
        (B("fd00::11"), S1_NBMA),
        (B("fd00::12"), S2_NBMA),
    }
    assert all(n.e4.registered and n.e6.registered for n in nodes.values() if n is not hub)


def test_phase3_shortcut_over_ipv6_nbma() -> None:
    nodes = _cloud()
    _run(nodes, 0.0)
    hub, s1 = nodes[HUB_NBMA], nodes[S1_NBMA]
    packet = IPv4Header(src=A("192.168.1.10"), dst=A("192.168.2.10"), protocol=1).encode(bytes(8))
    hub.hooks.hairpin(packet, S1_NBMA, 1.0)
    wire = _run(nodes, 1.0)
    types = [decode_nhrp(s.data).type for _, s in wire]
    assert PacketType.TRAFFIC_INDICATION in types
    assert PacketType.RESOLUTION_REPLY in types
    shortcuts = [o for o in s1.outputs if isinstance(o, ShortcutAdded)]
    assert [(s.prefix, s.next_hop, s.nbma) for s in shortcuts] == [
        (ip_network("192.168.2.0/24"), A("10.0.0.12"), S2_NBMA)
    ]
    # The Resolution Reply came straight from spoke2, its CIE naming
    # spoke2's IPv6 NBMA address.
    reply = next(
        decode_nhrp(s.data)
        for sender, s in wire
        if decode_nhrp(s.data).type == PacketType.RESOLUTION_REPLY and sender == S2_NBMA
    )
    assert reply.afn == AddressFamily.IPV6 and reply.cies[0].nbma == S2_NBMA


def _registration(afn: int, src_nbma: object, cie_nbma: object, **extra: object) -> bytes:
    """A spoke's Registration Request as an IPv6-underlay engine would
    build it, with the family-bearing fields replaced."""
    nodes = _cloud()
    spoke = nodes[S1_NBMA]
    out = next(o for o in spoke.e4.pop_outputs() if isinstance(o, SendPacket))
    pkt = decode_nhrp(out.data)
    cies = tuple(Cie(**{**_cie_fields(c), "nbma": cie_nbma}) for c in pkt.cies)
    return pkt.evolve(afn=afn, src_nbma=src_nbma, cies=cies, **extra).encode()


def _cie_fields(c: Cie) -> dict[str, object]:
    return {f: getattr(c, f) for f in Cie.__dataclass_fields__}


def test_other_nbma_family_is_counted_and_dropped_without_touching_bindings() -> None:
    nodes = _cloud()
    _run(nodes, 0.0)
    hub = nodes[HUB_NBMA]
    before = {(e.protocol, e.nbma) for e in hub.e4.entries()}
    assert (A("10.0.0.11"), S1_NBMA) in before
    hijack = A("203.0.113.66")
    bad = [
        # IPv4 NBMA family throughout (an IPv4-underlay node).
        _registration(AddressFamily.IPV4, hijack, hijack),
        # afn says IPv6, the addresses are IPv4.
        _registration(AddressFamily.IPV6, hijack, b""),
        _registration(AddressFamily.IPV6, S1_NBMA, hijack),
        # A NAT extension CIE of the other family.
        _registration(
            AddressFamily.IPV6,
            S1_NBMA,
            S1_NBMA,
            extensions=(NatAddressExtension(cies=(Cie(nbma=hijack, protocol=A("10.0.0.1")),)),),
        ),
    ]
    for data in bad:
        hub.e4.receive(data, S1_NBMA, 2.0)
    # And an otherwise good packet arriving from an IPv4 source.
    hub.e4.receive(_registration(AddressFamily.IPV6, S1_NBMA, S1_NBMA), hijack, 2.0)
    assert hub.e4.stats["rx.nbma_family_mismatch"] == 5
    assert hub.e4.stats.get("rx.malformed", 0) == 0
    assert not [o for o in hub.e4.pop_outputs() if isinstance(o, SendPacket | BindingAdded)]
    assert {(e.protocol, e.nbma) for e in hub.e4.entries()} == before


def test_ipv4_underlay_engine_drops_ipv6_nbma_packets() -> None:
    nodes = _cloud()
    data = next(o for o in nodes[S1_NBMA].e4.pop_outputs() if isinstance(o, SendPacket)).data
    hub4 = Engine(
        EngineConfig(protocol_address=A("10.0.0.1"), nbma_address=A("192.0.2.1"), server=True)
    )
    hub4.start(0.0)
    before = [(e.protocol, e.type) for e in hub4.entries()]
    hub4.receive(data, A("198.51.100.11"), 0.0)
    assert hub4.stats["rx.nbma_family_mismatch"] == 1
    assert [(e.protocol, e.type) for e in hub4.entries()] == before
    assert not [o for o in hub4.pop_outputs() if isinstance(o, SendPacket | BindingAdded)]


class _CachedHash(IPv4Address):
    """As the data plane hands source addresses over (dataplane/nbma.py)."""


def test_ipv4_subclasses_are_the_ipv4_family() -> None:
    # The family check must ask isinstance: the hub's raw socket names
    # sources as an IPv4Address subclass, and `type(a) is IPv4Address`
    # once dropped every registration in the lab (found merging issue 20's
    # and issue 13's work).
    hub4 = Engine(
        EngineConfig(protocol_address=A("10.0.0.1"), nbma_address=A("192.0.2.1"), server=True)
    )
    spoke4 = Engine(
        EngineConfig(
            protocol_address=A("10.0.0.11"),
            nbma_address=_CachedHash("198.51.100.11"),
            nhs=(NhsConfig(protocol=A("10.0.0.1"), nbma=A("192.0.2.1")),),
        )
    )
    hub4.start(0.0)
    spoke4.start(0.0)
    data = next(o for o in spoke4.pop_outputs() if isinstance(o, SendPacket)).data
    hub4.receive(data, _CachedHash("198.51.100.11"), 0.0)
    assert hub4.stats.get("rx.nbma_family_mismatch", 0) == 0
    assert any(isinstance(o, BindingAdded) for o in hub4.pop_outputs())
