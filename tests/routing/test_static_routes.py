"""Tracked static routes and the NHS liveness check, without root: the
decision (`next_hops`), the echo tracker's states, the engine's
`nhs_unreachable`, and the config that asks for them."""

from __future__ import annotations

from ipaddress import IPv4Address, ip_address

import pytest

from dmvpn.config import ConfigError, Route, parse_config
from dmvpn.daemon.liveness import (
    NhsLiveness,
    Reach,
    echo_request,
    echo_request6,
    parse_echo_reply,
    parse_echo_reply6,
)
from dmvpn.daemon.static_routes import next_hops
from dmvpn.nhrp import Engine, EngineConfig, NhsConfig
from dmvpn.nhrp.client import NhsState, NhsStatus
from dmvpn.nhrp.outputs import Event, EventKind

A = IPv4Address


def status(addr: str, state: NhsState, priority: int = 1) -> NhsStatus:
    nbma = A("172.30.0.1")
    return NhsStatus(ip_address(addr), nbma, priority, state, 1, 0, None, 0.0, None, None)


def route(via: object) -> Route:
    return Route.model_validate({"prefix": "192.168.0.0/16", "via": via})


def test_nhs_route_takes_the_best_priority_up_and_ties_share() -> None:
    up, down = NhsState.UP, NhsState.DOWN
    r = route("nhs")
    assert next_hops(r, [status("10.0.0.1", up, 1), status("10.0.0.2", up, 2)]) == (A("10.0.0.1"),)
    assert next_hops(r, [status("10.0.0.1", down, 1), status("10.0.0.2", up, 2)]) == (
        A("10.0.0.2"),
    )
    assert next_hops(r, [status("10.0.0.1", up, 1), status("10.0.0.2", up, 1)]) == (
        A("10.0.0.1"),
        A("10.0.0.2"),
    )
    assert next_hops(r, [status("10.0.0.1", NhsState.PROBING, 1)]) == ()
    # IPv6 NHSes do not carry an IPv4 route.
    assert next_hops(r, [status("fd00::1", up, 1)]) == ()


def test_listed_next_hops_follow_nhs_state_and_others_always_count() -> None:
    r = route(["10.0.0.1", "10.0.0.2", "10.0.0.9"])
    states = [status("10.0.0.1", NhsState.DOWN), status("10.0.0.2", NhsState.UP)]
    assert next_hops(r, states) == (A("10.0.0.2"), A("10.0.0.9"))
    assert next_hops(route("10.0.0.1"), states) == (A("10.0.0.1"),)  # untracked: as given
    assert not route("10.0.0.1").tracked and r.tracked and route("nhs").tracked


def spoke_config(routes: list[dict[str, object]], nhs: list[str] | None = None) -> dict:  # type: ignore[type-arg]
    return {
        "node": "spoke1",
        "interfaces": [
            {
                "name": "dmvpn0",
                "address": "10.0.0.11/24",
                "tunnel": {"source": "172.30.0.11"},
                "nhrp": {
                    "network_id": 1,
                    "nhs": [{"address": a, "nbma": "172.30.0.1"} for a in (nhs or [])],
                    "nhs_liveness": {"interval": 0.5, "multiplier": 3},
                },
            }
        ],
        "routes": routes,
    }


@pytest.mark.parametrize(
    ("routes", "nhs", "problem"),
    [
        (
            [{"prefix": "192.168.0.0/16", "via": "nhs"}],
            [],
            "routes.0.via: nhs, but no interface has an IPv4 NHS",
        ),
        (
            [{"prefix": "192.168.0.0/16", "via": ["10.0.0.1", "10.0.0.1"]}],
            ["10.0.0.1"],
            "routes.0: via lists a next hop twice",
        ),
        (
            [{"prefix": "192.168.0.0/16", "via": ["10.0.0.1", "fd00::1"]}],
            ["10.0.0.1"],
            "routes.0: via fd00::1 is not of the family of prefix 192.168.0.0/16",
        ),
    ],
)
def test_bad_tracked_routes_are_refused_naming_the_field(
    routes: list[dict[str, object]], nhs: list[str], problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(spoke_config(routes, nhs))
    assert any(p.endswith(problem) for p in info.value.problems), info.value.problems


def test_liveness_config_bounds() -> None:
    data = spoke_config([], ["10.0.0.1"])
    data["interfaces"][0]["nhrp"]["nhs_liveness"] = {"interval": 0.01, "multiplier": 1}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert any("nhs_liveness.interval" in p for p in info.value.problems)
    assert any("nhs_liveness.multiplier" in p for p in info.value.problems)


def test_tracker_declares_a_lost_nhs_once_and_only_after_it_answered() -> None:
    t = NhsLiveness([A("10.0.0.1"), A("10.0.0.2")], multiplier=3)
    # 10.0.0.2 never answers (ICMP filtered): never declared lost.
    lost = []
    for i in range(10):
        lost += t.tick(i)
        if i < 4:
            t.reply(A("10.0.0.1"), i + 0.1)
    assert lost == [A("10.0.0.1")]
    assert t.peers[A("10.0.0.1")].state is Reach.LOST
    assert t.peers[A("10.0.0.2")].state is Reach.UNKNOWN
    assert t.reply(A("10.0.0.1"), 11) is True  # back: armed again
    assert t.tick(12) == [] and t.peers[A("10.0.0.1")].state is Reach.ALIVE


def test_echo_reply_parsing_matches_our_identifier_only() -> None:
    req = echo_request(0x1234, 7)
    reply = bytes([0]) + req[1:]  # type 0, checksum not checked by the parser
    ip = bytes([0x45]) + bytes(11) + A("10.0.0.1").packed + A("10.0.0.11").packed
    assert parse_echo_reply(ip + reply, 0x1234) == A("10.0.0.1")
    assert parse_echo_reply(ip + reply, 0x4321) is None
    assert parse_echo_reply(ip + req, 0x1234) is None  # a request, not a reply


def test_icmpv6_echo_request_and_reply_for_ipv6_nhses() -> None:
    req = echo_request6(0x1234, 7)
    assert req[0] == 128 and req[2:4] == b"\0\0"  # the kernel fills the checksum
    reply = bytes([129]) + req[1:]  # a raw ICMPv6 socket reads no IPv6 header
    assert parse_echo_reply6(reply, 0x1234)
    assert not parse_echo_reply6(reply, 0x4321) and not parse_echo_reply6(req, 0x1234)
    t = NhsLiveness([ip_address("fd00::1")], multiplier=3)
    assert t.reply(ip_address("fd00::1"), 0.0) is True


def test_engine_marks_an_unreachable_nhs_down_and_fails_over() -> None:
    cfg = EngineConfig(
        protocol_address=A("10.0.0.11"),
        nbma_address=A("172.30.0.11"),
        nhs=(NhsConfig(A("10.0.0.1"), A("172.30.0.1"), 1),),
    )
    engine = Engine(cfg)
    engine.start(0.0)
    # Not up yet (probing): a lost probe of a probing NHS also counts.
    assert engine.nhs_unreachable(A("10.0.0.1"), 1.0, "no answer to 3 liveness echoes")
    events = [o for o in engine.pop_outputs() if isinstance(o, Event)]
    downs = [e for e in events if e.kind is EventKind.NHS_DOWN]
    assert downs and downs[0].details["reason"] == "no answer to 3 liveness echoes"
    assert engine.nhs_states()[0].state is NhsState.DOWN
    # Already down: nothing changes; unknown address: nothing either.
    assert not engine.nhs_unreachable(A("10.0.0.1"), 2.0, "again")
    assert not engine.nhs_unreachable(A("10.0.0.9"), 2.0, "not an NHS")


def test_dual_hub_example_loads() -> None:
    from pathlib import Path

    from dmvpn.config import load_config

    example = Path(__file__).resolve().parents[2] / "examples" / "spoke-dual-hub.yaml"
    config = load_config(example)
    assert config.routes[0].via == "nhs" and config.routes[0].tracked
    assert config.interfaces[0].nhrp.nhs_liveness is not None
