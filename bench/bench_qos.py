"""Per-tunnel QoS in the lab: how close the shaped rate is to the configured
one, with an unshaped spoke loaded at the same time, and what the shaping
costs the hub in CPU. Needs root (network namespaces).

One phase 1 lab (everything the hub sends to a LAN goes through its tunnel
to that LAN's spoke): spoke1 in group `gold` (--rate), spoke2 in no group,
spoke3 in group `fast` (10 Gbit/s: classified and shaped by HTB, but never
held back at these rates).

1. Shaped against configured: iperf3 TCP hub1 -> host1 (through spoke1,
   shaped) and hub1 -> host2 (through spoke2, unshaped) at the same time.
   Reported: the rate on the wire through spoke1's HTB class (its byte
   counter over the run: outer IPv4 + GRE + inner packet, which is what HTB
   counts and shapes), its ratio to the configured rate, the TCP goodput of
   both streams.
2. CPU per GB at a fixed rate (iperf3 -b): hub1 -> host3 (through spoke3,
   HTB class, `fast`) against hub1 -> host2 (through spoke2, HTB's direct
   queue: no class), counting the hub daemon (its pump thread sends the GRE
   packets, so the qdisc runs in its context), iperf3's client and server.

Run: sudo python bench/bench_qos.py [--seconds 5] [--rate 20]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_lab import RATE, cpu_per_gb
from dmvpn.lab.netns import Lab
from dmvpn.lab.runner import Runner, dmvpn_command
from dmvpn.lab.topology import Topology


def _class_bytes(lab: Lab, nbma: str) -> int:
    """Bytes sent through the HTB class that the hub's filter gives ``nbma``."""
    out = lab.exec("hub1", ["tc", "filter", "show", "dev", "nbma0"], capture_output=True, text=True)
    hexaddr = "".join(f"{int(o):02x}" for o in nbma.split("."))
    classid = None
    for block in out.stdout.split("filter parent"):
        if f"match {hexaddr}/ffffffff at 16" in block:
            m = re.search(r"flowid (\S+)", block)
            classid = m.group(1) if m else None
    if classid is None:
        raise RuntimeError(f"no shaper for {nbma}: {out.stdout}")
    argv = ["tc", "-s", "class", "show", "dev", "nbma0"]
    stats = lab.exec("hub1", argv, capture_output=True, text=True)
    m = re.search(rf"class htb {classid} .*?\n Sent (\d+) bytes", stats.stdout)
    if m is None:
        raise RuntimeError(f"no class {classid}: {stats.stdout}")
    return int(m.group(1))


def side_by_side(
    lab: Lab, topo: Topology, seconds: float, hosts: tuple[str, ...]
) -> tuple[float, list[float]]:
    """hub1 -> each host at once (host1 first: the shaped one): on-wire
    Mbit/s through spoke1's shaper, goodput of each stream."""
    addrs = [str(topo.plan(h).lan.ip) for h in hosts]  # type: ignore[union-attr]
    nbma1 = str(topo.plan("spoke1").nbma.ip)  # type: ignore[union-attr]
    servers = [
        lab.popen(h, ["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for h in hosts
    ]
    time.sleep(0.5)
    clients = [
        lab.popen(
            "hub1",
            ["iperf3", "-c", addr, "-t", str(seconds), "-J", "-O", "1"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for addr in addrs
    ]
    # The class's byte counter in the steady state: from 1.5 s in (past TCP's
    # slow start) to 0.5 s before the end.
    time.sleep(1.5)
    t0, before = time.monotonic(), _class_bytes(lab, nbma1)
    time.sleep(seconds - 2.0)
    elapsed, sent = time.monotonic() - t0, _class_bytes(lab, nbma1) - before
    wire = sent * 8 / elapsed / 1e6
    outs = [c.communicate()[0] for c in clients]
    for s in servers:
        s.wait(timeout=10)
    goodput = [float(json.loads(o)["end"]["sum_received"]["bits_per_second"]) / 1e6 for o in outs]
    return wire, goodput


def measure(seconds: float, rate: int) -> dict[str, Any]:
    topo = Topology.from_data(
        {
            "phase": 1,
            "qos": {"gold": f"{rate}mbit", "fast": "10gbit"},
            "nodes": {
                "spokes": [
                    {"name": "spoke1", "group": "gold"},
                    {"name": "spoke2"},
                    {"name": "spoke3", "group": "fast"},
                ]
            },
        }
    )
    lab = Lab(topo, prefix="dmqb-", state_path=Path(tempfile.mkdtemp()) / "lab.json")
    result: dict[str, Any] = {}
    lab.up()
    try:
        runner = Runner(lab, dmvpn_command())
        runner.start()
        runner.wait_registered()
        time.sleep(1.0)  # the hub's shapers follow the registrations
        wire, (shaped, free) = side_by_side(lab, topo, seconds, ("host1", "host2"))
        alone, (shaped_alone,) = side_by_side(lab, topo, seconds, ("host1",))
        result["shaped_vs_configured"] = {
            "configured_mbit": rate,
            "on_wire_mbit": round(wire, 2),
            "ratio": round(wire / rate, 3),
            "shaped_goodput_mbit": round(shaped, 2),
            "unshaped_goodput_mbit_alongside": round(free, 1),
            "alone_on_wire_mbit": round(alone, 2),
            "alone_ratio": round(alone / rate, 3),
            "alone_goodput_mbit": round(shaped_alone, 2),
        }
        hub = [runner.procs["hub1"].pid]
        host2 = str(topo.plan("host2").lan.ip)  # type: ignore[union-attr]
        host3 = str(topo.plan("host3").lan.ip)  # type: ignore[union-attr]
        plain = cpu_per_gb(lab, "host2", "hub1", host2, RATE, seconds, hub)
        htb = cpu_per_gb(lab, "host3", "hub1", host3, RATE, seconds, hub)
        result["hub_cpu_s_per_gb_at_fixed_rate"] = {
            "rate_mbit": RATE,
            "unshaped": round(plain, 2),
            "shaped_htb": round(htb, 2),
            "ratio": round(htb / plain, 3),
        }
    finally:
        lab.down()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rate", type=int, default=20, help="gold's rate, Mbit/s")
    args = ap.parse_args()
    if args.seconds < 4:
        sys.exit("--seconds must be at least 4 (the steady-state window)")
    if os.geteuid() != 0:
        sys.exit("bench_qos.py needs root (network namespaces)")
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "load": os.getloadavg()[0],
    }
    result.update(measure(args.seconds, args.rate))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
