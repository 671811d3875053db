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
from dmvpn.lab.runner import REGISTRATION_TIMEOUT
from dmvpn.lab.topology import Topology

from .test_cloud import DMVPN, Cloud

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

    def make(phase: int, **extra: object) -> FrontDoorCloud:
        topo = Topology.from_data({"phase": phase, "front_door_vrf": True, **extra})
        lab = Lab(topo, prefix=f"dmf{os.getpid() % 100000}-", state_path=tmp_path / "lab.json")
        labs.append(lab)
        lab.up()
        cloud = FrontDoorCloud(lab, topo, tmp_path)
        for plan in topo.routers:
            cloud.start(plan.name)
        spokes = [p.name for p in topo.spokes]
        # The lab's own wait (REGISTRATION_TIMEOUT): the daemons start in
        # parallel, and a spoke whose first attempts the hub missed is next
        # tried at 7 and 15 s (NHRP's doubling backoff); 15 s fell one short
        # once at load 10.
        cloud.wait(
            "every spoke to register",
            lambda: all(cloud.events(s, "nhs-up") for s in spokes),
            timeout=REGISTRATION_TIMEOUT,
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


def test_ipsec_runs_in_the_underlay_namespace(front_door) -> None:  # type: ignore[no-untyped-def]
    """charon (IKE, kernel-libipsec's ipsec0) runs where the underlay is; the
    shortcut comes up protected, and nothing crosses nbma0 as clear GRE."""
    cloud: FrontDoorCloud = front_door(3, ipsec_psk="0123456789abcdef0123")
    ul = cloud.underlay("spoke1")
    links = subprocess.run(
        ["ip", "-n", ul, "-o", "link"], capture_output=True, text=True, check=True
    ).stdout
    assert "ipsec0" in links and "ipsec0" not in cloud.sh("spoke1", "ip", "-o", "link")
    host2 = str(cloud.topo.plan("host2").lan.ip)  # type: ignore[union-attr]
    spoke2_nbma = str(cloud.topo.plan("spoke2").nbma.ip)  # type: ignore[union-attr]
    cloud.sh("host1", "ping", "-c", "3", "-i", "0.3", host2)

    def shortcut_protected() -> bool:
        out = cloud.sh(
            "spoke1", DMVPN, "show", "ipsec", "--socket", str(cloud.logs / "spoke1.sock")
        )
        return f"Peer {spoke2_nbma}" in out and "UP for" in out.split(f"Peer {spoke2_nbma}")[1]

    cloud.wait("the spoke1-spoke2 SA", shortcut_protected, timeout=30)
    cap = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ul,
            "tshark",
            "-q",
            "-i",
            "nbma0",
            "-f",
            "ip proto 47",
            "-a",
            "duration:3",
            "-w",
            str(cloud.logs / "clear.pcap"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        out = cloud.sh("host1", "ping", "-c", "5", "-i", "0.2", host2)
        assert " 0% packet loss" in out, out
    finally:
        cap.wait(timeout=20)
    read = subprocess.run(
        ["tshark", "-r", str(cloud.logs / "clear.pcap")], capture_output=True, text=True
    )
    assert read.returncode == 0, read.stderr  # the capture ran (its file is there)
    assert read.stdout.strip() == "", read.stdout  # no GRE in the clear on the underlay


def test_nat_with_the_underlay_in_its_own_namespace(front_door) -> None:  # type: ignore[no-untyped-def]
    """Spokes behind the lab's NAT routers with every underlay in a namespace
    of its own: the hub sees each NATed spoke at its NAT's public address, and
    phase 3 goes direct between two spokes behind two NATs (each opening its
    NAT with a probe sent through the tunnel, from the overlay side)."""
    from .test_nat import NODES, _direct, _ip, _show

    cloud: FrontDoorCloud = front_door(3, nodes=NODES)
    peers = {p["protocol"].removesuffix("/32"): p for p in _show(cloud, "hub1", "nhrp")["entries"]}
    for spoke, public in (("spoke1", "172.30.0.201"), ("spoke3", "172.30.0.202")):
        entry = peers[_ip(cloud, spoke)]
        assert entry["nbma"] == public and "nat" in entry["flags"], entry
    cloud.wait("host1 -> host3 direct", lambda: _direct(cloud, "host1", "host3", "spoke3"))
    assert any(e["peer"] == _ip(cloud, "spoke3") for e in cloud.events("spoke1", "nat-probe"))
