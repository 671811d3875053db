"""TCP across a small access link: outer fragmentation (the default) against
`tcp_adjust_mss` against `tunnel.path_mtu_discovery`. Needs root.

Each design is its own lab (hub1, spoke1, spoke2, their hosts; phase 3).
Once the spoke1-spoke2 shortcut is up, spoke1's access link (nbma0) is set
to 1380 bytes, as an LTE or PPPoE-over-fibre link would be, and iperf3 sends
host1 -> host2 (the data crosses the small link; the ACKs coming back are
small). Reported per design: TCP Mbit/s (median of the rounds) and the CPU
seconds per GB moved of the two spoke daemons; the baseline, measured in the
same run, is the same lab with the link left at 1500.

    fragment  the outer GRE leaves without DF; spoke1's kernel fragments
              every full-size packet (1428 bytes) in two, spoke2 reassembles
    mss       tcp_adjust_mss: 1312 (1380 - 28 GRE - 40 IPv4/TCP): TCP never
              sends a segment that needs fragmenting
    pmtud     path_mtu_discovery: host1's DF packets that do not fit are
              answered with Fragmentation Needed (MTU 1352); host1's TCP
              lowers its segments (the Python path: no C pump)

With --ipsec every lab also has IPsec (ipsec_psk). pmtud then learns only
the 1400 of charon's ipsec0 TUN device (a local EMSGSIZE); the access link
is found by the kernel for charon's ESP socket, which then fragments ESP
(docs/MTU.md, "Path MTU discovery with IPsec").

Run: sudo python bench/bench_mtu.py [--seconds 5] [--rounds 3] [--ipsec]
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

from bench_lab import _cpu, iperf_run
from dmvpn.lab.netns import Lab
from dmvpn.lab.runner import Runner, dmvpn_command
from dmvpn.lab.topology import Topology

ACCESS_MTU = 1380
DESIGNS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "fragment": {},
    "mss": {"tcp_adjust_mss": ACCESS_MTU - 28 - 40},
    "pmtud": {"path_mtu_discovery": True},
}


def build(name: str, extra: dict[str, Any], ipsec: bool, tmp: Path) -> tuple[Lab, Runner]:
    data: dict[str, Any] = {
        "phase": 3,
        "nodes": {"spokes": [{"name": "spoke1"}, {"name": "spoke2"}]},
        **extra,
    }
    if ipsec:
        data["ipsec_psk"] = "bench-mtu-pre-shared-key"
    lab = Lab(Topology.from_data(data), prefix=f"dbm{name[:4]}-", state_path=tmp / f"{name}.json")
    lab.up()
    runner = Runner(lab, dmvpn_command())
    runner.start()
    runner.wait_registered()
    return lab, runner


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ipsec", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_mtu.py needs root (network namespaces)")
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "load": os.getloadavg()[0],
    }
    designs = dict(DESIGNS)
    if args.ipsec:
        # ESP in UDP (kernel-libipsec, tunnel mode) adds about 80 more: the
        # value tests/e2e/test_mtu_paths.py shows to pass a black hole.
        designs["mss"] = {"tcp_adjust_mss": ACCESS_MTU - 28 - 40 - 80}
    tmp = Path(tempfile.mkdtemp())
    labs: dict[str, tuple[Lab, Runner]] = {}
    try:
        for name, extra in designs.items():
            lab, runner = labs[name] = build(name, extra, args.ipsec, tmp)
            host2 = str(lab.topology.plan("host2").lan.ip)  # type: ignore[union-attr]
            # The shortcut first (through the hub, then direct), small packets.
            lab.exec("host1", ["ping", "-c", "5", "-i", "0.2", host2], capture_output=True)
            time.sleep(1)
            if name != "baseline":
                lab.exec("spoke1", ["ip", "link", "set", "nbma0", "mtu", str(ACCESS_MTU)])
        mbit: dict[str, list[float]] = {k: [] for k in designs}
        cpu: dict[str, list[float]] = {k: [] for k in designs}
        for _ in range(args.rounds):
            for name, (lab, runner) in labs.items():
                host2 = str(lab.topology.plan("host2").lan.ip)  # type: ignore[union-attr]
                pids = [runner.procs[n].pid for n in ("spoke1", "spoke2")]
                before = sum(_cpu(p) for p in pids)
                end = iperf_run(lab, "host2", "host1", host2, args.seconds)["end"]
                used = sum(_cpu(p) for p in pids) - before
                received = float(end["sum_received"]["bytes"])
                mbit[name].append(float(end["sum_received"]["bits_per_second"]) / 1e6)
                cpu[name].append(used / (received / 1e9) if received else float("inf"))
        base = statistics.median(mbit["baseline"])
        result["tcp_mbit"] = {k: [round(v) for v in vs] for k, vs in mbit.items()}
        result["tcp_median_mbit"] = {k: round(statistics.median(v)) for k, v in mbit.items()}
        result["tcp_ratio_to_baseline"] = {
            k: round(statistics.median(v) / base, 3) for k, v in mbit.items()
        }
        result["daemon_cpu_s_per_gb"] = {k: round(statistics.median(v), 2) for k, v in cpu.items()}
    finally:
        for lab, _runner in labs.values():
            lab.down()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
