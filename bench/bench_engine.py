"""NHRP engine at hub scale: registration throughput, memory, and the simulator.

Measured, each against a baseline taken in the same run (compare ratios):

1. Hub registration throughput. One hub ``Engine`` (10.0.0.1 / 192.0.2.1,
   NHS, events off) is fed pre-encoded Cisco-layout Registration Requests
   from ``--spokes`` distinct spokes (tunnel 10.1.0.1 upwards, NBMA
   198.18.0.1 upwards). The packets are a real spoke engine's request (U +
   NAT flags, one CIE, responder, forward and reverse transit, Cisco NAT
   with one CIE, End) with the addresses and request ID replaced. Timed:
   ``engine.receive(data, src_nbma, now)`` plus draining ``pop_outputs()``,
   so decode, engine logic and encoding the reply are all included. Then the
   same spokes register again (new request IDs): the refresh path.
   Baseline: ``decode_nhrp`` of the same packets alone. Virtual time advances
   1 ms per packet, well inside the default max-send refill (100,000 per 10 s),
   so no reply is rate limited. Target: at least 20,000 registrations/s.
2. Memory. VmRSS of this process with every packet prebuilt but none fed
   (baseline), after the registrations (and after the refreshes); the delta
   is the hub's state for ``--spokes`` registrations. Target: under 300 MB.
   The observed source addresses are prebuilt too, so they sit in the
   baseline, not the delta.
3. Simulator. Wall-clock seconds of ``run_scenario(spokes=N, phase=3,
   traffic_seconds=10)`` for ``--sim-spokes`` N (target under 60 s at 10,000),
   against the same scenario with N/10 spokes; reported per spoke.

   ``--auth SECRET``: hub and spokes with Cisco authentication (the packets
   then carry it, 108 bytes). ``--nat``: every spoke behind a NAT of its
   own (it claims 172.16.0.1 upwards, its packets come from 198.18.0.1
   upwards), so the hub adds the spoke's post-NAT CIE to each reply.

Run (one core):  taskset -c 1 python bench/bench_engine.py [--quick]
Profile a part:  python bench/bench_engine.py --profile hub|refresh|sim
                 (cProfile top 15 by tottime on stderr, then the JSON)
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import platform
import pstats
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from ipaddress import IPv4Address
from typing import Any

from dmvpn.nhrp import Engine, EngineConfig, NhsConfig, SendPacket
from dmvpn.nhrp.sim import run_scenario
from dmvpn.wire import NhrpPacket, PacketType, decode_nhrp

HUB_TUNNEL = IPv4Address("10.0.0.1")
HUB_NBMA = IPv4Address("192.0.2.1")
FIRST_SPOKE_TUNNEL = IPv4Address("10.1.0.1")
FIRST_SPOKE_NBMA = IPv4Address("198.18.0.1")  # RFC 2544 benchmarking range
FIRST_SPOKE_INSIDE = IPv4Address("172.16.0.1")  # what a spoke behind NAT claims (--nat)
# Set from the command line: the cloud's password (--auth) and NAT (--nat).
AUTH: bytes | None = None
NAT = False
TICK = 0.001  # virtual seconds between packets: the default max-send refill rate


@dataclass
class Workload:
    """Prebuilt input: one registration and one refresh per spoke."""

    nbmas: list[IPv4Address]
    register: list[bytes]
    refresh: list[bytes]


def rss_mb() -> float:
    """Resident set size of this process (VmRSS), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def spoke_config(index: int) -> EngineConfig:
    return EngineConfig(
        protocol_address=FIRST_SPOKE_TUNNEL + index,
        nbma_address=(FIRST_SPOKE_INSIDE if NAT else FIRST_SPOKE_NBMA) + index,
        nhs=(NhsConfig(HUB_TUNNEL, HUB_NBMA),),
        request_id_start=index + 1,
        authentication=AUTH,
    )


def spoke_request(index: int) -> NhrpPacket:
    """The Registration Request a real spoke engine sends first."""
    spoke = Engine(spoke_config(index))
    spoke.events_enabled = False
    spoke.start(0.0)
    sent = [o for o in spoke.pop_outputs() if isinstance(o, SendPacket)]
    assert len(sent) == 1 and sent[0].packet.type == PacketType.REGISTRATION_REQUEST
    return sent[0].packet


def build_workload(spokes: int) -> Workload:
    template = spoke_request(0)
    nbmas = [FIRST_SPOKE_NBMA + i for i in range(spokes)]
    register: list[bytes] = []
    refresh: list[bytes] = []
    for i, nbma in enumerate(nbmas):
        claimed = FIRST_SPOKE_INSIDE + i if NAT else nbma
        pkt = replace(
            template, src_nbma=claimed, src_proto=FIRST_SPOKE_TUNNEL + i, request_id=i + 1
        )
        register.append(pkt.encode())
        refresh.append(replace(pkt, request_id=spokes + i + 1).encode())
    # The template trick must give exactly what a spoke engine would send.
    for i in {0, spokes // 2, spokes - 1}:
        assert register[i] == spoke_request(i).encode(), f"spoke {i}: template differs"
    return Workload(nbmas, register, refresh)


def hub_engine() -> Engine:
    hub = Engine(
        EngineConfig(
            protocol_address=HUB_TUNNEL, nbma_address=HUB_NBMA, server=True, authentication=AUTH
        )
    )
    hub.events_enabled = False
    hub.start(0.0)
    hub.pop_outputs()
    return hub


def feed(hub: Engine, packets: list[bytes], nbmas: list[IPv4Address], start: float) -> float:
    """Feed every packet (receive + drain outputs); wall seconds taken."""
    receive = hub.receive
    pop = hub.pop_outputs
    t = time.perf_counter()
    for i, (data, nbma) in enumerate(zip(packets, nbmas, strict=True)):
        receive(data, nbma, start + i * TICK)
        pop()
    return time.perf_counter() - t


def decode_all(packets: list[bytes]) -> float:
    """Baseline: decode every packet; wall seconds taken."""
    t = time.perf_counter()
    for data in packets:
        decode_nhrp(data)
    return time.perf_counter() - t


def profiled(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` under cProfile; top 15 by tottime on stderr."""
    prof = cProfile.Profile()
    result = prof.runcall(fn)
    pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(15)
    return result


def bench_hub(spokes: int, profile: str | None) -> dict[str, Any]:
    work = build_workload(spokes)
    decode_s = min(decode_all(work.register) for _ in range(3))
    gc.collect()
    rss_before = rss_mb()

    hub = hub_engine()
    if profile == "hub":
        register_s = profiled(lambda: feed(hub, work.register, work.nbmas, 1.0))
    else:
        register_s = feed(hub, work.register, work.nbmas, 1.0)
    gc.collect()
    rss_registered = rss_mb()
    refresh_start = 1.0 + spokes * TICK + 1.0
    if profile == "refresh":
        refresh_s = profiled(lambda: feed(hub, work.refresh, work.nbmas, refresh_start))
    else:
        refresh_s = feed(hub, work.refresh, work.nbmas, refresh_start)
    gc.collect()
    rss_refreshed = rss_mb()

    stats = hub.stats
    checks = {
        "registrations_accepted": stats.get("registrations.accepted", 0),
        "registrations_refreshed": stats.get("registrations.refreshed", 0),
        "replies_sent": stats.get("tx.registration_reply", 0),
        "rate_limited": stats.get("tx.rate_limited", 0),
        "cache_entries": len(hub.entries()),
        "timer_heap_entries": hub.timer_count,
    }
    assert checks["registrations_accepted"] == spokes, checks
    assert checks["registrations_refreshed"] == spokes, checks
    assert checks["replies_sent"] == 2 * spokes, checks
    decode_rate = spokes / decode_s
    register_rate = spokes / register_s
    refresh_rate = spokes / refresh_s
    state_mb = rss_registered - rss_before
    return {
        "throughput": {
            "spokes": spokes,
            "packet_bytes": len(work.register[0]),
            "baseline_decode_per_second": round(decode_rate),
            "registrations_per_second": round(register_rate),
            "refreshes_per_second": round(refresh_rate),
            "microseconds": {
                "baseline_decode": round(1e6 / decode_rate, 2),
                "registration": round(1e6 / register_rate, 2),
                "refresh": round(1e6 / refresh_rate, 2),
            },
            "cost_vs_decode": {
                "registration": round(decode_rate / register_rate, 2),
                "refresh": round(decode_rate / refresh_rate, 2),
            },
            "target_per_second": 20_000,
            "target_met": register_rate >= 20_000 and refresh_rate >= 20_000,
        },
        "memory": {
            "baseline_rss_mb": round(rss_before, 1),
            "registered_rss_mb": round(rss_registered, 1),
            "refreshed_rss_mb": round(rss_refreshed, 1),
            "hub_state_mb": round(state_mb, 1),
            "hub_state_after_refresh_mb": round(rss_refreshed - rss_before, 1),
            "bytes_per_spoke": round(state_mb * 1024 * 1024 / spokes),
            "target_mb": 300,
            "target_met": rss_registered < 300,
        },
        "checks": checks,
    }


def bench_sim(spokes: int, profile: str | None) -> dict[str, Any]:
    baseline_spokes = max(2, spokes // 10)

    def timed(n: int) -> dict[str, Any]:
        # The simulator reads no clock: the wall time is taken here.
        start = time.perf_counter()
        result = run_scenario(spokes=n, phase=3, traffic_seconds=10)
        result["wall_seconds"] = round(time.perf_counter() - start, 3)
        return result

    base = timed(baseline_spokes)
    full = profiled(lambda: timed(spokes)) if profile == "sim" else timed(spokes)
    base_per_spoke = base["wall_seconds"] / baseline_spokes
    full_per_spoke = full["wall_seconds"] / spokes
    return {
        "spokes": spokes,
        "wall_seconds": full["wall_seconds"],
        "baseline_spokes": baseline_spokes,
        "baseline_wall_seconds": base["wall_seconds"],
        "ms_per_spoke": round(1e3 * full_per_spoke, 3),
        "baseline_ms_per_spoke": round(1e3 * base_per_spoke, 3),
        "per_spoke_ratio": round(full_per_spoke / base_per_spoke, 2),
        "target_seconds": 60,
        "target_met": full["wall_seconds"] < 60,
        "summary": full,
        "baseline_summary": base,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spokes", type=int, default=100_000, help="registering spokes (hub)")
    ap.add_argument("--sim-spokes", type=int, default=10_000, help="spokes in the simulator")
    ap.add_argument("--quick", action="store_true", help="a small run: 5,000 and 500 spokes")
    ap.add_argument("--profile", choices=("hub", "refresh", "sim"), help="cProfile one part")
    ap.add_argument("--auth", metavar="SECRET", help="Cisco authentication on hub and spokes")
    ap.add_argument("--nat", action="store_true", help="every spoke behind a NAT of its own")
    args = ap.parse_args()
    global AUTH, NAT
    AUTH = args.auth.encode() if args.auth is not None else None
    NAT = args.nat
    if args.quick:
        args.spokes, args.sim_spokes = 5_000, 500
    if args.spokes < 2 or args.sim_spokes < 2:
        ap.error("--spokes and --sim-spokes must be at least 2")

    hub = bench_hub(args.spokes, args.profile)
    sim = bench_sim(args.sim_spokes, args.profile)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    print(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "python": platform.python_version(),
                "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
                "cpu_affinity": cpus,
                "hub": hub,
                "simulator": sim,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
