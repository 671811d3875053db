"""Whole clouds in network namespaces: one `dmvpn run` per router, real GRE
between namespaces, real kernel routing, hosts behind the spokes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dmvpn.lab.netns import Lab
from dmvpn.lab.topology import Topology

DMVPN = str(Path(sys.executable).with_name("dmvpn"))

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root for network namespaces (CI runs as root)"
)


class Cloud:
    def __init__(self, lab: Lab, topo: Topology, logs: Path) -> None:
        self.lab = lab
        self.topo = topo
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}  # type: ignore[type-arg]

    def start(self, node: str) -> None:
        cfg = self.logs / f"{node}.yaml"
        cfg.write_text(
            yaml.safe_dump(json.loads(json.dumps(self.topo.node_config(node), default=str)))
        )
        log = (self.logs / f"{node}.log").open("a")
        self.procs[node] = self.lab.popen(node, [DMVPN, "run", "-c", str(cfg)], stdout=log,
                                          stderr=log)  # fmt: skip

    def stop(self, node: str) -> None:
        proc = self.procs.pop(node)
        proc.terminate()
        proc.wait(timeout=10)

    def events(self, node: str, kind: str) -> list[dict]:  # type: ignore[type-arg]
        path = self.logs / f"{node}.log"
        out = []
        for line in path.read_text().splitlines() if path.exists() else []:
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("kind") == kind:
                    out.append(record)
        return out

    def wait(self, what: str, check, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.1)
        logs = {p.name: p.read_text()[-1500:] for p in self.logs.glob("*.log")}
        pytest.fail(f"timed out waiting for {what}; logs: {logs}")

    def sh(self, node: str, *argv: str) -> str:
        return self.lab.exec(node, list(argv), capture_output=True, text=True).stdout

    def hops(self, node: str, dst: str) -> list[str]:
        out = self.sh(node, "traceroute", "-n", "-q", "1", "-w", "1", "-m", "5", dst)
        return [line.split()[1] for line in out.splitlines()[1:] if len(line.split()) > 1]


@pytest.fixture
def cloud_factory(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    labs: list[Lab] = []

    def make(phase: int, holdtime: int = 60) -> Cloud:
        topo = Topology.from_data({"phase": phase, "holdtime": holdtime})
        lab = Lab(topo, prefix=f"dme{os.getpid() % 100000}-",
                  state_path=tmp_path / "lab.json")  # fmt: skip
        labs.append(lab)
        lab.up()
        cloud = Cloud(lab, topo, tmp_path)
        for plan in topo.routers:
            cloud.start(plan.name)
        spokes = [p.name for p in topo.spokes]
        cloud.wait("every spoke to register",
                   lambda: all(cloud.events(s, "nhs-up") for s in spokes))  # fmt: skip
        return cloud

    try:
        yield make
    finally:
        for lab in labs:
            lab.down()


@pytest.mark.parametrize("phase", [1, 2, 3])
def test_phase_paths(cloud_factory, phase: int) -> None:  # type: ignore[no-untyped-def]
    cloud: Cloud = cloud_factory(phase)
    hub = str(cloud.topo.plan("hub1").tunnel.ip)  # type: ignore[union-attr]
    spoke2 = str(cloud.topo.plan("spoke2").tunnel.ip)  # type: ignore[union-attr]
    host2 = str(cloud.topo.plan("host2").lan.ip)  # type: ignore[union-attr]
    first = cloud.hops("host1", host2)
    # The first packets go through the hub in every phase.
    assert first[1] == hub and first[-1] == host2, first
    time.sleep(0.5)  # the redirect/resolution round trips
    later = cloud.hops("host1", host2)
    assert later[-1] == host2
    if phase == 1:
        assert later[1] == hub, later  # never direct
        assert not cloud.events("spoke1", "resolution-sent")
    else:
        assert later[1] == spoke2 and hub not in later, later
    if phase == 3:
        routes = cloud.sh("spoke1", "ip", "route", "show", "proto", "177")
        assert routes.startswith(f"192.168.2.0/24 via {spoke2} dev dmvpn0"), routes
        assert cloud.events("hub1", "redirect")
    assert (
        cloud.lab.exec("host1", ["ping", "-c", "3", "-i", "0.2", "-W", "1", host2]).returncode == 0
    )


def test_clean_stop_and_hub_restart(cloud_factory) -> None:  # type: ignore[no-untyped-def]
    cloud: Cloud = cloud_factory(3, holdtime=12)
    assert len(cloud.events("hub1", "registered")) == 3
    # SIGTERM a spoke: it purges its registration and its interface goes.
    cloud.stop("spoke3")
    cloud.wait("hub1 to drop spoke3", lambda: cloud.events("hub1", "registration-purged"))
    assert cloud.events("spoke3", "deregistered")
    assert "dmvpn0" not in cloud.sh("spoke3", "ip", "link")
    # The hub restarts with an empty cache; spokes come back at their next
    # refresh (a third of the 12 s holding time).
    cloud.stop("hub1")
    cloud.start("hub1")
    cloud.wait("spoke1 and spoke2 to re-register",
               lambda: len(cloud.events("hub1", "registered")) >= 5, timeout=20)  # fmt: skip
    host2 = str(cloud.topo.plan("host2").lan.ip)  # type: ignore[union-attr]
    assert cloud.lab.exec("host1", ["ping", "-c", "2", "-W", "1", host2]).returncode == 0
