"""GRE over an IPv6 underlay against GRE over IPv4, in one run. Needs root
(network namespaces).

Three phase 3 labs are up at once, the same cloud on different underlays:

- ``ipv4``: the default lab (IPv4 NBMA addresses); plain unicast IPv4 takes
  the C pump where it is built.
- ``ipv4-python``: the same with `path_mtu_discovery: true`, which keeps
  every packet on the Python path (the pump does not decide DF): the
  baseline for the next one, whose packets all take that path too.
- ``ipv6``: `underlay: ipv6` (IPv6-only NBMA addresses, GRE over raw
  AF_INET6 sockets); the C pump speaks GRE over IPv4 only, so the Python
  forwarder carries every packet.

For each, after host1 -> host2's shortcut is up: round-trip time (ping
host1 -> host2, the median of 50) and TCP throughput (iperf3 host1 ->
host2), the labs taken in turn round after round (each round starting
with the next lab) so that load drifts alike for all.

Run: sudo python bench/bench_ipv6_underlay.py [--seconds 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_lab import iperf, rtts
from dmvpn.lab.netns import Lab
from dmvpn.lab.runner import Runner, dmvpn_command
from dmvpn.lab.topology import Topology

VARIANTS: dict[str, dict[str, Any]] = {
    "ipv4": {},
    "ipv4-python": {"path_mtu_discovery": True},
    "ipv6": {"underlay": "ipv6"},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_ipv6_underlay.py needs root (network namespaces)")
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "load_start": round(os.getloadavg()[0], 2),
    }
    labs: dict[str, Lab] = {}
    try:
        for i, (name, extra) in enumerate(VARIANTS.items()):
            topo = Topology.from_data({"phase": 3, **extra})
            lab = Lab(topo, prefix=f"dmvu{i}-", state_path=Path(tempfile.mkdtemp()) / "lab.json")
            labs[name] = lab
            lab.up()
            runner = Runner(lab, dmvpn_command())
            runner.start()
            runner.wait_registered()
        dst = str(Topology.default().plan("host2").lan.ip)  # type: ignore[union-attr]
        for lab in labs.values():  # the shortcut (hub redirect, resolution)
            lab.exec("host1", ["ping", "-c", "5", "-i", "0.2", "-W", "1", dst], capture_output=True)
        time.sleep(1)
        tcp: dict[str, list[float]] = {name: [] for name in labs}
        rtt: dict[str, list[float]] = {name: [] for name in labs}
        names = list(labs)
        for r in range(args.rounds):
            # Each round starts with another lab: a load change mid-round
            # does not always fall on the same one.
            for name in names[r % len(names) :] + names[: r % len(names)]:
                lab = labs[name]
                rtt[name] += rtts(lab, "host1", dst)
                tcp[name].append(round(iperf(lab, "host2", "host1", dst, args.seconds), 1))
        result["tcp_mbit"] = tcp
        result["rtt_ms_median"] = {n: round(statistics.median(r), 3) for n, r in rtt.items()}
        best = {n: max(v) for n, v in tcp.items()}
        result["ratios"] = {
            "tcp_ipv6_over_ipv4_python": round(best["ipv6"] / best["ipv4-python"], 3),
            "tcp_ipv6_over_ipv4": round(best["ipv6"] / best["ipv4"], 3),
            "rtt_ipv6_over_ipv4_python": round(
                result["rtt_ms_median"]["ipv6"] / result["rtt_ms_median"]["ipv4-python"], 3
            ),
            "rtt_ipv6_over_ipv4": round(
                result["rtt_ms_median"]["ipv6"] / result["rtt_ms_median"]["ipv4"], 3
            ),
        }
        result["load_end"] = round(os.getloadavg()[0], 2)
    finally:
        for lab in labs.values():
            lab.down()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
