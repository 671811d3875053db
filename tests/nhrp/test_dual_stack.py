"""A dual-stack cloud at the engine level: one engine per protocol family on
every node (Cisco's `ip nhrp` + `ipv6 nhrp`), both over the same IPv4 NBMA
addresses, packets routed between them by ar$pro.type (FamilyDispatch)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_network

from dmvpn.dataplane.forwarding import FamilyDispatch
from dmvpn.nhrp import BindingAdded, Engine, EngineConfig, NhsConfig, SendPacket, ShortcutAdded
from dmvpn.nhrp.routing import StaticRouting
from dmvpn.wire import IPv6Header, PacketType, ProtocolType, decode_nhrp

A, B = IPv4Address, IPv6Address
HUB_NBMA = A("192.0.2.1")


class Node:
    def __init__(self, nbma: IPv4Address, v4: str, v6: str, *, hub: bool, lan: int = 0) -> None:
        self.nbma = nbma
        self.routing = StaticRouting()
        nhs4 = () if hub else (NhsConfig(A("10.0.0.1"), HUB_NBMA),)
        nhs6 = () if hub else (NhsConfig(B("fd00::1"), HUB_NBMA),)
        common = dict(nbma_address=nbma, server=hub, redirect=hub, shortcut=not hub)
        self.e4 = Engine(EngineConfig(protocol_address=A(v4), nhs=nhs4, **common), StaticRouting())  # type: ignore[arg-type]
        self.e6 = Engine(EngineConfig(protocol_address=B(v6), nhs=nhs6, **common), self.routing)  # type: ignore[arg-type]
        self.hooks = FamilyDispatch(self.e4, self.e6)
        if lan:
            self.routing.add_local(f"fd00:{lan}::/64")
        self.outputs: list[object] = []


def _run(nodes: dict[IPv4Address, Node], now: float) -> list[tuple[IPv4Address, SendPacket]]:
    """Deliver every NHRP packet until the cloud is quiet; the wire log."""
    wire = []
    for _ in range(50):
        moved = False
        for node in nodes.values():
            for engine in (node.e4, node.e6):
                for out in engine.pop_outputs():
                    if isinstance(out, SendPacket):
                        assert isinstance(out.nbma, IPv4Address)
                        wire.append((node.nbma, out))
                        nodes[out.nbma].hooks.receive(out.data, node.nbma, now)
                        moved = True
                    else:
                        node.outputs.append(out)
        if not moved:
            return wire
    raise AssertionError("the cloud never went quiet")


def _cloud() -> dict[IPv4Address, Node]:
    hub = Node(HUB_NBMA, "10.0.0.1", "fd00::1", hub=True)
    s1 = Node(A("198.51.100.11"), "10.0.0.11", "fd00::11", hub=False, lan=1)
    s2 = Node(A("198.51.100.12"), "10.0.0.12", "fd00::12", hub=False, lan=2)
    # The hub reaches each spoke's LAN through the spoke (OSPFv3 would say so).
    hub.routing.add_route("fd00:1::/64", B("fd00::11"))
    hub.routing.add_route("fd00:2::/64", B("fd00::12"))
    s1.routing.add_route("fd00::/16", B("fd00::1"))
    s2.routing.add_route("fd00::/16", B("fd00::1"))
    nodes = {n.nbma: n for n in (hub, s1, s2)}
    for n in nodes.values():
        n.e4.start(0.0)
        n.e6.start(0.0)
    return nodes


def test_every_spoke_registers_both_families_with_their_own_protocol_type() -> None:
    nodes = _cloud()
    wire = _run(nodes, 0.0)
    hub = nodes[HUB_NBMA]
    regs = [decode_nhrp(s.data) for _, s in wire]
    requests = [p for p in regs if p.type == PacketType.REGISTRATION_REQUEST]
    # Two registrations per spoke, one per family, each with its pro.type.
    assert sorted((str(p.src_proto), p.protocol_type) for p in requests) == [
        ("10.0.0.11", ProtocolType.IPV4),
        ("10.0.0.12", ProtocolType.IPV4),
        ("fd00::11", ProtocolType.IPV6),
        ("fd00::12", ProtocolType.IPV6),
    ]
    bound = {(o.protocol, o.nbma) for o in hub.outputs if isinstance(o, BindingAdded)}
    assert (B("fd00::11"), A("198.51.100.11")) in bound
    assert (A("10.0.0.12"), A("198.51.100.12")) in bound
    # Each engine holds only its own family's registrations.
    assert hub.e6.stats["rx.registration_request"] == 2
    assert hub.e4.stats["rx.registration_request"] == 2


def test_ipv6_hairpin_leads_to_an_ipv6_shortcut() -> None:
    nodes = _cloud()
    _run(nodes, 0.0)
    hub, s1 = nodes[HUB_NBMA], nodes[A("198.51.100.11")]
    # The hub forwarded host1 -> host2 back into the cloud: Traffic Indication.
    packet = IPv6Header(src=B("fd00:1::10"), dst=B("fd00:2::10"), next_header=58).encode(bytes(8))
    hub.hooks.hairpin(packet, s1.nbma, 1.0)
    wire = _run(nodes, 1.0)
    types = [(decode_nhrp(s.data).type, decode_nhrp(s.data).protocol_type) for _, s in wire]
    assert (PacketType.TRAFFIC_INDICATION, ProtocolType.IPV6) in types
    assert all(pt == ProtocolType.IPV6 for _, pt in types)  # the IPv4 engines stay out
    shortcuts = [o for o in s1.outputs if isinstance(o, ShortcutAdded)]
    assert [(s.prefix, s.next_hop, s.nbma) for s in shortcuts] == [
        (ip_network("fd00:2::/64"), B("fd00::12"), A("198.51.100.12"))
    ]
