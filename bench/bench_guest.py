"""Lab guests (dmvpn.lab.vm): boot to "nhrpd ready", memory and idle CPU.

Boots an frr hub guest (FRR nhrpd in QEMU/TCG with Debian's kernel) `--boots`
times, one at a time, and reports the time from starting QEMU to the guest's
"ready" (nhrpd listening), then three guests at once. For each guest it reads
QEMU's RSS and PSS and its CPU use over `--idle` seconds once ready. The
baseline measured in the same run is the host's own process start: `sh -c
true` timed the same way, so runs on machines of different speed compare as
ratios.

    python bench/bench_guest.py [--boots 5] [--idle 10]

Needs root (namespaces, taps).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path

from dmvpn.lab import Lab, Topology
from dmvpn.lab.frrnode import FrrNodes
from dmvpn.lab.guestkernel import ensure_kernel

HZ = os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _memory_kb(pid: int) -> tuple[int, int]:
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def boot(hubs: int, idle: float) -> list[tuple[float, int, int, float]]:
    """(seconds to ready, RSS kB, PSS kB, idle CPU %) for each of `hubs` frr hubs."""
    topo = Topology.from_data(
        {
            "nodes": {
                "hubs": [{"name": f"hub{i + 1}", "kind": "frr"} for i in range(hubs)],
                "spokes": [{"name": "spoke1"}],
            }
        }
    )
    lab = Lab(topo, prefix=f"bg{os.getpid() % 10000}-")
    lab.up()
    try:
        frr = FrrNodes(lab, kernel=ensure_kernel())
        start = time.monotonic()
        frr.start()
        took: dict[str, float] = {}
        while len(took) < hubs:
            for node in frr.nodes:
                if node not in took and frr.vm(node).check_boot():
                    took[node] = time.monotonic() - start
            time.sleep(0.02)
        time.sleep(2)  # let nhrpd's start-up settle
        pids = {n: frr.vm(n).proc.pid for n in frr.nodes}  # type: ignore[union-attr]
        before = {n: _cpu_ticks(p) for n, p in pids.items()}
        time.sleep(idle)
        rows = []
        for node, pid in pids.items():
            cpu = (_cpu_ticks(pid) - before[node]) / HZ / idle * 100
            rows.append((took[node], *_memory_kb(pid), cpu))
        return rows
    finally:
        lab.down()


def process_start(n: int = 50) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(["sh", "-c", "true"], check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boots", type=int, default=5)
    ap.add_argument("--idle", type=float, default=10.0)
    args = ap.parse_args()
    ensure_kernel()  # downloaded once, not timed
    base = process_start()
    print(f"baseline: host process start (sh -c true) {base * 1000:.2f} ms median")
    singles = [boot(1, args.idle)[0] for _ in range(args.boots)]
    print("one guest at a time:")
    for i, (took, rss, pss, cpu) in enumerate(singles, 1):
        print(
            f"  boot {i}: ready in {took:.2f} s, RSS {rss / 1024:.0f} MB, "
            f"PSS {pss / 1024:.0f} MB, idle CPU {cpu:.2f} %"
        )
    med = statistics.median(t for t, *_ in singles)
    print(f"  median boot to ready {med:.2f} s ({med / base:.0f}x a host process start)")
    print("three guests at once:")
    for took, rss, pss, cpu in boot(3, args.idle):
        print(
            f"  ready in {took:.2f} s, RSS {rss / 1024:.0f} MB, PSS {pss / 1024:.0f} MB, "
            f"idle CPU {cpu:.2f} %"
        )


if __name__ == "__main__":
    main()
