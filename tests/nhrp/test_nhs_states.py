"""The NHS state machine: one transition method, which announces the
transitions operators follow, and the status rows the engine hands out."""

from __future__ import annotations

from ipaddress import IPv4Address

from dmvpn.nhrp import EngineConfig, Event, NhsConfig, NhsState
from dmvpn.nhrp.client import NhsRecord
from dmvpn.nhrp.core import Core
from dmvpn.nhrp.sim import build_cloud

A = IPv4Address


def _record() -> tuple[NhsRecord, Core]:
    config = EngineConfig(
        protocol_address=A("10.0.0.11"),
        nbma_address=A("198.51.100.11"),
        nhs=(NhsConfig(A("10.0.0.1"), A("192.0.2.1")),),
    )
    core = Core(config, None)
    return NhsRecord(0, config.nhs[0]), core


def _events(core: Core) -> list[tuple[str, dict[str, object]]]:
    return [(o.kind, o.details) for o in core.outputs if isinstance(o, Event)]


def test_a_transition_is_announced_once_and_staying_put_is_silent() -> None:
    s, core = _record()
    s.move(NhsState.PROBING, core)  # a registration starts: silent
    s.move(NhsState.UP, core, holding_time=60)
    s.move(NhsState.UP, core, holding_time=60)  # no transition
    s.move(NhsState.DOWN, core, reason="no answer to 3 registration requests")
    s.move(NhsState.DOWN, core, reason="again")  # already down
    s.move(NhsState.STANDBY, core)
    assert _events(core) == [
        ("nhs-up", {"nhs": "10.0.0.1", "holding_time": 60, "nat": None}),
        ("nhs-down", {"nhs": "10.0.0.1", "reason": "no answer to 3 registration requests"}),
        ("nhs-standby", {"nhs": "10.0.0.1"}),
    ]
    assert s.state is NhsState.STANDBY
    assert {k: n for k, n in core.stats.items() if k.startswith("event.")} == {
        "event.nhs-up": 1,
        "event.nhs-down": 1,
        "event.nhs-standby": 1,
    }


def test_shutdown_moves_to_down_silently() -> None:
    s, core = _record()
    s.move(NhsState.UP, core, holding_time=60)
    core.outputs.clear()
    s.move(NhsState.DOWN, core)  # no reason: the engine's "stopped" says it
    assert s.state is NhsState.DOWN and _events(core) == []


def test_nat_address_learnt_is_in_the_nhs_up_event() -> None:
    s, core = _record()
    s.public_nbma = A("203.0.113.7")
    s.move(NhsState.UP, core, holding_time=30)
    assert _events(core)[0][1]["nat"] == "203.0.113.7"


def test_status_rows_are_copies_with_the_documented_view() -> None:
    net = build_cloud(hubs=2, spokes=1, phase=3, holding_time=30, max_nhs=1)
    net.start()
    net.run_until(1.0)
    spoke = net.nodes["spoke1"].engine
    before = spoke.nhs_states()
    assert [(str(s.protocol), s.state) for s in before] == [
        ("10.0.0.1", NhsState.UP),
        ("10.0.0.2", NhsState.STANDBY),
    ]
    net.kill("hub1")
    net.run_until(net.now + 60)
    assert before[0].state is NhsState.UP  # a snapshot: it does not follow the engine
    after = spoke.nhs_states()
    assert [s.state for s in after] == [NhsState.DOWN, NhsState.UP]
    assert after[0].last_error is not None and after[0].up_since is None
    view = after[1].view(net.now)
    keys = (
        "protocol nbma priority state request_id up_for expires_in retries public_nbma last_error"
    )
    assert list(view) == keys.split()
    assert type(view["state"]) is str and view["state"] == "up"
    assert spoke.nhs_view(net.now) == [s.view(net.now) for s in after]
