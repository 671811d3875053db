"""The kernel data plane against the userspace one, inside the same QEMU guests.

Two spokes in guests (Debian's kernel, TCG), a userspace hub on the host
side; the spokes run `dataplane: kernel`, then, in a second lab of the same
run, `dataplane: userspace` (TAP + raw GRE, the C pump where built). For
each: ping RTT host1 -> host2 across the spoke1-spoke2 shortcut and TCP
throughput (iperf3) the same way. Under emulation absolute numbers mean
little: compare the ratio kernel / userspace of the same run.

    python bench/bench_kernel_plane.py [--seconds 5] [--pings 20]

Needs root (namespaces, taps), qemu-system-x86, iperf3.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
from typing import Any

from dmvpn.lab import Lab, Topology
from dmvpn.lab.runner import Runner
from dmvpn.lab.vmnode import DmvpnGuests

TOPOLOGY = {
    "phase": 3,
    "holdtime": 600,
    "nodes": {
        "hubs": [{"name": "hub1"}],
        "spokes": [{"name": "spoke1", "kind": "frr"}, {"name": "spoke2", "kind": "frr"}],
    },
}


def _wait(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.5)


def measure(dataplane: str, seconds: int, pings: int) -> dict[str, float]:
    lab = Lab(Topology.from_data(TOPOLOGY), prefix=f"bkp{os.getpid() % 1000}{dataplane[0]}-")
    lab.up()
    try:
        runner = Runner(lab)
        runner.start()
        guests = DmvpnGuests(lab, dataplane=dataplane)
        guests.start()
        boot = guests.wait_ready(timeout=300)
        _wait("registration", lambda: all(guests.events(s, "nhs-up") for s in guests.nodes), 60)
        host2 = str(lab.topology.plan("host2").lan.ip)  # type: ignore[union-attr]

        def shortcut() -> bool:
            lab.exec("host1", ["ping", "-c", "1", "-W", "1", host2], capture_output=True)
            out = guests.run("spoke1", "ip route show proto 177").output
            return "192.168.2.0/24 via 10.0.0.12" in out

        _wait("the shortcut", shortcut, 60)
        ping = lab.exec(
            "host1",
            ["ping", "-c", str(pings), "-i", "0.2", host2],
            capture_output=True,
            text=True,
        ).stdout
        m = re.search(r"= [\d.]+/([\d.]+)/", ping)
        rtt = float(m.group(1)) if m else float("nan")
        server = lab.popen("host2", ["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        res = lab.exec(
            "host1",
            ["iperf3", "-c", host2, "-t", str(seconds), "-J"],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
        server.wait(timeout=30)
        tcp = json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
        return {"boot_s": boot, "rtt_ms": rtt, "tcp_mbit": tcp}
    finally:
        lab.down()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--pings", type=int, default=20)
    args = ap.parse_args()
    results = {dp: measure(dp, args.seconds, args.pings) for dp in ("kernel", "userspace")}
    for dp, r in results.items():
        print(
            f"{dp:9} ready {r['boot_s']:5.1f} s  rtt {r['rtt_ms']:6.2f} ms  "
            f"tcp {r['tcp_mbit']:7.1f} Mbit/s"
        )
    k, u = results["kernel"], results["userspace"]
    print(
        f"kernel/userspace: rtt {k['rtt_ms'] / u['rtt_ms']:.2f}, "
        f"tcp {k['tcp_mbit'] / u['tcp_mbit']:.2f}"
    )


if __name__ == "__main__":
    main()
