"""Hierarchical hubs (issue 13): time to a direct shortcut between spokes
of two regions, against two spokes of one hub, in one run. Needs root.

Layouts (phase 3, plain GRE, the topology's data plane):
    same-hub      hub1; spoke1 and spoke2 both register with it
    cross-region  central; west and east register with it; spoke1 with
                  west, spoke2 with east

A fresh lab per trial, layouts interleaved trial by trial so that load hits
each alike. host1 pings host2 every 2 ms from the moment every node has
registered with its NHSs; the time from the first echo to the first reply
over the direct spoke1-spoke2 path (its TTL: 64 less the two spokes), and
the last RTT via the hubs against the first direct one.

Run: sudo .venv/bin/python bench/bench_hierarchy.py [--trials 6] [--dataplane userspace]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dmvpn.lab.netns import Lab
from dmvpn.lab.runner import Runner
from dmvpn.lab.topology import Topology

INTERVAL = 0.002
DIRECT_TTL = 62  # host2's 64, less spoke2 and spoke1
_REPLY = re.compile(r"\[([\d.]+)\].*icmp_seq=(\d+) ttl=(\d+) time=([\d.]+) ms")

LAYOUTS: dict[str, dict[str, Any]] = {
    "same-hub": {"hubs": [{"name": "hub1"}], "spokes": [{"name": "spoke1"}, {"name": "spoke2"}]},
    "cross-region": {
        "hubs": [
            {"name": "central"},
            {"name": "west", "nhs": ["central"]},
            {"name": "east", "nhs": ["central"]},
        ],
        "spokes": [{"name": "spoke1", "nhs": ["west"]}, {"name": "spoke2", "nhs": ["east"]}],
    },
}


def analyse(out: str, count: int) -> dict[str, Any]:
    """ping -D output: when the path went direct, what the hubs cost, what was lost."""
    replies = sorted(
        (int(seq), int(ttl), float(ts), float(rtt) / 1000)
        for ts, seq, ttl, rtt in _REPLY.findall(out)
    )
    if not replies:
        raise RuntimeError(f"no replies: {out[-500:]}")
    seq, _, ts, rtt = replies[0]
    first_sent = ts - rtt - (seq - 1) * INTERVAL
    direct = [r for r in replies if r[1] == DIRECT_TTL]
    via = [r for r in replies if r[1] != DIRECT_TTL]
    answered = {r[0] for r in replies}
    return {
        "ms_to_direct": round((direct[0][2] - first_sent) * 1000, 2) if direct else None,
        "ttl_via_hubs": sorted({r[1] for r in via}),
        "rtt_ms_via_hubs": round(statistics.median(r[3] for r in via) * 1000, 3) if via else None,
        "rtt_ms_direct": round(statistics.median(r[3] for r in direct[5:] or direct) * 1000, 3)
        if direct
        else None,
        "lost": sum(1 for s in range(1, max(answered) + 1) if s not in answered),
    }


def trial(layout: str, count: int, dataplane: str) -> dict[str, Any]:
    topo = Topology.from_data({"phase": 3, "nodes": LAYOUTS[layout], "dataplane": dataplane})
    tmp = Path(tempfile.mkdtemp(prefix="dmvpn-bench-hier-"))
    lab = Lab(topo, prefix="dmvhier-", state_path=tmp / "lab.json")
    lab.up()
    runner = Runner(lab)
    try:
        runner.start()
        runner.wait_registered()
        host2 = str(topo.plan("host2").lan.ip)  # type: ignore[union-attr]
        out = lab.exec(
            "host1",
            ["ping", "-D", "-n", "-c", str(count), "-i", str(INTERVAL), "-W", "1", host2],
            capture_output=True,
            text=True,
        ).stdout
        return analyse(out, count)
    finally:
        for proc in runner.procs.values():
            proc.terminate()
        for proc in runner.procs.values():
            try:
                proc.wait(timeout=10)
            except Exception:
                proc.kill()
                proc.wait()
        lab.down()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=6, help="trials per layout")
    ap.add_argument("--count", type=int, default=500, help="echoes per trial (2 ms apart)")
    ap.add_argument("--dataplane", choices=["userspace", "ebpf"], default="userspace")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_hierarchy.py needs root (network namespaces)")
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "load_before": os.getloadavg(),
    }
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in LAYOUTS}
    for i in range(args.trials):
        for layout in LAYOUTS:
            r = trial(layout, args.count, args.dataplane)
            print(f"{layout} {i + 1}/{args.trials}: {json.dumps(r)}", file=sys.stderr, flush=True)
            runs[layout].append(r)

    def med(rs: list[dict[str, Any]], key: str) -> float | None:
        v = [r[key] for r in rs if r[key] is not None]
        return round(statistics.median(v), 3) if v else None

    base = med(runs["same-hub"], "ms_to_direct") or 1.0
    result["layouts"] = {
        k: {
            "ms_to_direct_median": med(v, "ms_to_direct"),
            "ms_to_direct_max": max((r["ms_to_direct"] or 0) for r in v) if v else None,
            "ratio_to_same_hub": round((med(v, "ms_to_direct") or 0) / base, 2),
            "never_direct": sum(1 for r in v if r["ms_to_direct"] is None),
            "ttl_via_hubs": sorted({t for r in v for t in r["ttl_via_hubs"]}),
            "rtt_ms_via_hubs": med(v, "rtt_ms_via_hubs"),
            "rtt_ms_direct": med(v, "rtt_ms_direct"),
            "lost_total": sum(r["lost"] for r in v),
        }
        for k, v in runs.items()
    }
    result["load_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
