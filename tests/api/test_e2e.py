"""The management API and the show commands against real daemons: a phase 3
cloud (hub1, spoke1, spoke2, hosts) in network namespaces, every command run
inside a node's namespace with `ip netns exec`, as an operator would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dmvpn.cli import main
from dmvpn.lab.netns import Lab
from dmvpn.lab.topology import Topology

DMVPN = str(Path(sys.executable).with_name("dmvpn"))
# `dmvpn show|clear|events` once registered in dmvpn.cli; until then the same
# click commands through a stand-in group.
_STANDIN = """
import sys, click
from dmvpn.cli.show import clear_group, events_cmd, show_group
group = click.Group("dmvpn", commands=[show_group, clear_group, events_cmd])
group(sys.argv[1:], prog_name="dmvpn")
"""
CLI = [DMVPN] if "show" in main.commands else [sys.executable, "-c", _STANDIN]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root for network namespaces (CI runs as root)"
)

SCRAPE = """
import sys
from pathlib import Path
from dmvpn.cli.show import ApiClient
sys.stdout.write(ApiClient(Path(sys.argv[1])).text("/metrics"))
"""


class Cloud:
    def __init__(self, lab: Lab, topo: Topology, work: Path) -> None:
        self.lab = lab
        self.topo = topo
        self.work = work
        self.procs: dict[str, subprocess.Popen[Any]] = {}

    def sock(self, node: str) -> str:
        return str(self.work / f"{node}.sock")

    def start(self, node: str) -> None:
        data = self.topo.node_config(node)
        data["socket"] = self.sock(node)  # not /run/dmvpn: other labs may run there
        cfg = self.work / f"{node}.yaml"
        cfg.write_text(yaml.safe_dump(json.loads(json.dumps(data, default=str))))
        log = (self.work / f"{node}.log").open("a")
        self.procs[node] = self.lab.popen(
            node, [DMVPN, "run", "-c", str(cfg)], stdout=log, stderr=log
        )

    def stop(self, node: str) -> None:
        proc = self.procs.pop(node)
        proc.terminate()
        proc.wait(timeout=10)

    def run(self, node: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = self.lab.exec(node, list(argv), capture_output=True, text=True, timeout=30)
        if check and res.returncode != 0:
            pytest.fail(f"{argv} in {node} failed ({res.returncode}): {res.stderr}")
        return res

    def dmvpn(self, node: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(node, *CLI, *argv, "--socket", self.sock(node), check=check)

    def json(self, node: str, *argv: str) -> Any:
        return json.loads(self.dmvpn(node, *argv, "--json").stdout)

    def metrics(self, node: str) -> str:
        return self.run(node, sys.executable, "-c", SCRAPE, self.sock(node)).stdout

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.1)
        logs = {p.name: p.read_text()[-1500:] for p in self.work.glob("*.log")}
        pytest.fail(f"timed out waiting for {what}; logs: {logs}")

    def ping(self, src: str, dst: str) -> bool:
        argv = ["ping", "-c", "3", "-i", "0.2", "-W", "1", dst]
        return self.lab.exec(src, argv, capture_output=True).returncode == 0


@pytest.fixture
def cloud() -> Iterator[Cloud]:
    topo = Topology.from_data(
        {"phase": 3, "holdtime": 60, "nodes": {"spokes": [{"name": "spoke1"}, {"name": "spoke2"}]}}
    )
    work = Path(tempfile.mkdtemp(prefix="dma-"))  # short: UNIX socket paths are limited
    lab = Lab(topo, prefix=f"dma{os.getpid() % 10000}-", state_path=work / "lab.json")
    try:
        lab.up()
        c = Cloud(lab, topo, work)
        for plan in topo.routers:
            c.start(plan.name)
        yield c
    finally:
        lab.down()
        shutil.rmtree(work, ignore_errors=True)


def _registered(c: Cloud, spoke: str) -> bool:
    res = c.dmvpn(spoke, "show", "nhrp", "nhs", "--json", check=False)
    return res.returncode == 0 and json.loads(res.stdout)["nhs"][0]["state"] == "up"


def test_show_clear_events_and_metrics_on_a_running_cloud(cloud: Cloud) -> None:
    c = cloud
    c.wait("both spokes to register", lambda: _registered(c, "spoke1") and _registered(c, "spoke2"))
    spoke2 = str(c.topo.plan("spoke2").tunnel.ip)  # type: ignore[union-attr]
    host2 = str(c.topo.plan("host2").lan.ip)  # type: ignore[union-attr]
    assert c.ping("host1", host2)
    c.wait(
        "spoke1's shortcut", lambda: bool(c.json("spoke1", "show", "nhrp", "shortcut")["entries"])
    )

    # show dmvpn: the hub (static, up) and spoke2 with its binding and shortcut.
    (itf,) = c.json("spoke1", "show", "dmvpn")["interfaces"]
    assert itf["interface"] == "dmvpn0" and itf["type"] == "spoke" and itf["peer_count"] == 2
    hub, peer = itf["peers"]
    assert hub["nbma"] == "172.30.0.1"
    assert [(e["tunnel_address"], e["state"], e["attrb"]) for e in hub["entries"]] == [
        ("10.0.0.1", "UP", "S")
    ]
    assert peer["nbma"] == "172.30.0.12"
    assert [(e["target"], e["attrb"]) for e in peer["entries"]] == [
        (f"{spoke2}/32", "DT1"),
        ("192.168.2.0/24", "DT2"),
    ]
    text = c.dmvpn("spoke1", "show", "dmvpn").stdout
    assert "Type:Spoke, NHRP Peers:2," in text
    assert any(
        line.split()[:3] == ["2", "172.30.0.12", spoke2] and line.endswith("DT1")
        for line in text.splitlines()
    )
    (hub_itf,) = c.json("hub1", "show", "dmvpn")["interfaces"]
    assert hub_itf["type"] == "hub"
    assert {p["nbma"]: p["entries"][0]["attrb"] for p in hub_itf["peers"]} == {
        "172.30.0.11": "D",
        "172.30.0.12": "D",
    }

    # show nhrp, like show ip nhrp.
    nhrp = c.dmvpn("spoke1", "show", "nhrp").stdout
    assert f"192.168.2.0/24 via {spoke2}\n   dmvpn0 created " in nhrp
    assert "   Type: cached, Flags: used rib nho\n   NBMA address: 172.30.0.12\n" in nhrp
    assert "10.0.0.1/32 via 10.0.0.1\n" in nhrp and "never expire" in nhrp
    hub_nhrp = c.dmvpn("hub1", "show", "nhrp").stdout
    assert f"{spoke2}/32 via {spoke2}\n" in hub_nhrp
    assert "Type: dynamic, Flags: registered" in hub_nhrp  # lab spokes: no-unique

    nhs = c.dmvpn("spoke1", "show", "nhrp", "nhs").stdout.splitlines()
    assert nhs[1] == "dmvpn0:" and nhs[2].startswith("10.0.0.1  RE  NBMA Address: 172.30.0.1")

    (traffic,) = c.json("hub1", "show", "nhrp", "traffic")["interfaces"]
    assert traffic["received"]["registration_request"] >= 2
    assert traffic["sent"]["traffic_indication"] >= 1
    assert traffic["counters"]["resolution.forwarded"] >= 1
    assert traffic["dataplane"]["tx.data"] > 0

    # events: follow shortcut events while clear nhrp drops the shortcut and
    # new traffic brings it back.
    events = c.lab.popen(
        "spoke1",
        [
            *CLI,
            "events",
            "--socket",
            c.sock("spoke1"),
            "--json",
            "--kind",
            "shortcut",
            "--count",
            "1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        c.wait(
            "the events client to subscribe",
            lambda: "dmvpn_api_event_subscribers 1.0" in c.metrics("spoke1"),
        )
        cleared = c.json("spoke1", "clear", "nhrp")
        assert sorted(e["protocol"] for e in cleared["cleared"]) == [
            f"{spoke2}/32",
            "192.168.2.0/24",
        ]
        assert c.run("spoke1", "ip", "route", "show", "proto", "177").stdout == ""
        assert c.json("spoke1", "show", "nhrp", "shortcut")["entries"] == []
        time.sleep(8.5)  # the hub redirects a flow at most once per 8 s
        assert c.ping("host1", host2)
        out, _ = events.communicate(timeout=15)
    finally:
        if events.poll() is None:
            events.kill()
            events.wait()
    (event,) = [json.loads(line) for line in out.splitlines()]
    assert event["kind"] == "shortcut" and event["node"] == "spoke1"
    assert event["details"]["prefix"] == "192.168.2.0/24"
    assert event["details"]["next_hop"] == spoke2
    routes = c.run("spoke1", "ip", "route", "show", "proto", "177").stdout
    assert routes.startswith(f"192.168.2.0/24 via {spoke2} dev dmvpn0")

    # /metrics: per-peer traffic, messages by type, cache entries, NHS state.
    # Per-peer totals come from the C pump every 0.1 s: let one batch arrive.
    time.sleep(0.3)
    m = c.metrics("spoke1")
    assert 'dmvpn_node_info{node="spoke1",version="0.1.0"} 1.0' in m
    assert (
        'dmvpn_nhrp_nhs_up{family="4",interface="dmvpn0",nbma="172.30.0.1",nhs="10.0.0.1"} 1.0'
    ) in m
    assert 'dmvpn_nhrp_cache_entries{family="4",interface="dmvpn0",type="cached"} 2.0' in m
    assert (
        'dmvpn_nhrp_messages_total{direction="received",family="4",interface="dmvpn0",'
        'type="traffic_indication"} 2.0'
    ) in m
    assert 'dmvpn_nhrp_shortcuts_installed_total{family="4",interface="dmvpn0"} 2.0' in m
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in m.splitlines()
        if line and not line.startswith("#")
    }
    direct = 'dmvpn_peer_packets_total{direction="tx",interface="dmvpn0",peer="172.30.0.12"}'
    assert samples[direct] >= 2  # the pings after each shortcut went straight to spoke2
    assert samples[direct.replace("packets", "bytes")] > 100 * samples[direct] / 2

    # A stopped daemon removes its socket; the CLI then says what is wrong.
    c.stop("spoke2")
    assert not Path(c.sock("spoke2")).exists()
    res = c.dmvpn("spoke2", "show", "dmvpn", check=False)
    assert res.returncode == 1
    assert f"no dmvpn daemon: {c.sock('spoke2')} does not exist" in res.stderr
