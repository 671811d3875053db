"""Two DMVPN clouds on one router, each in a VRF of its own (a network
namespace: its tunnel interface, routes and LAN), sharing one front-door
VRF (the underlay namespace, one NBMA address), told apart by GRE key.
Both VRFs use the same LAN prefix and the same tunnel addresses; nothing
leaks from one into the other.

    hubA (key 1) --+                   +-- vrfa: dmvpn0 10.0.0.11, lan0 --- hosta
                   br0 -- rtr-ul ------+
    hubB (key 2) --+  (nbma0 .11)      +-- vrfb: dmvpn0 10.0.0.11, lan0 --- hostb
    (both LANs 192.168.1.0/24, both hosts 192.168.1.10)

One dmvpn daemon per VRF, each with `tunnel.namespace: router-ul`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root for network namespaces (CI runs as root)"
)

DMVPN = str(Path(sys.executable).with_name("dmvpn"))


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


def ns_exec(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True)


class Vrfs:
    def __init__(self, prefix: str, logs: Path) -> None:
        self.p = prefix
        self.logs = logs
        self.made: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def ns(self, name: str) -> str:
        return f"{self.p}{name}"

    def add_ns(self, name: str) -> str:
        ns = self.ns(name)
        ip("netns", "add", ns)
        self.made.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def veth(self, a: str, a_if: str, b: str, b_if: str) -> None:
        ip("-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b)
        ip("-n", a, "link", "set", a_if, "up")
        ip("-n", b, "link", "set", b_if, "up")

    def build(self) -> None:
        inet = self.add_ns("inet")
        ip("-n", inet, "link", "add", "br0", "type", "bridge")
        ip("-n", inet, "link", "set", "br0", "up")
        for name, nbma in (
            ("huba", "172.31.0.1"),
            ("hubb", "172.31.0.2"),
            ("rtr-ul", "172.31.0.11"),
        ):
            ns = self.add_ns(name)
            self.veth(inet, f"v-{name}", ns, "nbma0")
            ip("-n", inet, "link", "set", f"v-{name}", "master", "br0")
            ip("-n", ns, "addr", "add", f"{nbma}/24", "dev", "nbma0")
        for vrf in ("a", "b"):
            router, host = self.add_ns(f"vrf{vrf}"), self.add_ns(f"host{vrf}")
            self.veth(router, "lan0", host, "eth0")
            ip("-n", router, "addr", "add", "192.168.1.1/24", "dev", "lan0")
            ip("-n", host, "addr", "add", "192.168.1.10/24", "dev", "eth0")
            ip("-n", host, "route", "add", "default", "via", "192.168.1.1")
            ns_exec(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")

    def config(self, node: str, key: int, hub: bool) -> dict[str, Any]:
        nhrp: dict[str, Any] = {"network_id": 1, "holdtime": 60}
        tunnel: dict[str, Any] = {"key": key}
        routes = []
        if hub:
            tunnel["source"] = "172.31.0.1" if key == 1 else "172.31.0.2"
            nhrp["map_multicast"] = ["dynamic"]
            routes = [{"prefix": "192.168.1.0/24", "via": "10.0.0.11"}]
        else:
            tunnel |= {"source": "172.31.0.11", "namespace": self.ns("rtr-ul")}
            nhrp["nhs"] = [{"address": "10.0.0.1", "nbma": tunnel_hub(key)}]
            nhrp["registration_no_unique"] = True
        return {
            "node": node,
            "socket": str(self.logs / f"{node}.sock"),
            "interfaces": [
                {
                    "name": "dmvpn0",
                    "address": "10.0.0.1/24" if hub else "10.0.0.11/24",
                    "tunnel": tunnel,
                    "nhrp": nhrp,
                }
            ],
            "routes": routes,
        }

    def start(self, ns_name: str, node: str, key: int, hub: bool) -> None:
        cfg = self.logs / f"{node}.yaml"
        cfg.write_text(yaml.safe_dump(self.config(node, key, hub)))
        log = (self.logs / f"{node}.log").open("a")
        self.procs.append(
            subprocess.Popen(
                ["ip", "netns", "exec", self.ns(ns_name), DMVPN, "run", "-c", str(cfg)],
                stdout=log,
                stderr=log,
            )
        )

    def registered(self, node: str) -> bool:
        path = self.logs / f"{node}.log"
        return path.exists() and '"kind": "nhs-up"' in path.read_text()

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def tunnel_hub(key: int) -> str:
    return "172.31.0.1" if key == 1 else "172.31.0.2"


@pytest.fixture
def vrfs(tmp_path: Path) -> Iterator[Vrfs]:
    v = Vrfs(f"dmv{os.getpid() % 100000}-", tmp_path)
    try:
        v.build()
        v.start("huba", "huba", 1, hub=True)
        v.start("hubb", "hubb", 2, hub=True)
        v.start("vrfa", "rtra", 1, hub=False)
        v.start("vrfb", "rtrb", 2, hub=False)
        deadline = time.monotonic() + 20
        while not (v.registered("rtra") and v.registered("rtrb")):
            if time.monotonic() > deadline:
                logs = {p.name: p.read_text()[-1000:] for p in tmp_path.glob("*.log")}
                pytest.fail(f"the two VRFs did not register: {logs}")
            time.sleep(0.1)
        yield v
    finally:
        v.close()


def echoes(ns: str) -> int:
    """ICMP echo requests this namespace has received (its own /proc/net/snmp)."""
    lines = ns_exec(ns, "cat", "/proc/net/snmp").stdout.splitlines()
    head, values = [line.split() for line in lines if line.startswith("Icmp:")][:2]
    return int(values[head.index("InEchos")])


def test_overlapping_vrfs_do_not_leak(vrfs: Vrfs) -> None:
    host_a, host_b = vrfs.ns("hosta"), vrfs.ns("hostb")
    for hub, reached, untouched in (("huba", host_a, host_b), ("hubb", host_b, host_a)):
        before = echoes(reached), echoes(untouched)
        res = ns_exec(vrfs.ns(hub), "ping", "-c", "3", "-i", "0.2", "-W", "2", "192.168.1.10")
        assert res.returncode == 0, res.stdout + res.stderr
        after = echoes(reached), echoes(untouched)
        # The same address, in the hub's own VRF only.
        assert after[0] - before[0] >= 3 and after[1] == before[1], (hub, before, after)
    # Each hub knows only its own VRF's registration; the two VRFs share one
    # NBMA address and differ by GRE key.
    for hub in ("huba", "hubb"):
        out = ns_exec(
            vrfs.ns(hub),
            DMVPN,
            "show",
            "dmvpn",
            "--json",
            "--socket",
            str(vrfs.logs / f"{hub}.sock"),
        ).stdout
        (itf,) = json.loads(out)["interfaces"]
        assert [p["nbma"] for p in itf["peers"]] == ["172.31.0.11"]
    # The VRFs have no route to the underlay nor to each other.
    for vrf in ("vrfa", "vrfb"):
        assert ns_exec(vrfs.ns(vrf), "ip", "route", "get", "172.31.0.1").returncode != 0
