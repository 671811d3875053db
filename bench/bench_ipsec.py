"""IPsec proxy instantiation in the lab: what protection costs on a phase 3
spoke-to-spoke shortcut. Needs root (network namespaces) and strongSwan.

One run builds the same cloud twice, one after the other (so they do not
share the two cores): without IPsec (the baseline) and with IPsec (a
private charon per node, kernel-libipsec, AES-256-GCM, ESP in UDP 4500).
For each:

1. Switch-over: host1 pings host2 every 2 ms from a cold shortcut; the reply
   TTL tells the path. With IPsec the direct path needs the SA first (the
   binding is used only once it is up), so this is the time from the first
   packet to a *protected* direct path.
2. Round-trip time host1 -> host2 over the shortcut (median of 50 pings).
3. TCP throughput, iperf3 host1 -> host2 across the shortcut.

Ratios protected / unprotected are what to compare across runs (the
machine is shared and noisy).

Run: sudo python bench/bench_ipsec.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench_lab import iperf, rtts, switch_over
from dmvpn.lab.netns import Lab
from dmvpn.lab.topology import Topology

DMVPN = str(Path(sys.executable).with_name("dmvpn"))
PSK = "bench-psk-0123456789abcdef"


def cloud(topo: Topology, prefix: str, tmp: Path, ipsec: bool) -> tuple[Lab, list[Any]]:
    lab = Lab(topo, prefix=prefix, state_path=tmp / "lab.json")
    lab.up()
    procs = []
    for plan in topo.routers:
        config = json.loads(json.dumps(topo.node_config(plan.name), default=str))
        config["socket"] = str(tmp / f"{plan.name}.sock")
        if ipsec:
            config["ipsec"] = {"psk": PSK, "run_dir": str(tmp / f"{plan.name}-charon")}
        path = tmp / f"{plan.name}.yaml"
        path.write_text(yaml.safe_dump(config))
        log = (tmp / f"{plan.name}.log").open("a")
        procs.append(lab.popen(plan.name, [DMVPN, "run", "-c", str(path)], stdout=log, stderr=log))
    deadline = time.monotonic() + 30
    spokes = [p.name for p in topo.spokes]
    while not all('"nhs-up"' in (tmp / f"{s}.log").read_text() for s in spokes):
        if time.monotonic() > deadline:
            raise RuntimeError(f"spokes did not register (logs in {tmp})")
        time.sleep(0.1)
    return lab, procs


def measure(topo: Topology, prefix: str, ipsec: bool, seconds: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="dmvpn-bench-ipsec-"))
    lab, procs = cloud(topo, prefix, tmp, ipsec)
    host2 = str(topo.plan("host2").lan.ip)  # type: ignore[union-attr]
    spoke2_nbma = str(topo.plan("spoke2").nbma.ip)  # type: ignore[union-attr]
    out: dict[str, Any] = {}
    try:
        out["switch_over"] = switch_over(lab, host2)
        over = rtts(lab, "host1", host2)
        out["overlay_rtt_median_ms"] = round(statistics.median(over), 3)
        out["overlay_mbit"] = round(iperf(lab, "host2", "host1", host2, seconds))
        if not ipsec:
            # Without IPsec the underlay is open to anything: the baseline of
            # the baseline. (With IPsec, kernel-libipsec routes everything to
            # the peer into its device and drops what is not GRE.)
            under = rtts(lab, "spoke1", spoke2_nbma)
            out["underlay_rtt_median_ms"] = round(statistics.median(under), 3)
            out["underlay_mbit"] = round(iperf(lab, "spoke2", "spoke1", spoke2_nbma, seconds))
        else:
            show = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    f"{prefix}spoke1",
                    DMVPN,
                    "show",
                    "ipsec",
                    "--json",
                    "--socket",
                    str(tmp / "spoke1.sock"),
                ],
                capture_output=True,
                text=True,
            )
            peers = {p["remote"]: p for p in json.loads(show.stdout)["peers"]}
            child = peers[spoke2_nbma]["child"]
            out["sa"] = {
                "encryption": child["encryption"],
                "mode": child["mode"],
                "encap": child["encap"],
            }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=15)
        lab.down()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_ipsec.py needs root (network namespaces)")
    topo = Topology.from_data(
        {"phase": 3, "nodes": {"spokes": [{"name": "spoke1"}, {"name": "spoke2"}]}}
    )
    plain = measure(topo, "dmvbp-", False, args.seconds)
    protected = measure(topo, "dmvbi-", True, args.seconds)
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python bench/bench_ipsec.py",
        "unprotected": plain,
        "protected": protected,
        "ratios": {
            "throughput": round(protected["overlay_mbit"] / plain["overlay_mbit"], 3),
            "added_rtt_us": round(
                (protected["overlay_rtt_median_ms"] - plain["overlay_rtt_median_ms"]) * 1000, 1
            ),
            "switch_over": round(
                protected["switch_over"]["ms_to_direct"] / plain["switch_over"]["ms_to_direct"], 2
            ),
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
