"""The IPsec gate (dmvpn.ipsec.gate) without root: what waits for a peer's SA,
what goes when it comes up, what is taken back when it goes."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address

from dmvpn.ipsec.gate import (
    Bind,
    Defer,
    Deliver,
    IpsecGate,
    Route,
    Touch,
    Transmit,
    Unbind,
    Unroute,
)
from dmvpn.nhrp import BindingAdded, BindingRemoved, ShortcutAdded, ShortcutRemoved
from dmvpn.wire import NhrpPacket, PacketType

PEER = IPv4Address("172.30.0.12")
OTHER = IPv4Address("172.30.0.13")
T2 = IPv4Address("10.0.0.12")
LAN2 = IPv4Network("192.168.2.0/24")


def test_without_ipsec_everything_passes_straight_through() -> None:
    gate = IpsecGate(protected=False)
    b = BindingAdded(T2, PEER, "dynamic")
    sc = ShortcutAdded(LAN2, T2, PEER)
    assert gate.send(PEER, b"nhrp") == [Transmit(PEER, b"nhrp")]
    assert gate.receive(b"in", PEER, 1.0) == [Deliver(b"in", PEER, 1.0)]
    assert gate.bind(b) == [Bind(b)]
    assert gate.shortcut(sc) == [Route(sc)]
    # Nothing kept to take back: no SA can go down.
    assert gate.sa_down(PEER) == []
    assert gate.stats == {"held": 0, "held_dropped": 0, "deferred": 0, "resent": 0}


def test_passthrough_only_when_nothing_can_be_held_or_resent() -> None:
    """The daemon skips gate.receive/send when `passthrough` (issue 20): it
    must hold only where they would say Deliver/Transmit for every peer."""
    gate = IpsecGate(protected=False)
    assert gate.passthrough
    for peer in (PEER, OTHER, IPv6Address("2001:db8::1")):
        assert gate.receive(b"in", peer, 1.0) == [Deliver(b"in", peer, 1.0)]
        assert gate.send(peer, b"out") == [Transmit(peer, b"out")]  # type: ignore[arg-type]
    assert gate.passthrough
    protected = IpsecGate(protected=True)
    assert not protected.passthrough  # PEER's NHRP waits for its SA
    protected.send(PEER, _nhrp(PacketType.REGISTRATION_REQUEST, 3))
    protected.sa_up(PEER, 1.0)
    protected.sa_up(OTHER, 1.0)
    assert not protected.passthrough  # a third peer's would wait still
    # Unprotected, but a copy waiting to be resent (not reachable from the
    # daemon, which never makes SAs without IPsec): not passthrough either.
    gate.resend[PEER] = ([2.0], [(b"x", None)])
    assert not gate.passthrough


def test_nhrp_to_a_peer_waits_for_its_sa_and_goes_in_order() -> None:
    gate = IpsecGate(protected=True)
    assert gate.send(PEER, b"one") == [Touch(PEER)]
    assert gate.send(PEER, b"two") == [Touch(PEER)]
    assert gate.send(OTHER, b"elsewhere") == [Touch(OTHER)]
    assert gate.stats["held"] == 3
    assert gate.sa_up(PEER, 1.0) == [Transmit(PEER, b"one"), Transmit(PEER, b"two")]
    assert gate.send(PEER, b"three") == [Transmit(PEER, b"three")]  # up: no wait
    assert list(gate.held) == [OTHER]  # the other peer's still waits


def test_at_most_held_per_peer_wait_the_oldest_dropped() -> None:
    gate = IpsecGate(protected=True, held_per_peer=3)
    for i in range(5):
        gate.send(PEER, bytes([i]))
    assert gate.stats == {"held": 5, "held_dropped": 2, "deferred": 0, "resent": 0}
    assert gate.sa_up(PEER, 1.0) == [Transmit(PEER, bytes([i])) for i in (2, 3, 4)]


def test_bindings_and_shortcuts_are_used_only_once_the_sa_is_up() -> None:
    gate = IpsecGate(protected=True)
    b = BindingAdded(T2, PEER, "dynamic")
    sc = ShortcutAdded(LAN2, T2, PEER)
    assert gate.bind(b) == []
    # The route is reported held, and why; installing it later is announced.
    assert gate.shortcut(sc) == [Defer(sc, "waiting for the IPsec SA to 172.30.0.12")]
    assert gate.holds(LAN2) and gate.stats["deferred"] == 2
    gate.send(PEER, b"req")
    # SA up: the held packet first, then the binding, then the route.
    assert gate.sa_up(PEER, 1.0) == [Transmit(PEER, b"req"), Bind(b), Route(sc, announce=True)]
    assert not gate.holds(LAN2)
    assert gate.pending_binds == {} and gate.pending_shortcuts == {}


def test_a_binding_withdrawn_before_the_sa_came_up_was_never_used() -> None:
    gate = IpsecGate(protected=True)
    gate.bind(BindingAdded(T2, PEER, "dynamic"))
    gate.shortcut(ShortcutAdded(LAN2, T2, PEER))
    assert gate.unbind(BindingRemoved(T2, PEER)) == []
    assert gate.unshortcut(ShortcutRemoved(LAN2, T2)) == []
    assert gate.sa_up(PEER, 1.0) == []  # nothing left to apply


def test_an_sa_going_down_takes_its_bindings_back_until_it_returns() -> None:
    gate = IpsecGate(protected=True)
    gate.sa_up(PEER, 1.0)
    b = BindingAdded(T2, PEER, "dynamic")
    other = BindingAdded(IPv4Address("10.0.0.13"), OTHER, "dynamic")
    sc = ShortcutAdded(LAN2, T2, PEER)
    gate.sa_up(OTHER, 1.0)
    assert gate.bind(b) == [Bind(b)] and gate.bind(other) == [Bind(other)]
    assert gate.shortcut(sc) == [Route(sc)]
    # Route first, then the binding it relies on; the other peer untouched.
    assert gate.sa_down(PEER) == [
        Unroute(ShortcutRemoved(LAN2, T2)),
        Defer(sc, "the IPsec SA to 172.30.0.12 went down"),
        Unbind(BindingRemoved(T2, PEER)),
    ]
    assert gate.send(PEER, b"x") == [Touch(PEER)]
    assert gate.sa_up(PEER, 1.0) == [Transmit(PEER, b"x"), Bind(b), Route(sc, announce=True)]
    # Withdrawn while applied: removed for real.
    assert gate.unbind(BindingRemoved(T2, PEER)) == [Unbind(BindingRemoved(T2, PEER))]
    assert gate.sa_down(PEER) == [
        Unroute(ShortcutRemoved(LAN2, T2)),
        Defer(sc, "the IPsec SA to 172.30.0.12 went down"),
    ]


def test_inbound_nhrp_waits_only_under_identity_binding() -> None:
    plain = IpsecGate(protected=True, hold_inbound=False)
    assert plain.receive(b"reg", PEER, 1.0) == [Deliver(b"reg", PEER, 1.0)]
    gate = IpsecGate(protected=True, hold_inbound=True)
    assert gate.receive(b"reg", PEER, 1.0) == [Touch(PEER)]
    assert gate.receive(b"res", PEER, 1.5) == [Touch(PEER)]
    gate.send(PEER, b"reply")
    # The peer's packets reach the engine with the time they arrived, before
    # what waited to go out.
    assert gate.sa_up(PEER, 1.0) == [
        Deliver(b"reg", PEER, 1.0),
        Deliver(b"res", PEER, 1.5),
        Transmit(PEER, b"reply"),
    ]
    assert gate.receive(b"more", PEER, 2.0) == [Deliver(b"more", PEER, 2.0)]


def test_ipv6_nbma_addresses_are_not_gated() -> None:
    gate = IpsecGate(protected=True, hold_inbound=True)
    v6 = IPv6Address("2001:db8::1")
    assert gate.receive(b"x", v6, 1.0) == [Deliver(b"x", v6, 1.0)]
    sc = ShortcutAdded(LAN2, T2, v6)
    assert gate.shortcut(sc) == [Route(sc)]


def _nhrp(type: PacketType, request_id: int) -> bytes:
    return NhrpPacket(
        type=type,
        src_nbma=OTHER,
        src_proto=IPv4Address("10.0.0.11"),
        dst_proto=T2,
        request_id=request_id,
    ).encode()


def test_held_packets_go_once_more_after_the_sa_came_up_unless_answered() -> None:
    """The first copy can reach the peer before its inbound SA is installed
    (issue 18): what was held goes again at each of resend_after; a
    request the peer answered meanwhile does not."""
    gate = IpsecGate(protected=True, resend_after=(0.03,))
    request = _nhrp(PacketType.RESOLUTION_REQUEST, 7)
    reply = _nhrp(PacketType.RESOLUTION_REPLY, 9)  # our answer to the peer's request
    gate.send(PEER, reply)
    gate.send(OTHER, request)
    assert gate.deadline() is None  # nothing sent yet
    assert gate.sa_up(PEER, 10.0) == [Transmit(PEER, reply)]
    assert gate.sa_up(OTHER, 10.01) == [Transmit(OTHER, request)]
    assert gate.deadline() == 10.03
    assert gate.on_timer(10.02) == []  # not yet
    # PEER sends NHRP of its own (its reply to another request of ours):
    # that says nothing of whether our reply arrived, but the peer has its
    # SA now (it sent over it): our reply goes again at once, not at 10.03.
    theirs = _nhrp(PacketType.RESOLUTION_REPLY, 1)
    assert gate.receive(theirs, PEER, 10.02) == [
        Transmit(PEER, reply),
        Deliver(theirs, PEER, 10.02),
    ]
    assert gate.receive(theirs, PEER, 10.021) == [Deliver(theirs, PEER, 10.021)]  # once
    # OTHER answers our request: it arrived, nothing to resend there.
    answer = _nhrp(PacketType.RESOLUTION_REPLY, 7)
    assert gate.receive(answer, OTHER, 10.025) == [Deliver(answer, OTHER, 10.025)]
    # The times stay (the peer's NHRP may have come over another SA).
    assert gate.on_timer(10.03) == [Transmit(PEER, reply)]
    assert gate.stats["resent"] == 2
    assert gate.deadline() is None and gate.on_timer(11.0) == []  # no more


def test_nothing_is_resent_after_the_sa_went_or_when_nothing_was_held() -> None:
    gate = IpsecGate(protected=True)
    assert gate.sa_up(OTHER, 1.0) == [] and gate.deadline() is None
    gate.send(PEER, b"x")
    gate.sa_up(PEER, 1.0)
    gate.sa_down(PEER)
    assert gate.deadline() is None and gate.on_timer(2.0) == []


def test_held_packets_go_again_at_each_resend_time_until_answered() -> None:
    gate = IpsecGate(protected=True, resend_after=(0.01, 0.03))
    request = _nhrp(PacketType.REGISTRATION_REQUEST, 3)
    gate.send(PEER, request)
    assert gate.sa_up(PEER, 5.0) == [Transmit(PEER, request)]
    assert gate.deadline() == 5.01
    assert gate.on_timer(5.01) == [Transmit(PEER, request)]
    assert gate.deadline() == 5.03
    # Answered before the second time: no more.
    gate.receive(_nhrp(PacketType.REGISTRATION_REPLY, 3), PEER, 5.02)
    assert gate.deadline() is None and gate.on_timer(5.03) == []
    assert gate.stats["resent"] == 1
    # A late timer catches up in one go (one copy, not one per time passed).
    gate.send(OTHER, request)
    gate.sa_up(OTHER, 6.0)
    assert gate.on_timer(7.0) == [Transmit(OTHER, request)] and gate.deadline() is None
