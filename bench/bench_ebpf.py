"""The eBPF data plane against the userspace one and the bare underlay, in
one run. Needs root (network namespaces), clang, bpftool, iperf3.

Two phase 3 labs side by side (hub1, spoke1, spoke2), one with
`dataplane: ebpf` on every router, one with `dataplane: userspace` (the
TAP, raw GRE and C pump). Traffic runs spoke1 -> spoke2 over the
shortcut (to spoke2's tunnel address) and, for the baseline, over the
underlay (to spoke2's NBMA address), so overlay and underlay cross the
same veths. Each round measures underlay, eBPF and userspace in turn
(alternating, so load drifts hit all three alike):

1. TCP throughput, iperf3 (`--rounds` rounds of `--seconds`);
2. 64-byte UDP packet rate received, iperf3 -u -b 0 -l 64;
3. round-trip time, ping (median of 50);
4. CPU seconds per GB at a fixed 400 Mbit/s (iperf3 client and server,
   and spoke1's and spoke2's daemons for the overlays; softirq work is
   counted where the kernel runs it, mostly in the iperf3 processes);
5. first, host1 -> host2 phase 3 switch-over (ping every 2 ms from before
   the shortcut: replies via the hub, lost, time to the direct path).

Run: sudo .venv/bin/python bench/bench_ebpf.py [--seconds 5] [--rounds 5]
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
from bench_lab import RATE, cpu_per_gb, iperf, iperf_run, rtts, switch_over
from dmvpn.lab.netns import Lab
from dmvpn.lab.runner import Runner, dmvpn_command
from dmvpn.lab.topology import Topology


def udp_rate(lab: Lab, server: str, client: str, address: str, seconds: float) -> float:
    """64-byte UDP datagrams per second received (iperf3 at full speed)."""
    end = iperf_run(lab, server, client, address, seconds, "-u", "-b", "0", "-l", "64")["end"]
    received = int(end["sum"]["packets"]) - int(end["sum"]["lost_packets"])
    return received / float(end["sum"]["seconds"])


def lab_of(plane: str, tmp: Path) -> Lab:
    spokes = [{"name": "spoke1"}, {"name": "spoke2"}]
    topo = Topology.from_data({"phase": 3, "dataplane": plane, "nodes": {"spokes": spokes}})
    return Lab(topo, prefix=f"dmvbe{plane[0]}-", state_path=tmp / f"{plane}.json")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_ebpf.py needs root (network namespaces)")
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "load": os.getloadavg()[0],
        "kernel": os.uname().release,
    }
    tmp = Path(tempfile.mkdtemp())
    labs: dict[str, Lab] = {}
    daemons: dict[str, list[int]] = {}
    try:
        for plane in ("ebpf", "userspace"):
            lab = labs[plane] = lab_of(plane, tmp)
            lab.up()
            runner = Runner(lab, dmvpn_command())
            runner.start()
            runner.wait_registered()
            daemons[plane] = [runner.procs[n].pid for n in ("spoke1", "spoke2")]
        topo = labs["ebpf"].topology
        host2 = str(topo.plan("host2").lan.ip)  # type: ignore[union-attr]
        result["switch_over"] = {plane: switch_over(lab, host2) for plane, lab in labs.items()}
        tunnel = str(topo.plan("spoke2").tunnel.ip)  # type: ignore[union-attr]
        nbma = str(topo.plan("spoke2").nbma.ip)  # type: ignore[union-attr]
        for lab in labs.values():
            # The shortcut (resolution through the hub), then the eBPF plane's
            # probe proving spoke2 (the first second's rounds).
            ping = ["ping", "-c", "5", "-i", "0.2", "-W", "1", tunnel]
            lab.exec("spoke1", ping, check=True, capture_output=True)
        time.sleep(3)
        targets = {
            "underlay": (labs["ebpf"], nbma),
            "ebpf": (labs["ebpf"], tunnel),
            "userspace": (labs["userspace"], tunnel),
        }
        tcp: dict[str, list[float]] = {k: [] for k in targets}
        udp: dict[str, list[float]] = {k: [] for k in targets}
        for _ in range(args.rounds):
            for name, (lab, dst) in targets.items():
                tcp[name].append(iperf(lab, "spoke2", "spoke1", dst, args.seconds))
        for name, (lab, dst) in targets.items():
            udp[name].append(udp_rate(lab, "spoke2", "spoke1", dst, args.seconds))
        cpu = {
            name: cpu_per_gb(
                lab, "spoke2", "spoke1", dst, RATE, args.seconds, daemons.get(name, [])
            )
            for name, (lab, dst) in targets.items()
        }
        rtt = {
            name: statistics.median(rtts(lab, "spoke1", dst))
            for name, (lab, dst) in targets.items()
        }
        under = statistics.median(tcp["underlay"])
        result["tcp_mbit"] = {k: [round(v) for v in vs] for k, vs in tcp.items()}
        result["tcp_median_mbit"] = {k: round(statistics.median(vs)) for k, vs in tcp.items()}
        result["tcp_ratio_to_underlay"] = {
            k: round(statistics.median(tcp[k]) / under, 3) for k in ("ebpf", "userspace")
        }
        result["tcp_pair_ratios_ebpf"] = [
            round(e / u, 3) for e, u in zip(tcp["ebpf"], tcp["underlay"], strict=True)
        ]
        result["udp64_pps"] = {k: round(vs[0]) for k, vs in udp.items()}
        result["udp64_ratio_to_underlay"] = {
            k: round(udp[k][0] / udp["underlay"][0], 3) for k in ("ebpf", "userspace")
        }
        result["rtt_median_us"] = {k: round(v * 1000, 1) for k, v in rtt.items()}
        result["cpu_s_per_gb_at_400mbit"] = {k: round(v, 2) for k, v in cpu.items()}
        result["cpu_ratio_to_underlay"] = {
            k: round(cpu[k] / cpu["underlay"], 2) for k in ("ebpf", "userspace")
        }
        result["added_rtt_us"] = {
            k: round((rtt[k] - rtt["underlay"]) * 1000, 1) for k in ("ebpf", "userspace")
        }
    finally:
        for lab in labs.values():
            lab.down()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
