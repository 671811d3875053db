"""Front-door VRF (`tunnel.namespace`): every router's underlay (nbma0, its
address and routes) in a namespace of its own, the daemon, its TAP, routes
and LAN in the router's namespace with no route to the underlay at all;
phases 1-3 still work (the lab's `front_door_vrf: true`)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmvpn.lab.netns import NBMA_INTERFACE, Lab
from dmvpn.lab.topology import Topology

from .test_cloud import Cloud

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root for network namespaces (CI runs as root)"
)


class FrontDoorCloud(Cloud):
    def underlay(self, node: str) -> str:
        return self.lab.underlay_namespace(node)

    def config(self, node: str) -> dict:  # type: ignore[type-arg]
        # What the lab's Runner writes (`dmvpn lab up`), with this test's socket.
        cfg = super().config(node)
        cfg["interfaces"][0]["tunnel"]["namespace"] = self.underlay(node)
        return cfg


@pytest.fixture
def front_door(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    labs: list[Lab] = []

    def make(phase: int) -> FrontDoorCloud:
        topo = Topology.from_data({"phase": phase, "front_door_vrf": True})
        lab = Lab(topo, prefix=f"dmf{os.getpid() % 100000}-", state_path=tmp_path / "lab.json")
        labs.append(lab)
        lab.up()
        cloud = FrontDoorCloud(lab, topo, tmp_path)
        for plan in topo.routers:
            cloud.start(plan.name)
        spokes = [p.name for p in topo.spokes]
        cloud.wait(
            "every spoke to register", lambda: all(cloud.events(s, "nhs-up") for s in spokes)
        )
        return cloud

    try:
        yield make
    finally:
        for lab in labs:
            lab.down()  # the -ul namespaces too


@pytest.mark.parametrize("phase", [1, 2, 3])
def test_phases_with_the_underlay_in_its_own_namespace(front_door, phase: int) -> None:  # type: ignore[no-untyped-def]
    cloud: FrontDoorCloud = front_door(phase)
    hub_nbma = str(cloud.topo.plan("hub1").nbma.ip)  # type: ignore[union-attr]
    # The overlay side knows nothing of the underlay; the underlay side has it.
    assert NBMA_INTERFACE not in cloud.sh("spoke1", "ip", "-o", "link")
    res = cloud.lab.exec("spoke1", ["ip", "route", "get", hub_nbma], capture_output=True)
    assert res.returncode != 0  # no route at all
    ul = cloud.underlay("spoke1")
    out = subprocess.run(
        ["ip", "-n", ul, "route", "get", hub_nbma], capture_output=True, text=True, check=True
    ).stdout
    assert NBMA_INTERFACE in out

    hub = str(cloud.topo.plan("hub1").tunnel.ip)  # type: ignore[union-attr]
    host2 = str(cloud.topo.plan("host2").lan.ip)  # type: ignore[union-attr]
    first = cloud.hops("host1", host2)
    assert first[1] == hub and first[-1] == host2, first
    deadline = time.monotonic() + 10
    later = first
    while time.monotonic() < deadline:
        later = cloud.hops("host1", host2)
        if phase == 1 or later[1] != hub:
            break
        time.sleep(0.3)
    assert later[-1] == host2
    if phase == 1:
        assert later[1] == hub, later  # never direct
    else:
        assert hub not in later, later  # the spoke-to-spoke tunnel
