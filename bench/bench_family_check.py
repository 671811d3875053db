"""What the engine's NBMA family check (nhrp/family.py) costs a hub: N
first Registration Requests (the full path, not the fast refresh) into a
hub engine with the check and with it replaced by a no-op, alternately,
7 rounds each; medians in microseconds per registration.

Run: python bench/bench_family_check.py [--spokes 5000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from ipaddress import IPv4Address
from typing import Any

import dmvpn.nhrp.engine as engine_module
from dmvpn.nhrp import Engine, EngineConfig, NhsConfig, SendPacket

A = IPv4Address


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spokes", type=int, default=5000)
    args = ap.parse_args()
    real = engine_module.nbma_family_mismatch
    requests = []
    for i in range(args.spokes):
        nbma = A("198.18.0.0") + i
        spoke = Engine(
            EngineConfig(
                protocol_address=A("10.0.0.0") + 2 + i,
                nbma_address=nbma,
                nhs=(NhsConfig(A("10.0.0.1"), A("192.0.2.1")),),
            )
        )
        spoke.start(0.0)
        out = next(o for o in spoke.pop_outputs() if isinstance(o, SendPacket))
        requests.append((out.data, nbma))

    def run(check: bool) -> float:
        engine_module.nbma_family_mismatch = real if check else (lambda *_: None)
        hub = Engine(
            EngineConfig(protocol_address=A("10.0.0.1"), nbma_address=A("192.0.2.1"), server=True)
        )
        hub.events_enabled = False
        hub.start(0.0)
        t = time.perf_counter()
        for data, src in requests:
            hub.receive(data, src, 1.0)
            hub.pop_outputs()
        return (time.perf_counter() - t) / len(requests) * 1e6

    times: dict[bool, list[float]] = {True: [], False: []}
    for r in range(7):
        for check in (True, False) if r % 2 else (False, True):
            times[check].append(run(check))
    engine_module.nbma_family_mismatch = real
    with_, without = statistics.median(times[True]), statistics.median(times[False])
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "us_per_registration_without_check": round(without, 2),
        "us_per_registration_with_check": round(with_, 2),
        "ratio": round(with_ / without, 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
