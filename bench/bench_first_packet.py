"""First packet to direct path, from a cold cloud (issue 18). Needs root.

Each trial builds a fresh lab (hub1, spoke1, spoke2, host1, host2; phase 3),
starts the daemons, and from the moment every spoke has registered host1
pings host2 every 2 ms. A reply's TTL tells its path: 61 via hub1, 62
straight from spoke1 to spoke2. Per trial: the time from the first echo
sent to the first direct reply, and the echoes lost (unanswered before the
last reply). Plain GRE and IPsec (PSK, a managed charon per node).

Run: sudo .venv/bin/python bench/bench_first_packet.py [--plain 10] [--ipsec 15]
         [--count 1000] [--keep-logs]
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
VIA_HUB_TTL, DIRECT_TTL = 61, 62
PSK = "bench-first-packet-0123456789"
_REPLY = re.compile(r"\[([\d.]+)\].*icmp_seq=(\d+) ttl=(\d+) time=([\d.]+) ms")


class BenchRunner(Runner):
    """Each managed charon keeps its files in the lab's own directory, so
    that trials (and other labs on the machine) never share one."""

    def node_config(self, node: str) -> dict[str, Any]:
        config = super().node_config(node)
        if "ipsec" in config:
            config["ipsec"] = {**config["ipsec"], "run_dir": str(self.run_dir / f"{node}-charon")}
        return config


def analyse(out: str, count: int) -> dict[str, Any]:
    """ping -D output: when the path went direct, and what was lost."""
    replies = [
        (int(seq), int(ttl), float(ts), float(rtt) / 1000)
        for ts, seq, ttl, rtt in _REPLY.findall(out)
    ]
    if not replies:
        raise RuntimeError(f"no replies: {out[-500:]}")
    ttls = {ttl for _, ttl, _, _ in replies}
    if not ttls <= {VIA_HUB_TTL, DIRECT_TTL}:
        raise RuntimeError(f"unexpected TTLs {sorted(ttls)}")
    # When echo 1 left: the earliest answered echo's send time, less the
    # echoes before it (ping sends them INTERVAL apart).
    seq, _, ts, rtt = min(replies)
    first_sent = ts - rtt - (seq - 1) * INTERVAL
    direct = [r for r in replies if r[1] == DIRECT_TTL]
    answered = {r[0] for r in replies}
    last = max(answered)
    return {
        "ms_to_direct": round((direct[0][2] - first_sent) * 1000, 2) if direct else None,
        "first_direct_seq": direct[0][0] if direct else None,
        "replies_via_hub": sum(1 for r in replies if r[1] == VIA_HUB_TTL),
        "lost": sum(1 for s in range(1, last + 1) if s not in answered),
        "unanswered_at_end": count - last,
    }


def trial(ipsec: bool, count: int, keep: Path | None, index: int) -> dict[str, Any]:
    data: dict[str, Any] = {
        "phase": 3,
        "nodes": {"spokes": [{"name": "spoke1"}, {"name": "spoke2"}]},
    }
    if ipsec:
        data["ipsec_psk"] = PSK
    topo = Topology.from_data(data)
    tmp = Path(tempfile.mkdtemp(prefix="dmvpn-bench-fp-"))
    lab = Lab(topo, prefix="dmvfp-", state_path=tmp / "lab.json")
    lab.up()
    runner = BenchRunner(lab)
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
        result = analyse(out, count)
        if keep is not None:
            dest = keep / f"{'ipsec' if ipsec else 'plain'}-{index}"
            shutil.copytree(runner.run_dir, dest, ignore=shutil.ignore_patterns("*.sock", "*.vici"))
        return result
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


def summary(trials: list[dict[str, Any]]) -> dict[str, Any]:
    times = [t["ms_to_direct"] for t in trials if t["ms_to_direct"] is not None]
    return {
        "trials": len(trials),
        "never_direct": len(trials) - len(times),
        "ms_to_direct_median": round(statistics.median(times), 2) if times else None,
        "ms_to_direct_max": max(times) if times else None,
        "stalls_over_500ms": sum(1 for t in times if t > 500),
        "lost_total": sum(t["lost"] for t in trials),
        "lost_max": max(t["lost"] for t in trials),
        "ms_to_direct": times,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plain", type=int, default=10, help="plain trials")
    ap.add_argument("--ipsec", type=int, default=15, help="IPsec trials")
    ap.add_argument("--count", type=int, default=1000, help="echoes per trial (2 ms apart)")
    ap.add_argument("--keep-logs", type=Path, help="copy each trial's daemon logs here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_first_packet.py needs root (network namespaces)")
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "load_before": os.getloadavg(),
    }
    for name, n, ipsec in (("plain", args.plain, False), ("ipsec", args.ipsec, True)):
        trials = []
        for i in range(n):
            trials.append(trial(ipsec, args.count, args.keep_logs, i))
            print(f"{name} {i + 1}/{n}: {json.dumps(trials[-1])}", file=sys.stderr, flush=True)
        if trials:
            result[name] = summary(trials)
    result["load_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
