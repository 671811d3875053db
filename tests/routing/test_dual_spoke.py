"""Dual spoke (issue 12): a site whose LAN has two spokes, either of which
carries it. The host's gateway is a VRRP address the spokes' daemons move
(daemon/vrrp.py), held only by a spoke with an NHS up; the hub's route to the
site is ECMP over the site's spokes that answer echoes (`track`). Killing
the master's daemon, or cutting its uplink, costs the site about a second
each way (bench/bench_hub_failover.py measures it).

Phase 1: in phase 3 another spoke's shortcut to the dead spoke would outlive
it (docs/ROUTING.md, "Dual spoke")."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dmvpn.cli.lab import _status_data
from dmvpn.lab.failover import kill_daemon, outage
from dmvpn.lab.netns import Lab
from dmvpn.lab.runner import Runner
from dmvpn.lab.topology import Topology

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root for network namespaces (CI runs as root)"
)

DUAL_SPOKE = {
    "phase": 1,
    "nodes": {
        "hubs": [{"name": "hub1"}],
        "spokes": [
            {"name": "spoke1", "site": "hq"},
            {"name": "spoke2", "site": "hq"},
            {"name": "spoke3"},
        ],
    },
}
SITE_HOST, OTHER_HOST = "192.168.1.10", "192.168.3.10"


@pytest.fixture
def dual_spoke(tmp_path: Path) -> Iterator[tuple[Lab, Runner]]:
    lab = Lab(
        Topology.from_data(DUAL_SPOKE),
        prefix=f"dsp{os.getpid() % 100000}-",
        state_path=tmp_path / "lab.json",
    )
    lab.up()
    try:
        runner = Runner(lab)
        runner.start()
        runner.wait_registered()
        yield lab, runner
    finally:
        lab.down()


def hops(lab: Lab, node: str, prefix: str) -> set[str]:
    out = lab.exec(node, ["ip", "route", "show", prefix], capture_output=True, text=True).stdout
    words = out.split()
    return {words[i + 1] for i, w in enumerate(words) if w == "via" and i + 1 < len(words)}


def role(runner: Runner, node: str) -> str:
    """What the node's last VRRP event says it is (spoke2 may be master for
    a moment at start, when it registers before spoke1)."""
    last = [e["kind"] for e in runner.events(node) if e["kind"] in ("vrrp-master", "vrrp-backup")]
    return last[-1].removeprefix("vrrp-") if last else "backup"


def site_status(lab: Lab) -> dict[str, Any]:
    """`dmvpn lab status --json`'s entry for the site."""
    (site,) = _status_data(lab)["sites"]
    return dict(site)


def test_either_spoke_carries_the_site(dual_spoke: tuple[Lab, Runner]) -> None:
    lab, runner = dual_spoke
    # spoke1 (priority 200) holds the gateway; the hub routes the site over both.
    runner.wait_for("spoke1 master", lambda: role(runner, "spoke1") == "master", timeout=10)
    runner.wait_for("spoke2 backup", lambda: role(runner, "spoke2") == "backup", timeout=5)
    runner.wait_for(
        "the hub's route to the site over both spokes",
        lambda: hops(lab, "hub1", "192.168.1.0/24") == {"10.0.0.11", "10.0.0.12"},
        timeout=10,
    )
    # What lab status and `show vrrp` say (from the daemons' API).
    site = site_status(lab)
    assert site["spokes"] == ["spoke1", "spoke2"] and site["gateway"] == "192.168.1.1"
    assert site["master"] == "spoke1", site
    assert site["roles"] == {"spoke1": "master", "spoke2": "backup"}, site
    assert site["priorities"] == {"spoke1": 200, "spoke2": 190}, site
    show = subprocess.run(
        [*runner.dmvpn, "show", "vrrp", "--socket", str(runner.socket_path("spoke2"))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "lan0" in show and "Backup" in show and "192.168.1.1" in show, show

    # kill -9 of the master's daemon, no traffic before: host1 -> host3 and back.
    lost = outage(lab, "host1", OTHER_HOST, lambda: kill_daemon(lab, "spoke1"), traffic=False)
    assert lost.recovered and lost.seconds < 3.0, lost
    assert role(runner, "spoke2") == "master"
    site = site_status(lab)
    assert site["master"] == "spoke2" and site["roles"]["spoke1"] is None, site
    assert hops(lab, "hub1", "192.168.1.0/24") == {"10.0.0.12"}

    # spoke1 comes back and takes the gateway back (it is preferred).
    runner.start(["spoke1"])
    runner.wait_for("spoke1 master again", lambda: role(runner, "spoke1") == "master", timeout=20)
    runner.wait_for(
        "the hub's route over both again",
        lambda: hops(lab, "hub1", "192.168.1.0/24") == {"10.0.0.11", "10.0.0.12"},
        timeout=10,
    )
    runner.wait_for("spoke2 backup again", lambda: role(runner, "spoke2") == "backup", timeout=5)

    # spoke1 loses its uplink (its router is cut off, its daemon runs on):
    # it loses its NHS and gives the gateway up; the hub stops using it.
    # Measured the other way: from the other site to the dual spoke site.
    def cut() -> None:
        lab.exec("spoke1", ["ip", "link", "set", "nbma0", "down"], check=True)

    lost = outage(lab, "host3", SITE_HOST, cut, traffic=False)
    assert lost.recovered and lost.seconds < 3.0, lost
    runner.wait_for(
        "spoke1 resigned for want of an NHS",
        lambda: any("no NHS is up" in e["message"] for e in runner.events("spoke1", "vrrp-backup")),
        timeout=5,
    )
    assert role(runner, "spoke2") == "master"
    assert hops(lab, "hub1", "192.168.1.0/24") == {"10.0.0.12"}
