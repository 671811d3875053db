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

from ..capture import MARKER_SRC, flush

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

    def config(self, node: str) -> dict:  # type: ignore[type-arg]
        """The node's config, with a management socket of this test's own: the
        default /run/dmvpn/<node>.sock would clash with another suite's lab."""
        return {**self.topo.node_config(node), "socket": str(self.logs / f"{node}.sock")}

    def start(self, node: str) -> None:
        cfg = self.logs / f"{node}.yaml"
        cfg.write_text(yaml.safe_dump(json.loads(json.dumps(self.config(node), default=str))))
        log = (self.logs / f"{node}.log").open("a")
        self.procs[node] = self.lab.popen(
            node, [DMVPN, "run", "-c", str(cfg)], stdout=log, stderr=log
        )

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

    def dataplane(self, node: str) -> dict[str, int]:
        """The node's data-plane counters (`show nhrp traffic --json`)."""
        sock = str(self.logs / f"{node}.sock")
        out = self.sh(node, DMVPN, "show", "nhrp", "traffic", "--json", "--socket", sock)
        return json.loads(out)["interfaces"][0]["dataplane"]  # type: ignore[no-any-return]

    def hops(self, node: str, dst: str) -> list[str]:
        out = self.sh(node, "traceroute", "-n", "-q", "1", "-w", "1", "-m", "5", dst)
        return [line.split()[1] for line in out.splitlines()[1:] if len(line.split()) > 1]


# Every cloud test runs on both data planes (docs/ARCHITECTURE.md).
@pytest.fixture(params=["userspace", "ebpf"])
def cloud_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    labs: list[Lab] = []

    def make(phase: int, holdtime: int = 60) -> Cloud:
        topo = Topology.from_data(
            {"phase": phase, "holdtime": holdtime, "dataplane": request.param}
        )
        lab = Lab(topo, prefix=f"dme{os.getpid() % 100000}-", state_path=tmp_path / "lab.json")
        labs.append(lab)
        lab.up()
        cloud = Cloud(lab, topo, tmp_path)
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
    cloud.wait(
        "spoke1 and spoke2 to re-register",
        lambda: len(cloud.events("hub1", "registered")) >= 5,
        timeout=20,
    )
    host2 = str(cloud.topo.plan("host2").lan.ip)  # type: ignore[union-attr]
    assert cloud.lab.exec("host1", ["ping", "-c", "2", "-W", "1", host2]).returncode == 0


def test_multicast_from_the_hub_reaches_every_spoke(cloud_factory) -> None:  # type: ignore[no-untyped-def]
    cloud: Cloud = cloud_factory(3)
    for plan in cloud.topo.spokes:
        cloud.sh(plan.name, "sysctl", "-qw", "net.ipv4.icmp_echo_ignore_broadcasts=0")
    # `map multicast dynamic` on the hub: one GRE copy per registered spoke.
    out = cloud.sh("hub1", "ping", "-c", "2", "-W", "1", "-I", "dmvpn0", "224.0.0.1")
    answered = {line.split()[3].rstrip(":") for line in out.splitlines() if " bytes from " in line}
    assert answered >= {str(p.tunnel.ip) for p in cloud.topo.spokes}, out  # type: ignore[union-attr]


def test_spoke_returns_with_a_new_nbma_address(cloud_factory) -> None:  # type: ignore[no-untyped-def]
    cloud: Cloud = cloud_factory(3)
    cloud.stop("spoke1")
    old = str(cloud.topo.plan("spoke1").nbma)
    new = "172.30.0.111"
    cloud.sh("spoke1", "ip", "addr", "del", old, "dev", "nbma0")
    cloud.sh("spoke1", "ip", "addr", "add", f"{new}/24", "dev", "nbma0")
    config = cloud.config("spoke1")
    config["interfaces"][0]["tunnel"]["source"] = new
    path = cloud.logs / "spoke1.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(config, default=str))))
    log = (cloud.logs / "spoke1.log").open("a")
    cloud.procs["spoke1"] = cloud.lab.popen(
        "spoke1", [DMVPN, "run", "-c", str(path)], stdout=log, stderr=log
    )

    # no-unique: the hub replaces the binding at once (RFC 2332 5.2.3).
    def rebound() -> bool:
        return any(e.get("nbma") == new for e in cloud.events("hub1", "registered"))

    cloud.wait("hub1 to rebind spoke1", rebound)
    host2 = str(cloud.topo.plan("host2").lan.ip)  # type: ignore[union-attr]
    assert (
        cloud.lab.exec("host1", ["ping", "-c", "3", "-i", "0.2", "-W", "1", host2]).returncode == 0
    )
    time.sleep(0.5)
    later = cloud.hops("host1", host2)
    assert later[1] == str(cloud.topo.plan("spoke2").tunnel.ip), later  # type: ignore[union-attr]


def test_bad_config_is_refused_and_changes_nothing(cloud_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cloud: Cloud = cloud_factory(3)
    bad = tmp_path / "bad.yaml"
    config = cloud.config("spoke1")
    config["interfaces"][0]["name"] = "dmvpn9"
    config["interfaces"][0]["nhrp"]["holdtme"] = 5
    bad.write_text(yaml.safe_dump(json.loads(json.dumps(config, default=str))))
    res = cloud.lab.exec("spoke1", [DMVPN, "run", "-c", str(bad)], capture_output=True, text=True)
    assert res.returncode == 1
    assert "interfaces.0.nhrp.holdtme: Extra inputs are not permitted" in res.stderr
    assert "refused; nothing was changed" in res.stderr
    assert "dmvpn9" not in cloud.sh("spoke1", "ip", "link")


def test_underlay_capture_decodes_cleanly(cloud_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    assert shutil.which("tshark"), "tshark is installed by ./run.sh test"
    pcap = tmp_path / "underlay.pcap"
    cloud: Cloud = cloud_factory(3, holdtime=12)
    errors = (tmp_path / "tshark.err").open("w")
    tshark = cloud.lab.popen(
        "inet",
        ["tshark", "-q", "-i", "br0", "-w", str(pcap), "-f", "ip proto 47"],
        stdout=errors,
        stderr=errors,
    )
    # Capturing once its marker is in the file (a fixed sleep once let the
    # shortcut's exchange go by before tshark had started, CI 2026-12-06).
    cloud.wait("tshark to start", lambda: pcap.exists() and pcap.stat().st_size > 0)
    flush(cloud.lab, pcap)
    host2 = str(cloud.topo.plan("host2").lan.ip)  # type: ignore[union-attr]
    cloud.lab.exec("host1", ["ping", "-c", "3", "-i", "0.3", "-W", "1", host2])
    time.sleep(4.5)  # a registration refresh (holding time 12 s / 3)
    flush(cloud.lab, pcap)
    tshark.terminate()
    tshark.wait(timeout=10)
    fields = subprocess.run(
        [
            "tshark",
            "-r",
            str(pcap),
            "-T",
            "fields",
            "-e",
            "gre.key",
            "-e",
            "nhrp.hdr.op.type",
            "-o",
            "nhrp.auth_ext_has_addr:FALSE",
            "-Y",
            f"ip.src != {MARKER_SRC}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    rows = [line.split("\t") for line in fields if line.strip()]
    assert rows and {r[0] for r in rows} == {"0x0000002a"}  # key 42 on every GRE packet
    nhrp_types = {r[1] for r in rows if len(r) > 1 and r[1]}
    assert {"3", "4", "8", "1", "2"} <= nhrp_types, nhrp_types
    expert = subprocess.run(
        ["tshark", "-r", str(pcap), "-q", "-z", "expert,warn"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Malformed" not in expert and "NHRP" not in expert, expert
    decoded = subprocess.run(
        [DMVPN, "decode", "--json", "--nhrp-only", str(pcap)], capture_output=True, text=True
    )
    assert decoded.returncode == 0, decoded.stderr
    recs = [json.loads(line) for line in decoded.stdout.splitlines()]
    assert recs and all(r["roundtrip"] for r in recs)


def test_sighup_applies_live_knobs_and_refuses_structural_changes(cloud_factory) -> None:  # type: ignore[no-untyped-def]
    cloud: Cloud = cloud_factory(3)
    path = cloud.logs / "hub1.yaml"
    config = yaml.safe_load(path.read_text())
    config["interfaces"][0]["nhrp"]["redirect"] = False
    path.write_text(yaml.safe_dump(config))
    cloud.procs["hub1"].send_signal(1)
    cloud.wait("hub1 to reload", lambda: cloud.events("hub1", "reloaded"))
    host3 = str(cloud.topo.plan("host3").lan.ip)  # type: ignore[union-attr]
    assert (
        cloud.lab.exec("host1", ["ping", "-c", "3", "-i", "0.2", "-W", "1", host3]).returncode == 0
    )
    time.sleep(0.3)
    assert not cloud.events("hub1", "redirect")  # redirect is off now: no shortcut
    assert "proto 177" not in cloud.sh("spoke1", "ip", "route")
    # A new GRE key would drop every tunnel: refused, with the reason.
    config["interfaces"][0]["tunnel"]["key"] = 7
    path.write_text(yaml.safe_dump(config))
    cloud.procs["hub1"].send_signal(1)
    cloud.wait("the refusal", lambda: cloud.events("hub1", "reload-refused"))
    (refusal,) = cloud.events("hub1", "reload-refused")
    assert "tunnel changed" in refusal["message"]
    assert cloud.procs["hub1"].poll() is None
    assert cloud.lab.exec("host1", ["ping", "-c", "2", "-W", "1", host3]).returncode == 0
