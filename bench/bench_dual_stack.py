"""IPv6 over the overlay against IPv4 over the same overlay, in one
dual-stack lab (topology `ipv6: true`). Needs root (network namespaces).

IPv4 unicast takes the C pump where it is built; IPv6 is always punted to
the Python path (the pump moves plain unicast IPv4 only), so this measures
what the dual-stack data plane costs per family, in the same run:

1. TCP throughput, iperf3 host1 -> host2 across the spoke1-spoke2 shortcut,
   IPv6 and IPv4 alternately (``--rounds`` pairs), after both shortcuts
   exist.
2. Round-trip time, ping host1 -> host2 over each family's shortcut.

Run: sudo python bench/bench_dual_stack.py [--seconds 5] [--rounds 2]
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_dual_stack.py needs root (network namespaces)")
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "load": os.getloadavg()[0],
    }
    topo = Topology.from_data({"phase": 3, "ipv6": True})
    lab = Lab(topo, prefix="dmvb6-", state_path=Path(tempfile.mkdtemp()) / "lab.json")
    lab.up()
    try:
        runner = Runner(lab, dmvpn_command())
        runner.start()
        runner.wait_registered()
        host2 = topo.plan("host2")
        v4 = str(host2.lan.ip)  # type: ignore[union-attr]
        v6 = str(host2.lan6.ip)  # type: ignore[union-attr]
        for dst in (v4, v6):  # bring both shortcuts up (hub redirect, resolution)
            lab.exec("host1", ["ping", "-c", "5", "-i", "0.2", "-W", "1", dst], capture_output=True)
        time.sleep(1)
        rounds = []
        for _ in range(args.rounds):
            six = iperf(lab, "host2", "host1", v6, args.seconds)
            four = iperf(lab, "host2", "host1", v4, args.seconds)
            rounds.append(
                {"ipv6_mbit": round(six), "ipv4_mbit": round(four), "ratio": round(six / four, 3)}
            )
        result["throughput"] = rounds
        r4, r6 = rtts(lab, "host1", v4), rtts(lab, "host1", v6)
        result["rtt_ms"] = {
            "ipv4_median": round(statistics.median(r4), 3),
            "ipv6_median": round(statistics.median(r6), 3),
        }
    finally:
        lab.down()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
