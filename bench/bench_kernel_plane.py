"""The kernel data plane against the userspace one, inside the same QEMU guests.

Two spokes in guests (Debian's kernel, TCG), a userspace hub on the host
side; the spokes run `dataplane: kernel`, then, in a second lab of the same
run, `dataplane: userspace` (TAP + raw GRE, the C pump where built). For
each: ping RTT host1 -> host2 across the spoke1-spoke2 shortcut and TCP
throughput (iperf3) the same way. Under emulation absolute numbers mean
little: compare the ratio kernel / userspace of the same run.

With `--ipsec` each plane is measured clear and protected (a PSK, the
lab's `ipsec_psk`): by default both planes' spokes use the guest kernel's
ESP (transport mode between them); `userspace:libipsec` names charon's
kernel-libipsec instead (tunnel mode, userspace ESP); the ratios protected
/ clear are the numbers to read. Each line also gives the two spokes'
guest CPU seconds per GB received (TCG: read ratios).

    python bench/bench_kernel_plane.py [--seconds 5] [--pings 20] [--ipsec]
        [--planes kernel,userspace,userspace:libipsec]

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
        "spokes": [{"name": "spoke1", "kind": "vm"}, {"name": "spoke2", "kind": "vm"}],
    },
}


def _wait(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.5)


PSK = "bench-psk-0123456789"


def _guest_cpu(guests: DmvpnGuests, node: str) -> float:
    """Busy CPU seconds of a guest so far (/proc/stat: all but idle and iowait)."""
    fields = guests.run(node, "head -n 1 /proc/stat").output.split()[1:]
    ticks = [int(f) for f in fields]
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


class _Guests(DmvpnGuests):
    """The guests with `ipsec.esp` set (who does ESP: docs/IPSEC.md)."""

    esp: str | None = None

    def config(self, node: str) -> dict[str, Any]:
        cfg = super().config(node)
        if self.esp is not None and "ipsec" in cfg:
            cfg["ipsec"] = {**cfg["ipsec"], "esp": self.esp}
        return cfg


def measure(plane: str, seconds: int, pings: int, ipsec: bool = False) -> dict[str, float]:
    """``plane``: `kernel`, `userspace`, or either with `:kernel` or
    `:libipsec` naming who does ESP (default: auto, the kernel's in guests)."""
    dataplane, _, esp = plane.partition(":")
    topology = {**TOPOLOGY, **({"ipsec_psk": PSK} if ipsec else {})}
    tag = f"{dataplane[0]}{esp[:1]}{'p' if ipsec else 'c'}"
    lab = Lab(Topology.from_data(topology), prefix=f"bkp{os.getpid() % 1000}{tag}-")
    lab.up()
    try:
        runner = Runner(lab)
        runner.start()
        guests = _Guests(lab, dataplane=dataplane)
        guests.esp = esp or None
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
        before = {s: _guest_cpu(guests, s) for s in guests.nodes}
        res = lab.exec(
            "host1",
            ["iperf3", "-c", host2, "-t", str(seconds), "-J"],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
        after = {s: _guest_cpu(guests, s) for s in guests.nodes}
        server.wait(timeout=30)
        end = json.loads(res.stdout)["end"]
        tcp = end["sum_received"]["bits_per_second"] / 1e6
        gb = end["sum_received"]["bytes"] / 1e9
        # Busy CPU seconds of both spokes' guests (one vCPU each) over the
        # transfer, per GB that arrived: the planes' cost, ESP's included.
        busy = sum(after[s] - before[s] for s in guests.nodes)
        out = {"boot_s": boot, "rtt_ms": rtt, "tcp_mbit": tcp, "cpu_s_per_gb": busy / gb}
        if ipsec:  # the SA the shortcut took, as charon agreed it
            view = guests.api("spoke1", "/v1/ipsec")
            modes = [p["child"]["mode"] for p in view["peers"] if p["remote"] == "172.30.0.12"]
            print(f"{plane} spoke1 <-> spoke2 SA: {modes}, ESP {view['esp']}", flush=True)
        return out
    finally:
        lab.down()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--pings", type=int, default=20)
    ap.add_argument("--ipsec", action="store_true", help="also measure each plane protected")
    ap.add_argument("--planes", default="kernel,userspace")
    args = ap.parse_args()
    planes = args.planes.split(",")
    # Clear: once per plane (who would do ESP does not matter without it).
    bases = list(dict.fromkeys(p.partition(":")[0] for p in planes))
    runs = [(dp, False) for dp in bases] + ([(dp, True) for dp in planes] if args.ipsec else [])
    results = {run: measure(run[0], args.seconds, args.pings, run[1]) for run in runs}
    for (dp, sec), r in results.items():
        print(
            f"{dp:18} {'ipsec' if sec else 'clear':5} ready {r['boot_s']:5.1f} s  "
            f"rtt {r['rtt_ms']:6.2f} ms  tcp {r['tcp_mbit']:7.1f} Mbit/s  "
            f"cpu {r['cpu_s_per_gb']:6.1f} s/GB"
        )
    if "kernel" in planes and "userspace" in planes:
        k, u = results["kernel", False], results["userspace", False]
        print(
            f"kernel/userspace clear: rtt {k['rtt_ms'] / u['rtt_ms']:.2f}, "
            f"tcp {k['tcp_mbit'] / u['tcp_mbit']:.2f}, "
            f"cpu/GB {k['cpu_s_per_gb'] / u['cpu_s_per_gb']:.2f}"
        )
    if args.ipsec:
        for dp in planes:
            c, p = results[dp.partition(":")[0], False], results[dp, True]
            print(
                f"{dp} protected/clear: rtt {p['rtt_ms'] / c['rtt_ms']:.2f}, "
                f"tcp {p['tcp_mbit'] / c['tcp_mbit']:.2f}, "
                f"cpu/GB {p['cpu_s_per_gb'] / c['cpu_s_per_gb']:.2f}"
            )
        if "kernel" in planes and "userspace" in planes:
            k, u = results["kernel", True], results["userspace", True]
            print(
                f"kernel plane/userspace plane protected: rtt {k['rtt_ms'] / u['rtt_ms']:.2f}, "
                f"tcp {k['tcp_mbit'] / u['tcp_mbit']:.2f}, "
                f"cpu/GB {k['cpu_s_per_gb'] / u['cpu_s_per_gb']:.2f}"
            )


if __name__ == "__main__":
    main()
