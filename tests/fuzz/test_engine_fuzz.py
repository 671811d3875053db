"""No input makes an engine raise or hit an internal error: mutated real and
generated packets, from any source address, at hub and spoke alike."""

from __future__ import annotations

import random
from ipaddress import IPv4Address
from pathlib import Path

from dmvpn.nhrp import Engine, EngineConfig, NhsConfig, StaticRouting
from dmvpn.nhrp.sim import build_cloud

from ..vectors import nhrp_payloads
from .mutate import mutate

A = IPv4Address


def _engines() -> list[Engine]:
    routing = StaticRouting()
    routing.add_route("192.168.0.0/16", A("10.0.0.12"))
    routing.add_local("192.168.11.0/24")
    hub = Engine(
        EngineConfig(
            protocol_address=A("10.0.0.1"), nbma_address=A("192.0.2.1"), server=True, redirect=True
        ),
        routing,
    )
    spoke = Engine(
        EngineConfig(
            protocol_address=A("10.0.0.11"),
            nbma_address=A("198.51.100.11"),
            nhs=(NhsConfig(A("10.0.0.1"), A("192.0.2.1")),),
            shortcut=True,
            authentication=None,
        ),
        routing,
    )
    return [hub, spoke]


def _sim_packets() -> list[bytes]:
    """Packets a real exchange produces: a phase 3 cloud's traffic."""
    net = build_cloud(spokes=4, phase=3, holding_time=30)
    captured: list[bytes] = []
    original = net._transmit

    def tap(sender, out):  # type: ignore[no-untyped-def]
        captured.append(out.data)
        original(sender, out)

    net._transmit = tap  # type: ignore[method-assign]
    net.start()
    net.run_until(2)
    for a, b in ((0, 1), (2, 3), (1, 0)):
        lan = net.nodes[f"spoke{b + 1}"].lan
        assert lan is not None
        net.send_data(f"spoke{a + 1}", lan.network_address + 10)
        net.run_until(net.now + 1)
    net.kill("hub1")
    net.run_until(net.now + 60)
    return captured


def test_engines_survive_mutated_packets(vectors: Path) -> None:
    seeds = nhrp_payloads(vectors) + _sim_packets()
    assert len(seeds) > 30
    rng = random.Random(42)
    engines = _engines()
    sources = [A("192.0.2.1"), A("198.51.100.11"), A("198.51.100.12"), A("203.0.113.5")]
    now = 0.0
    for engine in engines:
        engine.start(now)
    for i in range(30_000):
        now += 0.01
        data = seeds[i % len(seeds)] if i % 10 == 0 else mutate(rng, seeds[i % len(seeds)])
        engine = engines[i % 2]
        engine.receive(data, rng.choice(sources), now)
        if i % 7 == 0:
            engine.hairpin(data, rng.choice(sources), now)
            engine.next_hop_unbound(A("10.0.0.0") + rng.randrange(256), now)
        deadline = engine.get_timer()
        if deadline is not None and deadline <= now:
            engine.handle_timer(now)
        engine.pop_outputs()
    for engine in engines:
        engine.stop(now)
        engine.pop_outputs()
        assert engine.stats.get("internal_errors", 0) == 0, engine.stats
        assert engine.stats["rx.packets"] > 10_000
