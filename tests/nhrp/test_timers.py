"""The timer heap: a key is due once, at the time it was last scheduled for,
and refreshes do not grow the heap (issue 20). Sans-IO; milliseconds."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

from dmvpn.nhrp import Engine, EngineConfig, NhsConfig, SendPacket
from dmvpn.nhrp.timers import ExpireTimer, NhsTimer, Timers
from dmvpn.wire import decode_nhrp

A = IPv4Address


def test_a_key_moved_later_fires_once_at_its_new_time() -> None:
    t = Timers()
    key = ExpireTimer(A("10.0.0.2"), 32)
    t.schedule(10.0, key)
    t.schedule(20.0, key)
    assert t.heap_size == 1 and len(t) == 1
    assert t.next_deadline() == 10.0  # early wake-up, never late
    assert t.pop_due(10.0) == []
    assert t.next_deadline() == 20.0
    assert t.pop_due(19.9) == []
    assert t.pop_due(20.0) == [key]
    assert len(t) == 0 and t.heap_size == 0


def test_a_key_moved_earlier_fires_once_at_its_new_time() -> None:
    t = Timers()
    key = ExpireTimer(A("10.0.0.2"), 32)
    t.schedule(20.0, key)
    t.schedule(5.0, key)
    assert t.pop_due(5.0) == [key]
    assert t.pop_due(30.0) == []  # the entry the move left is skipped
    assert t.heap_size == 0


def test_distinct_keys_fire_in_time_order() -> None:
    t = Timers()
    a, b = NhsTimer(0, 1), NhsTimer(0, 2)
    t.schedule(3.0, b)
    t.schedule(1.0, a)
    assert t.pop_due(5.0) == [a, b]


def test_a_key_rescheduled_after_firing_fires_again() -> None:
    t = Timers()
    key = ExpireTimer(A("10.0.0.2"), 32)
    t.schedule(1.0, key)
    assert t.pop_due(1.0) == [key]
    t.schedule(2.0, key)
    assert t.pop_due(2.0) == [key]


def test_refreshes_keep_the_hub_timer_heap_flat() -> None:
    """10 spokes refreshing 200 times each: one heap entry per binding."""
    hub = Engine(
        EngineConfig(protocol_address=A("10.0.0.1"), nbma_address=A("192.0.2.1"), server=True)
    )
    hub.events_enabled = False
    hub.start(0.0)
    spoke = Engine(
        EngineConfig(
            protocol_address=A("10.0.0.2"),
            nbma_address=A("198.18.0.1"),
            nhs=(NhsConfig(A("10.0.0.1"), A("192.0.2.1")),),
        )
    )
    spoke.start(0.0)
    (request,) = [o.packet for o in spoke.pop_outputs() if isinstance(o, SendPacket)]
    now = 0.0
    sizes = []
    for r in range(200):
        for i in range(10):
            pkt = replace(
                request,
                src_nbma=A("198.18.0.1") + i,
                src_proto=A("10.0.0.2") + i,
                request_id=r * 10 + i + 1,
            )
            now += 0.01
            hub.receive(pkt.encode(), A("198.18.0.1") + i, now)
        replies = [o for o in hub.pop_outputs() if isinstance(o, SendPacket)]
        assert len(replies) == 10 and all(decode_nhrp(o.data).cies for o in replies)
        sizes.append(hub.timer_count)
    assert len(hub.cache_view(now)) >= 10
    assert max(sizes) <= 10 + 2, sizes  # 2000 refreshes, still one entry per spoke
