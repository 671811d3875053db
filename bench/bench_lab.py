"""The userspace data plane in the lab: throughput, added latency, and how
fast a phase 3 shortcut takes over. Needs root (network namespaces).

Measured in one run, each against a baseline in the same lab:

1. TCP throughput, iperf3, host1 -> host2 across the spoke1-spoke2 shortcut
   (GRE in userspace at both spokes), against iperf3 spoke1 -> spoke2 over
   the plain underlay (veth + bridge, kernel only).
2. Round-trip time, ping host1 -> host2 over the shortcut, against ping
   spoke1 -> spoke2 on the underlay. The overlay path also crosses two LAN
   veths and two routing hops, so the difference is an upper bound on what
   the userspace data plane adds.
3. CPU cost at a fixed rate (iperf3 -b, so it does not depend on how much
   CPU the machine's other users leave): CPU seconds per GB moved, counted
   for the two iperf3 processes and both spoke daemons (pump threads; the
   kernel's packet work mostly runs in their context), against the two
   iperf3 processes alone on the underlay at the same rate.
4. Phase 3 switch-over: host1 pings host2 every 2 ms from a cold cloud; the
   reply TTL tells the path (one less through the hub). Reported: time from
   the first echo to the first direct reply, and echoes lost meanwhile;
   against the underlay RTT.

With --without-offloads the same measurements are repeated in a second,
identical lab whose daemons open the TAP without a virtio_net_hdr (so the C
pump gets no TSO super-segments and writes no merged packets): the
offloads' gain, measured in the same run.

Run: sudo python bench/bench_lab.py [--seconds 5] [--without-offloads]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dmvpn.lab.netns import Lab
from dmvpn.lab.runner import Runner, dmvpn_command
from dmvpn.lab.topology import Topology


def iperf_run(
    lab: Lab, server: str, client: str, address: str, seconds: float, *extra: str
) -> dict[str, Any]:
    """One iperf3 run from `client` to a one-shot server in `server`: its JSON report."""
    srv = lab.popen(
        server, ["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(0.5)
    try:
        out = lab.exec(
            client,
            ["iperf3", "-c", address, *extra, "-t", str(seconds), "-J"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        srv.wait(timeout=10)
    result: dict[str, Any] = json.loads(out)
    return result


def iperf(lab: Lab, server: str, client: str, address: str, seconds: float) -> float:
    """TCP Mbit/s received."""
    result = iperf_run(lab, server, client, address, seconds)
    return float(result["end"]["sum_received"]["bits_per_second"]) / 1e6


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) of a running process, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _reap(proc: subprocess.Popen[Any]) -> float:
    """Wait for a child; its CPU seconds (`ip netns exec` execs in place)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def cpu_per_gb(
    lab: Lab, server: str, client: str, address: str, mbit: int, seconds: float, daemons: list[int]
) -> float:
    """CPU seconds per GB received, at a fixed rate, of the iperf3 client
    and server and the given daemon processes."""
    before = sum(_cpu(pid) for pid in daemons)
    srv = lab.popen(
        server, ["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(0.5)
    cli = lab.popen(
        client,
        ["iperf3", "-c", address, "-b", f"{mbit}M", "-t", str(seconds), "-J"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert cli.stdout is not None
    out = cli.stdout.read()
    cpu = _reap(cli) + _reap(srv)
    cpu += sum(_cpu(pid) for pid in daemons) - before
    received = float(json.loads(out)["end"]["sum_received"]["bytes"])
    return cpu / (received / 1e9)


def rtts(lab: Lab, node: str, address: str, count: int = 50) -> list[float]:
    out = lab.exec(
        node,
        ["ping", "-c", str(count), "-i", "0.02", "-W", "1", address],
        capture_output=True,
        text=True,
    ).stdout
    return [float(m) for m in re.findall(r"time=([\d.]+) ms", out)]


def switch_over(lab: Lab, address: str) -> dict[str, Any]:
    out = lab.exec(
        "host1",
        ["ping", "-D", "-c", "1000", "-i", "0.002", "-W", "1", address],
        capture_output=True,
        text=True,
    ).stdout
    replies = [
        (int(seq), int(ttl), float(ts))
        for ts, seq, ttl in re.findall(r"\[([\d.]+)\].*icmp_seq=(\d+) ttl=(\d+)", out)
    ]
    if not replies:
        raise RuntimeError(f"no replies: {out[-500:]}")
    direct_ttl = max(ttl for _, ttl, _ in replies)
    first_ts = float(re.search(r"\[([\d.]+)\]", out).group(1))  # type: ignore[union-attr]
    first_direct = next(r for r in replies if r[1] == direct_ttl)
    via_hub = [r for r in replies if r[1] != direct_ttl]
    seqs = {r[0] for r in replies}
    lost_before_direct = sum(1 for s in range(1, first_direct[0]) if s not in seqs)
    return {
        "echoes_sent": 1000,
        "replies": len(replies),
        "replies_via_hub": len(via_hub),
        "lost_before_direct": lost_before_direct,
        "ms_to_direct": round((first_direct[2] - first_ts) * 1000, 2),
    }


# The fixed rate for the CPU cost: below what both variants reach under load.
RATE = 400

# `dmvpn` with every TAP opened without a virtio_net_hdr (no offloads).
NO_OFFLOADS = """
import sys
from dmvpn.dataplane import devices
plain = devices.Tap.__init__
devices.Tap.__init__ = lambda self, name, vnet_hdr=False: plain(self, name, vnet_hdr=False)
from dmvpn.cli import main
sys.exit(main())
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument(
        "--without-offloads",
        action="store_true",
        help="also measure a lab whose TAPs have no offloads",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_lab.py needs root (network namespaces)")
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "load": os.getloadavg()[0],
    }
    result.update(measure(dmvpn_command(), args.seconds))
    if args.without_offloads:
        result["without_offloads"] = measure([sys.executable, "-c", NO_OFFLOADS], args.seconds)
        result["offload_gain"] = round(
            result["throughput_mbit"]["overlay_shortcut"]
            / result["without_offloads"]["throughput_mbit"]["overlay_shortcut"],
            2,
        )
    print(json.dumps(result, indent=2))


def measure(dmvpn: list[str], seconds: float) -> dict[str, Any]:
    topo = Topology.from_data({"phase": 3})
    lab = Lab(topo, prefix="dmvb-", state_path=Path(tempfile.mkdtemp()) / "lab.json")
    result: dict[str, Any] = {}
    lab.up()
    try:
        runner = Runner(lab, dmvpn)
        runner.start()
        runner.wait_registered()
        host2 = str(topo.plan("host2").lan.ip)  # type: ignore[union-attr]
        spoke2_nbma = str(topo.plan("spoke2").nbma.ip)  # type: ignore[union-attr]
        under = rtts(lab, "spoke1", spoke2_nbma)
        result["switch_over"] = switch_over(lab, host2)
        result["switch_over"]["underlay_rtt_ms"] = round(statistics.median(under), 3)
        over = rtts(lab, "host1", host2)
        result["rtt_ms"] = {
            "underlay_median": round(statistics.median(under), 3),
            "overlay_median": round(statistics.median(over), 3),
            "added_us": round((statistics.median(over) - statistics.median(under)) * 1000, 1),
        }
        base = iperf(lab, "spoke2", "spoke1", spoke2_nbma, seconds)
        overlay = iperf(lab, "host2", "host1", host2, seconds)
        result["throughput_mbit"] = {
            "underlay": round(base),
            "overlay_shortcut": round(overlay),
            "ratio": round(overlay / base, 4),
        }
        daemons = [runner.procs[n].pid for n in ("spoke1", "spoke2")]
        under_cpu = cpu_per_gb(lab, "spoke2", "spoke1", spoke2_nbma, RATE, seconds, [])
        over_cpu = cpu_per_gb(lab, "host2", "host1", host2, RATE, seconds, daemons)
        result["cpu_s_per_gb_at_fixed_rate"] = {
            "rate_mbit": RATE,
            "underlay": round(under_cpu, 2),
            "overlay_shortcut": round(over_cpu, 2),
            "ratio": round(over_cpu / under_cpu, 1),
        }
    finally:
        lab.down()
    return result


if __name__ == "__main__":
    main()
