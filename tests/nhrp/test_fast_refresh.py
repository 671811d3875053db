"""The hub's fast refresh: a Registration Request repeating the peer's last
answered one (only request ID and checksum differ) is answered from that
reply's bytes. It must do exactly what the full path does, and anything
else must go the full path (issue 20)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from dmvpn.nhrp import Engine, EngineConfig, SendPacket
from dmvpn.nhrp.outputs import BindingAdded, BindingRemoved
from dmvpn.wire import (
    AuthenticationExtension,
    ErrorCode,
    NhrpPacket,
    PacketType,
    decode_nhrp,
    internet_checksum,
)

from ..vectors import records

A = IPv4Address
SPOKE = A("169.254.100.1")


def _hub(password: bytes = b"NHRPAUTH") -> Engine:
    engine = Engine(
        EngineConfig(
            protocol_address=A("155.1.0.5"),
            nbma_address=A("169.254.100.5"),
            server=True,
            authentication=password,
        )
    )
    engine.start(0.0)
    engine.pop_outputs()
    return engine


@pytest.fixture
def request_pkt(vectors: Path) -> NhrpPacket:
    rec = records(vectors / "tcpdump_NHRP_registration.pcap")[0]
    assert rec.nhrp_bytes is not None
    return decode_nhrp(rec.nhrp_bytes)  # Cisco's: unique, holding 7200, auth NHRPAUTH


def _sends(engine: Engine) -> list[SendPacket]:
    return [o for o in engine.pop_outputs() if isinstance(o, SendPacket)]


def _fast(engine: Engine) -> int:
    return engine.stats.get("registrations.refreshed_fast", 0)


def _state(engine: Engine, now: float) -> tuple[Any, ...]:
    stats = {k: v for k, v in engine.stats.items() if k != "registrations.refreshed_fast"}
    return (engine.cache_view(now), stats, engine.timer_count)


def _full_path(engine: Engine) -> None:
    # Forgetting a claim (identity binding off: no effect on the answer)
    # empties the fast table, so the next request takes the full path.
    engine.set_claims(A("192.0.2.99"), None)


def test_a_repeated_request_is_answered_from_bytes_like_the_full_path(
    request_pkt: NhrpPacket,
) -> None:
    fast, full = _hub(), _hub()
    for hub in (fast, full):
        hub.receive(request_pkt.encode(), SPOKE, 0.0)
        hub.pop_outputs()
    for i, now in enumerate((100.0, 2500.0, 4900.0), start=2):
        data = replace(request_pkt, request_id=i).encode()
        _full_path(full)
        fast.receive(data, SPOKE, now)
        full.receive(data, SPOKE, now)
        a, b = fast.pop_outputs(), full.pop_outputs()
        assert a == b and len(a) == 1  # the reply only: no binding churn
        (reply,) = a
        assert isinstance(reply, SendPacket) and reply.nbma == SPOKE
        assert reply.packet.request_id == i and reply.packet.type == PacketType.REGISTRATION_REPLY
        assert internet_checksum(reply.data) == 0
        assert _state(fast, now) == _state(full, now)
    assert _fast(fast) == 3
    assert _fast(full) == 0
    # Renewed by the last refresh at 4900: alive until 4900 + 7200.
    fast.handle_timer(12099.0)
    assert [e["type"] for e in fast.cache_view(12099.0)].count("dynamic") == 1
    fast.handle_timer(12100.0)
    assert BindingRemoved(A("155.1.0.1"), SPOKE) in fast.pop_outputs()
    # Gone: the same request again binds anew (full path).
    fast.receive(replace(request_pkt, request_id=9).encode(), SPOKE, 12200.0)
    assert BindingAdded(A("155.1.0.1"), SPOKE, "dynamic") in fast.pop_outputs()
    assert _fast(fast) == 3


def _cie(pkt: NhrpPacket, **kw: Any) -> NhrpPacket:
    return replace(pkt, cies=(replace(pkt.cies[0], **kw),))


def _auth(pkt: NhrpPacket, data: bytes) -> NhrpPacket:
    exts = tuple(
        replace(e, data=data) if isinstance(e, AuthenticationExtension) else e
        for e in pkt.extensions
    )
    return replace(pkt, extensions=exts)


CHANGES = {
    "holding time": lambda p: _cie(p, holding_time=600),
    "flags (unique cleared)": lambda p: replace(p, flags=p.flags & ~0x8000),
    "protocol address": lambda p: replace(p, src_proto=A("155.1.0.2")),
    "claimed NBMA": lambda p: replace(p, src_nbma=A("169.254.100.2")),
    "MTU": lambda p: _cie(p, mtu=1400),
    "hop count": lambda p: replace(p, hop_count=254),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_any_changed_field_takes_the_full_path(request_pkt: NhrpPacket, change: str) -> None:
    fast, full = _hub(), _hub()
    for hub in (fast, full):
        hub.receive(request_pkt.encode(), SPOKE, 0.0)
        hub.pop_outputs()
    data = CHANGES[change](replace(request_pkt, request_id=2)).encode()
    _full_path(full)
    fast.receive(data, SPOKE, 50.0)
    full.receive(data, SPOKE, 50.0)
    assert fast.pop_outputs() == full.pop_outputs()
    assert _state(fast, 50.0) == _state(full, 50.0)
    assert _fast(fast) == 0


def test_a_wrong_password_is_never_answered_from_the_cache(request_pkt: NhrpPacket) -> None:
    hub = _hub()
    hub.receive(request_pkt.encode(), SPOKE, 0.0)
    hub.pop_outputs()
    hub.receive(_auth(replace(request_pkt, request_id=2), b"WRONGPWD").encode(), SPOKE, 100.0)
    (err,) = _sends(hub)
    assert err.packet.type == PacketType.ERROR_INDICATION
    assert err.packet.error_code == ErrorCode.AUTHENTICATION_FAILURE
    assert _fast(hub) == 0
    (entry,) = [e for e in hub.cache_view(100.0) if e["type"] == "dynamic"]
    assert entry["expires_in"] == 7100  # not renewed


def test_a_new_password_refuses_the_cached_request(request_pkt: NhrpPacket) -> None:
    hub = _hub()
    hub.receive(request_pkt.encode(), SPOKE, 0.0)
    hub.pop_outputs()
    hub.retune(replace(hub.config, authentication=b"NEWPASS"), 1.0)
    hub.receive(replace(request_pkt, request_id=2).encode(), SPOKE, 100.0)
    (err,) = _sends(hub)
    assert err.packet.error_code == ErrorCode.AUTHENTICATION_FAILURE
    assert _fast(hub) == 0


def test_a_bad_checksum_is_dropped_as_malformed(request_pkt: NhrpPacket) -> None:
    hub = _hub()
    hub.receive(request_pkt.encode(), SPOKE, 0.0)
    hub.pop_outputs()
    data = bytearray(replace(request_pkt, request_id=2).encode())
    data[12] ^= 0x01
    hub.receive(bytes(data), SPOKE, 100.0)
    assert _sends(hub) == []
    assert hub.stats["rx.malformed"] == 1 and _fast(hub) == 0


def test_from_another_nbma_or_after_clear_takes_the_full_path(request_pkt: NhrpPacket) -> None:
    hub = _hub()
    hub.receive(request_pkt.encode(), SPOKE, 0.0)
    hub.pop_outputs()
    hub.clear(1.0)
    hub.pop_outputs()
    hub.receive(replace(request_pkt, request_id=2).encode(), SPOKE, 2.0)
    assert BindingAdded(A("155.1.0.1"), SPOKE, "dynamic") in hub.pop_outputs()
    # From another NBMA: not this peer's last request (and unique: refused).
    hub.receive(replace(request_pkt, request_id=3).encode(), A("169.254.100.9"), 3.0)
    (reply,) = _sends(hub)
    assert reply.packet.cies[0].code != 0
    assert _fast(hub) == 0


def test_many_refreshes_keep_one_timer_per_binding(request_pkt: NhrpPacket) -> None:
    hub = _hub()
    for i in range(1, 1001):
        hub.receive(replace(request_pkt, request_id=i).encode(), SPOKE, float(i))
    assert len(_sends(hub)) == 1000
    assert _fast(hub) == 999
    assert hub.timer_count == 1
