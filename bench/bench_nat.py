"""NAT in the lab (issue 13): the cost of the lab's NAT routers, measured
against the same cloud without them, in one run. Needs root, iperf3, nft.

Layouts (phase 3, plain GRE, hub1 + spoke1/spoke2 + their hosts):
    public     no NAT
    nat        spoke1 behind NAT router nata
    nat-both   spoke1 behind nata, spoke2 behind natb

1. Time to the direct path: a fresh lab per trial, host1 pings host2 every
   2 ms from the moment both spokes are registered; the time from the first
   echo to the first reply with the direct path's TTL (bench_first_packet's
   analysis). Layouts interleaved trial by trial, so load hits each alike.
2. Throughput (TCP, iperf3): spoke1 -> spoke2 on the underlay (through the
   PAT or not), and host1 -> host2 over the shortcut, public vs nat.
3. A spoke's underlay address changes while host1 pings host2 every 10 ms
   over the shortcut (`public` layout): `follow` = the daemon follows it
   (dmvpn.daemon.underlay), against `restart` = what it took before: stop
   spoke1's daemon, change the address, start it with the new source. Per
   trial: echoes lost, the longest gap between replies (the outage), and
   the time until replies come over the direct path again.

Run: sudo .venv/bin/python bench/bench_nat.py [--trials 8] [--seconds 5] [--ipsec]
(--ipsec: the same cloud with IPsec on every router, hence NAT traversal.)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_first_packet import _REPLY, DIRECT_TTL, INTERVAL, analyse
from bench_lab import iperf
from dmvpn.lab.netns import Lab
from dmvpn.lab.runner import Runner
from dmvpn.lab.topology import Topology

LAYOUTS: dict[str, list[dict[str, str]]] = {
    "public": [{"name": "spoke1"}, {"name": "spoke2"}],
    "nat": [{"name": "spoke1", "nat": "nata"}, {"name": "spoke2"}],
    "nat-both": [{"name": "spoke1", "nat": "nata"}, {"name": "spoke2", "nat": "natb"}],
}


# --ipsec: every router protects its GRE with IPsec (a cloud-wide PSK), so
# the NATed layouts run IPsec NAT traversal (ipsec/natmap.py).
IPSEC: dict[str, Any] = {}


@contextmanager
def cloud(layout: str) -> Iterator[tuple[Lab, Topology]]:
    topo = Topology.from_data({"phase": 3, "nodes": {"spokes": LAYOUTS[layout]}, **IPSEC})
    tmp = Path(tempfile.mkdtemp(prefix="dmvpn-bench-nat-"))
    lab = Lab(topo, prefix="dmvnat-", state_path=tmp / "lab.json")
    lab.up()
    runner = Runner(lab)
    try:
        runner.start()
        runner.wait_registered()
        yield lab, topo
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


def first_packet(layout: str, count: int) -> dict[str, Any]:
    with cloud(layout) as (lab, topo):
        host2 = str(topo.plan("host2").lan.ip)  # type: ignore[union-attr]
        out = lab.exec(
            "host1",
            ["ping", "-D", "-n", "-c", str(count), "-i", str(INTERVAL), "-W", "1", host2],
            capture_output=True,
            text=True,
        ).stdout
        return analyse(out, count)


def throughput(layout: str, seconds: float) -> dict[str, float]:
    with cloud(layout) as (lab, topo):
        spoke2 = str(topo.plan("spoke2").nbma.ip)  # type: ignore[union-attr]
        host2 = str(topo.plan("host2").lan.ip)  # type: ignore[union-attr]
        if layout == "nat-both":
            raise ValueError("throughput is measured for public and nat only")
        # The shortcut first (both directions), then the runs.
        lab.exec("host1", ["ping", "-c", "5", "-i", "0.2", host2], capture_output=True)
        return {
            "underlay_mbit": round(iperf(lab, "spoke2", "spoke1", spoke2, seconds), 1),
            "overlay_mbit": round(iperf(lab, "host2", "host1", host2, seconds), 1),
        }


MOVE_INTERVAL = 0.01
MOVE_COUNT = 2000  # 20 s: the move comes 2 s in


def analyse_move(out: str, t0: float, t_end: float, count: int) -> dict[str, Any]:
    """ping -D output around a move at t0: echoes lost, the longest time
    without a reply after t0, and when the direct path carried replies again
    after leaving it (None: never within the run)."""
    replies = sorted((float(ts), int(seq), int(ttl)) for ts, seq, ttl, _ in _REPLY.findall(out))
    before = [ts for ts, _, _ in replies if ts <= t0]
    after = [r for r in replies if r[0] > t0]
    marks = [before[-1] if before else t0, *(r[0] for r in after), t_end]
    # None: no reply came back before the run ended (then `lost` says how long).
    outage = max(b - a for a, b in itertools.pairwise(marks[:-1])) if after else None
    # Where the path left the shortcut: a gap (replies lost) or a reply via the hub.
    left = len(after)
    for i, (a, b) in enumerate(itertools.pairwise(marks[:-1])):
        if b - a > 0.1:
            left = min(left, i)
            break
    for i, r in enumerate(after):
        if r[2] != DIRECT_TTL:
            left = min(left, i)
            break
    # Never left (every reply after t0 direct, no gap over 0.1 s): 0.
    direct = [ts for ts, _, ttl in after[left:] if ttl == DIRECT_TTL] if after[left:] else [t0]
    return {
        "lost": count - len({seq for _, seq, _ in replies}),
        "outage_ms": None if outage is None else round(outage * 1000, 1),
        "s_to_direct_again": round(direct[0] - t0, 2) if direct else None,
    }


NEW_SOURCE = "172.30.0.111"


class MovedRunner(Runner):
    """spoke1's config with the new source, for the restart baseline."""

    def node_config(self, node: str) -> dict[str, Any]:
        config = super().node_config(node)
        if node == "spoke1":
            config["interfaces"][0]["tunnel"]["source"] = NEW_SOURCE
        return config


def move(mode: str) -> dict[str, Any]:
    topo = Topology.from_data({"phase": 3, "nodes": {"spokes": LAYOUTS["public"]}})
    tmp = Path(tempfile.mkdtemp(prefix="dmvpn-bench-nat-"))
    lab = Lab(topo, prefix="dmvnat-", state_path=tmp / "lab.json")
    lab.up()
    runner = Runner(lab)
    try:
        runner.start()
        runner.wait_registered()
        host2 = str(topo.plan("host2").lan.ip)  # type: ignore[union-attr]
        old = str(topo.plan("spoke1").nbma)
        lab.exec("host1", ["ping", "-c", "5", "-i", "0.1", host2], capture_output=True)
        ping = lab.popen(
            "host1",
            ["ping", "-D", "-n", "-c", str(MOVE_COUNT), "-i", str(MOVE_INTERVAL), "-W", "1", host2],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(2.0)
        t0 = time.time()
        if mode == "restart":
            proc = runner.procs.pop("spoke1")
            proc.terminate()
            proc.wait(timeout=10)
        lab.exec("spoke1", ["ip", "addr", "del", old, "dev", "nbma0"], check=True)
        lab.exec("spoke1", ["ip", "addr", "add", f"{NEW_SOURCE}/24", "dev", "nbma0"], check=True)
        if mode == "restart":
            moved = MovedRunner(lab)
            moved.start(["spoke1"])
            runner.procs["spoke1"] = moved.procs["spoke1"]
        out, _ = ping.communicate(timeout=60)
        return analyse_move(out, t0, time.time(), MOVE_COUNT)
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
    ap.add_argument("--trials", type=int, default=8, help="first-packet trials per layout")
    ap.add_argument("--count", type=int, default=500, help="echoes per trial (2 ms apart)")
    ap.add_argument("--seconds", type=float, default=5.0, help="per iperf3 run")
    ap.add_argument("--rounds", type=int, default=2, help="throughput rounds (public, nat)")
    ap.add_argument("--moves", type=int, default=3, help="address-change trials per mode")
    ap.add_argument("--ipsec", action="store_true", help="IPsec (PSK) on every router")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_nat.py needs root (network namespaces)")
    if args.ipsec:
        IPSEC["ipsec_psk"] = "bench-psk-0123456789abcdef"
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "load_before": os.getloadavg(),
    }
    times: dict[str, list[float]] = {k: [] for k in LAYOUTS}
    never: dict[str, int] = dict.fromkeys(LAYOUTS, 0)
    lost: dict[str, int] = dict.fromkeys(LAYOUTS, 0)
    for i in range(args.trials):
        for layout in LAYOUTS:
            r = first_packet(layout, args.count)
            print(f"{layout} {i + 1}/{args.trials}: {json.dumps(r)}", file=sys.stderr, flush=True)
            lost[layout] += r["lost"]
            if r["ms_to_direct"] is None:
                never[layout] += 1
            else:
                times[layout].append(r["ms_to_direct"])
    base = statistics.median(times["public"]) if times["public"] else 1.0
    result["ms_to_direct"] = {
        k: {
            "median": round(statistics.median(v), 2) if v else None,
            "max": max(v) if v else None,
            "ratio_to_public": round(statistics.median(v) / base, 2) if v else None,
            "never_direct": never[k],
            "lost_total": lost[k],
        }
        for k, v in times.items()
    }
    runs: dict[str, list[dict[str, float]]] = {"public": [], "nat": []}
    for _ in range(args.rounds):
        for layout in runs:
            runs[layout].append(throughput(layout, args.seconds))
            print(f"{layout}: {runs[layout][-1]}", file=sys.stderr, flush=True)
    if args.rounds:
        tput = {
            k: {m: round(statistics.median(r[m] for r in v), 1) for m in v[0]}
            for k, v in runs.items()
        }
        ratio = {m: round(tput["nat"][m] / tput["public"][m], 2) for m in tput["public"]}
        result["throughput_tcp"] = {**tput, "nat_over_public": ratio}
    moves: dict[str, list[dict[str, Any]]] = {"follow": [], "restart": []}
    for i in range(args.moves):
        for mode in moves:
            moves[mode].append(move(mode))
            print(f"{mode} {i + 1}/{args.moves}: {moves[mode][-1]}", file=sys.stderr, flush=True)
    result["address_change"] = {
        mode: {
            "lost_median": statistics.median(t["lost"] for t in v),
            "outage_ms": [t["outage_ms"] for t in v],
            # None: never direct again within the run.
            "s_to_direct_again": [t["s_to_direct_again"] for t in v],
            "trials": v,
        }
        for mode, v in moves.items()
        if v
    }
    result["load_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
