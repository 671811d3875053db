"""A hub answers a retransmitted Registration Request (the same bytes from
the same NBMA address, soon after) with the reply it already sent, without
registering it again (nhrp/replay.py, issue 20). Sans-IO; milliseconds."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

from dmvpn.nhrp import Engine, EngineConfig, NhsConfig, SendPacket
from dmvpn.nhrp.replay import ReplayCache
from dmvpn.wire import NhrpPacket, PacketType, decode_nhrp

A = IPv4Address
HUB_NBMA, SPOKE_NBMA = A("192.0.2.1"), A("198.18.0.1")


def _hub(**kw: object) -> Engine:
    hub = Engine(
        EngineConfig(
            protocol_address=A("10.0.0.1"),
            nbma_address=HUB_NBMA,
            server=True,
            authentication=b"dmvpn42",
            **kw,  # type: ignore[arg-type]
        )
    )
    hub.start(0.0)
    hub.pop_outputs()
    return hub


def _request(unique: bool = True) -> NhrpPacket:
    spoke = Engine(
        EngineConfig(
            protocol_address=A("10.0.0.2"),
            nbma_address=SPOKE_NBMA,
            nhs=(NhsConfig(A("10.0.0.1"), HUB_NBMA),),
            authentication=b"dmvpn42",
        )
    )
    spoke.start(0.0)
    (pkt,) = [o.packet for o in spoke.pop_outputs() if isinstance(o, SendPacket)]
    return pkt


def _replies(hub: Engine) -> list[SendPacket]:
    return [o for o in hub.pop_outputs() if isinstance(o, SendPacket)]


def test_a_copy_is_answered_with_the_same_reply() -> None:
    hub = _hub()
    data = _request().encode()
    hub.receive(data, SPOKE_NBMA, 1.0)
    (first,) = _replies(hub)
    assert decode_nhrp(first.data).type == PacketType.REGISTRATION_REPLY
    hub.receive(data, SPOKE_NBMA, 2.0)  # the spoke's retransmission
    (again,) = _replies(hub)
    assert again.nbma == SPOKE_NBMA and again.data == first.data
    assert hub.stats["rx.retransmission_replayed"] == 1
    assert hub.stats["rx.registration_request"] == 2
    assert hub.stats["tx.registration_reply"] == 2


def test_a_new_request_or_a_late_copy_is_registered_again() -> None:
    hub = _hub()
    pkt = _request()
    hub.receive(pkt.encode(), SPOKE_NBMA, 1.0)
    _replies(hub)
    refresh = replace(pkt, request_id=pkt.request_id + 1).encode()
    hub.receive(refresh, SPOKE_NBMA, 2.0)  # a refresh: a new request ID
    (reply,) = _replies(hub)
    assert decode_nhrp(reply.data).request_id == pkt.request_id + 1
    hub.receive(refresh, SPOKE_NBMA, 30.0)  # a copy, but long after
    assert len(_replies(hub)) == 1
    assert hub.stats.get("rx.retransmission_replayed", 0) == 0


def test_a_copy_from_elsewhere_or_after_the_binding_went_is_not_replayed() -> None:
    hub = _hub()
    data = _request().encode()
    hub.receive(data, SPOKE_NBMA, 1.0)
    _replies(hub)
    hub.receive(data, A("198.18.0.99"), 1.5)  # same bytes, another NBMA address
    hub.clear(1.6, "all")  # `clear nhrp`: the binding is gone
    hub.pop_outputs()
    hub.receive(data, SPOKE_NBMA, 2.0)
    assert hub.stats.get("rx.retransmission_replayed", 0) == 0
    assert len(hub.cache_view(2.0)) >= 1  # registered anew


def test_max_send_still_limits_replayed_replies() -> None:
    hub = _hub(max_send=1, max_send_interval=100.0)
    data = _request().encode()
    hub.receive(data, SPOKE_NBMA, 1.0)
    assert len(_replies(hub)) == 1
    hub.receive(data, SPOKE_NBMA, 1.5)
    assert _replies(hub) == [] and hub.stats["tx.rate_limited"] == 1


def test_the_cache_forgets_old_answers() -> None:
    cache = ReplayCache(window=10.0, max_entries=3)
    reply = SendPacket(SPOKE_NBMA, _request(), b"x")
    for i in range(5):
        cache.remember(b"r", A("198.18.0.1") + i, float(i), reply, A("10.0.0.2") + i)
    assert len(cache) == 3  # the cap
    cache.remember(b"r", A("198.18.1.1"), 20.0, reply, A("10.0.1.2"))
    assert len(cache) == 1  # the others are older than the window
