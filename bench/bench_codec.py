"""Decode and encode rate of a typical Cisco Registration Request.

The packet is frame 1 of tcpdump_NHRP_registration.pcap (Cisco IOS: unique +
NAT flags, one CIE, extensions 3, 4, 5, authentication, Cisco NAT with one
CIE, End). Baselines measured in the same run on the same bytes:
``struct.unpack_from`` of the 20-byte fixed header (the least any decoder
does) and the Internet checksum over the packet (which both directions pay).

Usage: python bench/bench_codec.py [--vectors DIR] [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from dmvpn.decode.dissect import dissect_frame
from dmvpn.decode.pcapfile import read_capture
from dmvpn.wire import decode_nhrp, internet_checksum


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Best of five runs, each about seconds/5 long, in calls per second."""
    n = 1000
    while True:  # calibrate
        t = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t
        if dt > 0.05:
            break
        n *= 2
    per_run = max(1, int(n * (seconds / 5) / dt))
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(per_run):
            fn()
        best = max(best, per_run / (time.perf_counter() - t))
    return best


def main() -> None:
    default = Path(__file__).resolve().parents[2] / "shared" / "vectors"
    ap = argparse.ArgumentParser()
    ap.add_argument("--vectors", type=Path, default=Path(os.environ.get("DMVPN_VECTORS", default)))
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    lt, frames = read_capture(args.vectors / "tcpdump_NHRP_registration.pcap")
    rec = dissect_frame(lt, 1, *next(frames))
    assert rec is not None and rec.nhrp is not None and rec.nhrp_bytes is not None
    data, pkt = rec.nhrp_bytes, rec.nhrp
    assert pkt.encode() == data
    fixed = struct.Struct("!HH5sBHHHBBBB")

    results = {
        "baseline_unpack_fixed_header": rate(lambda: fixed.unpack_from(data, 0), args.seconds),
        "baseline_checksum": rate(lambda: internet_checksum(data), args.seconds),
        "decode": rate(lambda: decode_nhrp(data), args.seconds),
        "encode": rate(pkt.encode, args.seconds),
    }
    base = results["baseline_unpack_fixed_header"]
    print(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "python": platform.python_version(),
                "packet_bytes": len(data),
                "per_second": {k: round(v) for k, v in results.items()},
                "cost_vs_unpack": {k: round(base / v, 1) for k, v in results.items()},
                "microseconds": {k: round(1e6 / v, 2) for k, v in results.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
