"""Hub failure to first reply (issue 12): a dual-hub lab (hub1, hub2, two
spokes), `kill -9` of hub1's daemon (by PID, from the lab's records), and
how long host1 -> host2 stops. Needs root (network namespaces) and FRR.

Designs, each measured `--trials` times on a fresh lab (median and worst):

    static     the lab's default with two hubs: `via: nhs` + NHS liveness
               echoes (0.5 s x 3), cold (no traffic before the kill) and
               with traffic flowing (ping every 50 ms before and after)
    dual cloud a DMVPN interface per hub on each spoke, the summary ECMP over
               both clouds (liveness on each), cold and phase 1 with traffic
    ospf-bfd   OSPF point-to-multipoint (next hop: the hubs, ECMP) with BFD
               (bfdd's defaults: 300 ms x 3) on every adjacency, cold, and
               phase 1 with traffic flowing
    bgp-bfd    BGP (hubs with dynamic neighbours, route reflectors) with BFD
               on every session, cold, and phase 1 with traffic flowing
    dual spoke one hub; spoke1 and spoke2 carry site hq (host1), spoke3
               host3; `kill -9` of the master spoke1's daemon instead of a
               hub's: host1 -> host3 (VRRP 0.2 s moves the gateway) and
               host3 -> host1 (the hub's echoes, 0.3 s x 3, move its route),
               cold, and phase 1 with traffic flowing

Baseline, same run: the issue's measurement before this work is "never
recovers" (the static route kept pointing at hub1); here the same cloud
with `via: 10.0.0.1` (a fixed next hop, no liveness) is measured once,
bounded by --deadline. For the dual spoke: the same site without VRRP
(host1's gateway fixed at spoke1, the hub's route fixed via spoke1).

Also per design: the lab's convergence from `lab up` (every spoke
registered, and for OSPF the route to the other LAN installed).

With --idle instead: per design, one hub and three spokes, the time from
`lab up` to spoke1 holding a route to host3's LAN (for a routing protocol,
after its daemons started), then the hub's packets per second in over 10 s
idle: GRE in on the underlay (NHRP + everything tunnelled) and what of it
reached the TAP (routing protocol packets, BFD, liveness echoes; NHRP
never does), so NHRP/s is the difference.

Run: sudo .venv/bin/python bench/bench_hub_failover.py [--trials 5] [--deadline 20] [--idle]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from dmvpn.lab.failover import kill_daemon, outage
from dmvpn.lab.netns import Lab
from dmvpn.lab.routingd import RoutingDaemons
from dmvpn.lab.runner import Runner
from dmvpn.lab.topology import Topology

NODES = {
    "hubs": [{"name": "hub1"}, {"name": "hub2"}],
    "spokes": [{"name": "spoke1"}, {"name": "spoke2"}],
}
DST = "192.168.2.10"


def converged(lab: Lab) -> bool:
    out = lab.exec("spoke1", ["ip", "route", "show", "192.168.2.0/24"], capture_output=True)
    summary = lab.exec("spoke1", ["ip", "route", "show", "192.168.0.0/16"], capture_output=True)
    return bool(out.stdout.strip() or summary.stdout.strip())


def trial(
    routing: Any,
    traffic: bool,
    deadline: float,
    fixed: bool = False,
    phase: int = 3,
    dual_cloud: bool = False,
) -> tuple[float, float, bool]:
    """(convergence s, outage s, recovered) of one fresh lab."""
    topo = Topology.from_data(
        {"routing": routing, "nodes": NODES, "phase": phase, "dual_cloud": dual_cloud}
    )
    lab = Lab(topo, prefix=f"bhf{os.getpid() % 100000}-")
    start = time.monotonic()
    lab.up()
    try:
        runner = Runner(lab)
        if fixed:
            # The issue's cloud: the summary via hub1, no liveness check.
            base = runner.node_config

            def node_config(node: str) -> dict[str, Any]:
                cfg = base(node)
                if node.startswith("spoke"):
                    cfg["routes"] = [{"prefix": "192.168.0.0/16", "via": "10.0.0.1"}]
                    cfg["interfaces"][0]["nhrp"].pop("nhs_liveness", None)
                return cfg

            runner.node_config = node_config  # type: ignore[method-assign]
        runner.start()
        runner.wait_registered()
        if topo.routing.dynamic:
            RoutingDaemons(lab).start()
        runner.wait_for("a route to host2", lambda: converged(lab), 60)
        took = time.monotonic() - start
        if topo.routing.dynamic:
            time.sleep(3)  # BFD sessions up after the adjacencies
        lost = outage(
            lab, "host1", DST, lambda: kill_daemon(lab, "hub1"), traffic=traffic, deadline=deadline
        )
        return took, lost.seconds, lost.recovered
    finally:
        lab.down()


SITE = {
    "hubs": [{"name": "hub1"}],
    "spokes": [
        {"name": "spoke1", "site": "hq"},
        {"name": "spoke2", "site": "hq"},
        {"name": "spoke3"},
    ],
}


def dual_spoke_trial(
    traffic: bool, deadline: float, reverse: bool = False, fixed: bool = False, phase: int = 3
) -> tuple[float, float, bool]:
    """(convergence s, outage s, recovered): kill -9 of the site's master spoke."""
    topo = Topology.from_data({"nodes": SITE, "phase": phase})
    lab = Lab(topo, prefix=f"bds{os.getpid() % 100000}-")
    start = time.monotonic()
    lab.up()
    try:
        runner = Runner(lab)
        if fixed:
            # No first-hop redundancy: the host's gateway and the hub's
            # route are spoke1's for good.
            base = runner.node_config

            def node_config(node: str) -> dict[str, Any]:
                cfg = base(node)
                cfg.pop("vrrp", None)
                if node == "hub1":
                    for r in cfg["routes"]:
                        if r.pop("track", None) is not None:
                            r["via"] = "10.0.0.11"
                return cfg

            runner.node_config = node_config  # type: ignore[method-assign]
            lab.exec("host1", ["ip", "route", "replace", "default", "via", "192.168.1.2"])
        runner.start()
        runner.wait_registered()

        def ready() -> bool:
            hub = lab.exec("hub1", ["ip", "route", "show", "192.168.1.0/24"], capture_output=True)
            master = fixed or bool(runner.events("spoke1", "vrrp-master"))
            return b"10.0.0.11" in hub.stdout and master

        runner.wait_for("the site's routes and gateway", ready, 30)
        took = time.monotonic() - start
        src, dst = ("host3", "192.168.1.10") if reverse else ("host1", "192.168.3.10")
        lost = outage(
            lab, src, dst, lambda: kill_daemon(lab, "spoke1"), traffic=traffic, deadline=deadline
        )
        return took, lost.seconds, lost.recovered
    finally:
        lab.down()


ONLY: list[str] = []


def series(
    name: str, n: int, run: Callable[[], tuple[float, float, bool]]
) -> dict[str, Any] | None:
    if ONLY and not any(word in name for word in ONLY):
        return None
    results = [run() for _ in range(n)]
    outages = [r[1] for r in results]
    row = {
        "design": name,
        "trials": n,
        "outage_median_s": round(statistics.median(outages), 2),
        "outage_worst_s": round(max(outages), 2),
        "not_recovered": sum(1 for r in results if not r[2]),
        "convergence_median_s": round(statistics.median(r[0] for r in results), 2),
        "outages_s": [round(x, 2) for x in outages],
    }
    print(json.dumps(row), flush=True)
    return row


def counter(lab: Lab, node: str, dev: str, what: str) -> int:
    path = f"/sys/class/net/{dev}/statistics/{what}"
    return int(lab.exec(node, ["cat", path], capture_output=True, text=True).stdout)


def idle(name: str, routing: Any, hubs: int = 1, seconds: float = 10.0) -> None:
    nodes = {"hubs": [{"name": f"hub{n}"} for n in range(1, hubs + 1)]}
    topo = Topology.from_data({"routing": routing, "nodes": nodes})
    lab = Lab(topo, prefix=f"bhi{os.getpid() % 100000}-")
    start = time.monotonic()
    lab.up()
    try:
        runner = Runner(lab)
        runner.start()
        runner.wait_registered()
        if topo.routing.dynamic:
            RoutingDaemons(lab).start()

        def route() -> bool:
            for prefix in ("192.168.3.0/24", "192.168.0.0/16"):
                out = lab.exec("spoke1", ["ip", "route", "show", prefix], capture_output=True)
                if out.stdout.strip():
                    return True
            return False

        runner.wait_for("a route to host3's LAN", route, 90)
        took = time.monotonic() - start
        time.sleep(3)
        before = (
            counter(lab, "hub1", "nbma0", "rx_packets"),
            counter(lab, "hub1", "dmvpn0", "rx_packets"),
        )
        time.sleep(seconds)
        after = (
            counter(lab, "hub1", "nbma0", "rx_packets"),
            counter(lab, "hub1", "dmvpn0", "rx_packets"),
        )
        underlay = (after[0] - before[0]) / seconds
        tap = (after[1] - before[1]) / seconds
        row = {
            "design": name,
            "convergence_s": round(took, 2),
            "hub_underlay_in_pps": round(underlay, 1),
            "hub_tap_in_pps": round(tap, 1),
            "nhrp_pps_approx": round(underlay - tap, 1),
        }
        print(json.dumps(row), flush=True)
    finally:
        lab.down()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--deadline", type=float, default=20.0)
    ap.add_argument("--idle", action="store_true", help="convergence and idle packet rates")
    ap.add_argument("--only", action="append", default=[], help="designs whose name has this")
    args = ap.parse_args()
    ONLY.extend(args.only)
    print(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "load": os.getloadavg(),
                "frr": subprocess.run(
                    ["/usr/lib/frr/zebra", "--version"], capture_output=True, text=True
                ).stdout.split("\n")[0],
            }
        )
    )
    if args.idle:
        idle("static, one hub", "static")
        idle("static, two hubs (liveness 0.5 s)", "static", hubs=2)
        idle("ospf broadcast", "ospf")
        idle(
            "ospf p2mp + bfd",
            {"protocol": "ospf", "ospf_network": "point-to-multipoint", "bfd": True},
        )
        idle("rip, split horizon off", {"protocol": "rip", "split_horizon": False})
        idle("bgp", "bgp")
        return
    d = args.deadline
    series("baseline: fixed via hub1, cold", 1, lambda: trial("static", False, d, fixed=True))
    series("static via nhs + liveness, cold", args.trials, lambda: trial("static", False, d))
    series("static via nhs + liveness, traffic", args.trials, lambda: trial("static", True, d))
    # Phase 1: traffic always crosses a hub, so the kill hits flowing traffic.
    series(
        "static via nhs + liveness, phase 1, traffic",
        args.trials,
        lambda: trial("static", True, d, phase=1),
    )
    series(
        "dual cloud (ECMP over clouds) + liveness, cold",
        args.trials,
        lambda: trial("static", False, d, dual_cloud=True),
    )
    series(
        "dual cloud (ECMP over clouds) + liveness, phase 1, traffic",
        args.trials,
        lambda: trial("static", True, d, phase=1, dual_cloud=True),
    )
    ospf = {"protocol": "ospf", "ospf_network": "point-to-multipoint", "bfd": True}
    series("ospf p2mp + bfd, cold", args.trials, lambda: trial(ospf, False, d))
    series("ospf p2mp + bfd, phase 1, traffic", args.trials, lambda: trial(ospf, True, d, phase=1))
    bgp = {"protocol": "bgp", "bfd": True}
    series("bgp + bfd, cold", args.trials, lambda: trial(bgp, False, d))
    series("bgp + bfd, phase 1, traffic", args.trials, lambda: trial(bgp, True, d, phase=1))
    series(
        "baseline: dual spoke without vrrp (fixed via spoke1), cold",
        1,
        lambda: dual_spoke_trial(False, d, fixed=True),
    )
    series("dual spoke, site -> other, cold", args.trials, lambda: dual_spoke_trial(False, d))
    series(
        "dual spoke, other -> site, cold",
        args.trials,
        lambda: dual_spoke_trial(False, d, reverse=True),
    )
    series(
        "dual spoke, phase 1, traffic",
        args.trials,
        lambda: dual_spoke_trial(True, d, phase=1),
    )


if __name__ == "__main__":
    main()
