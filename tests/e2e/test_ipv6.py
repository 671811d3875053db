"""A dual-stack cloud (topology `ipv6: true`) in network namespaces: IPv6
over the IPv4 underlay, one NHRP instance per family on every router, real
GRE, real kernel Neighbor Discovery against the daemon, real tshark, and
both engines seen through the management API (`dmvpn show`, /metrics)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from dmvpn.lab.netns import Lab
from dmvpn.lab.topology import Topology

from .test_cloud import DMVPN, Cloud

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root for network namespaces (CI runs as root)"
)


class ApiCloud(Cloud):
    """Each daemon's API socket in the test's directory (not /run/dmvpn,
    where another lab may run); `dmvpn show` runs in the node's namespace."""

    def sock(self, node: str) -> str:
        return str(self.logs / f"{node}.sock")

    def start(self, node: str) -> None:
        data = self.topo.node_config(node)
        data["socket"] = self.sock(node)
        cfg = self.logs / f"{node}.yaml"
        cfg.write_text(yaml.safe_dump(json.loads(json.dumps(data, default=str))))
        log = (self.logs / f"{node}.log").open("a")
        self.procs[node] = self.lab.popen(
            node, [DMVPN, "run", "-c", str(cfg)], stdout=log, stderr=log
        )

    def show(self, node: str, *argv: str) -> str:
        res = self.lab.exec(
            node,
            [DMVPN, "show", *argv, "--socket", self.sock(node)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 0, (argv, res.stderr)
        return res.stdout

    def show_json(self, node: str, *argv: str) -> Any:
        return json.loads(self.show(node, *argv, "--json"))

    def metrics(self, node: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        scrape = (
            "import sys; from pathlib import Path; from dmvpn.cli.show import ApiClient; "
            "sys.stdout.write(ApiClient(Path(sys.argv[1])).text('/metrics'))"
        )
        res = self.lab.exec(
            node,
            [sys.executable, "-c", scrape, self.sock(node)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 0, res.stderr
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(res.stdout)
            for s in family.samples
        }


def _hops6(cloud: Cloud, node: str, dst: str, wait: int = 1) -> list[str]:
    out = cloud.sh(node, "traceroute", "-6", "-n", "-q", "1", "-w", str(wait), "-m", "5", dst)
    return [line.split()[1] for line in out.splitlines()[1:] if len(line.split()) > 1]


@pytest.mark.parametrize("plane", ["userspace", "ebpf"])
def test_phase3_dual_stack_cloud(tmp_path: Path, plane: str) -> None:
    assert shutil.which("tshark"), "tshark is installed by ./run.sh test"
    topo = Topology.from_data({"phase": 3, "holdtime": 12, "ipv6": True, "dataplane": plane})
    lab = Lab(topo, prefix=f"dm6{os.getpid() % 100000}-", state_path=tmp_path / "lab.json")
    tshark: subprocess.Popen | None = None  # type: ignore[type-arg]
    cloud = ApiCloud(lab, topo, tmp_path)
    try:
        lab.up()
        pcap = tmp_path / "underlay.pcap"
        errors = (tmp_path / "tshark.err").open("w")
        tshark = lab.popen(
            "inet",
            ["tshark", "-q", "-i", "br0", "-w", str(pcap), "-f", "ip proto 47"],
            stdout=errors,
            stderr=errors,
        )
        time.sleep(1.5)  # tshark needs a moment before it captures
        for plan in topo.routers:
            cloud.start(plan.name)
        spokes = [p.name for p in topo.spokes]

        # Every spoke registers both families with the hub, each on its own.
        def both_up(spoke: str) -> bool:
            return {e["nhs"] for e in cloud.events(spoke, "nhs-up")} == {"10.0.0.1", "fd00::1"}

        cloud.wait("every spoke to register both families", lambda: all(map(both_up, spokes)))
        registered = {e["protocol"] for e in cloud.events("hub1", "registered")}
        assert {"fd00::11", "fd00::12", "fd00::13", "10.0.0.11"} <= registered, registered
        # The hub mirrors the IPv6 bindings into its neighbour table.
        neigh = cloud.sh("hub1", "ip", "-6", "neigh", "show", "dev", "dmvpn0")
        assert "fd00::12 lladdr 02:00:ac:1e:00:0c PERMANENT" in neigh, neigh

        host2 = str(topo.plan("host2").lan6.ip)  # type: ignore[union-attr]
        assert host2 == "fd00:2::10"
        # First via the hub (the spoke's route is the fd00::/16 summary) ...
        first = _hops6(cloud, "host1", host2, wait=3)
        assert first == ["fd00:1::1", "fd00::1", "fd00::12", host2], first
        # ... the hub's Traffic Indication brings an IPv6 shortcut, then direct.
        cloud.wait(
            "spoke1's IPv6 shortcut route",
            lambda: (
                "fd00:2::/64 via fd00::12"
                in cloud.sh("spoke1", "ip", "-6", "route", "show", "proto", "177")
            ),
        )
        later = _hops6(cloud, "host1", host2, wait=3)
        assert later == ["fd00:1::1", "fd00::12", host2], later
        assert cloud.events("hub1", "redirect")
        ping = cloud.lab.exec("host1", ["ping", "-6", "-c", "3", "-i", "0.2", "-W", "1", host2])
        assert ping.returncode == 0
        _show_both_families(cloud, tmp_path / "show.txt")
        # IPv4 on the same cloud still works.
        host3 = str(topo.plan("host3").lan.ip)  # type: ignore[union-attr]
        assert cloud.lab.exec("host1", ["ping", "-c", "2", "-W", "1", host3]).returncode == 0
        # Link multicast (ff02::1, as OSPFv3's ff02::5) from the hub reaches
        # every spoke; they answer from their EUI-64 link-local addresses,
        # whose link-layer address the daemon derives from the NBMA address.
        out = cloud.sh(
            "hub1", "ping", "-6", "-c", "2", "-i", "0.5", "-W", "1", "-I", "dmvpn0", "ff02::1"
        )
        answered = {
            line.split()[3].rstrip(":").split("%")[0]
            for line in out.splitlines()
            if " bytes from " in line
        }
        assert {"fe80::acff:fe1e:b", "fe80::acff:fe1e:c", "fe80::acff:fe1e:d"} <= answered, out
        # DAD passed (nothing answered the kernel's probes; none reached the cloud).
        for node in ("hub1", *spokes):
            addrs = cloud.sh(node, "ip", "-6", "addr", "show", "dev", "dmvpn0")
            assert "dadfailed" not in addrs and "tentative" not in addrs, (node, addrs)
            assert "fe80::" in addrs, addrs
        time.sleep(4.5)  # a registration refresh (holding time 12 s / 3)
        # SIGTERM: the spoke purges both registrations; the hub drops the
        # IPv6 binding from its neighbour table.
        cloud.stop("spoke3")
        cloud.wait(
            "hub1 to drop spoke3's registrations",
            lambda: (
                {"10.0.0.13", "fd00::13"}
                <= {e["protocol"] for e in cloud.events("hub1", "registration-purged")}
            ),
        )
        cloud.wait(
            "hub1's neighbour entry for fd00::13 to go",
            lambda: (
                "fd00::13 " not in cloud.sh("hub1", "ip", "-6", "neigh", "show", "dev", "dmvpn0")
            ),
        )
    finally:
        if tshark is not None:
            tshark.terminate()
            tshark.wait(timeout=10)
        for node in list(cloud.procs):
            cloud.stop(node)
        lab.down()

    fields = subprocess.run(
        [
            "tshark",
            "-r",
            str(pcap),
            "-T",
            "fields",
            "-e",
            "gre.proto",
            "-e",
            "nhrp.hdr.op.type",
            "-e",
            "nhrp.hdr.pro.type",
            "-e",
            "icmpv6.type",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split("\t") for line in fields.splitlines() if line.strip()]
    v6_nhrp = {r[1] for r in rows if r[0] == "0x2001" and r[2] == "0x86dd"}
    # Registrations, replies, resolution request and reply, Traffic Indication.
    assert {"3", "4", "1", "2", "8"} <= v6_nhrp, v6_nhrp
    assert any(r[0] == "0x2001" and r[2] == "0x0800" for r in rows)  # IPv4's own engine
    assert any(r[0] == "0x86dd" for r in rows)  # IPv6 data in GRE
    # No Neighbor Discovery, router solicitation or MLD on the cloud.
    icmp6 = {r[3] for r in rows if len(r) > 3 and r[3]}
    assert not icmp6 & {"133", "134", "135", "136", "143", "130", "131", "132"}, icmp6
    expert = subprocess.run(
        ["tshark", "-r", str(pcap), "-q", "-z", "expert,warn"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Malformed" not in expert and "NHRP" not in expert, expert


def test_dual_stack_over_ipsec(tmp_path: Path) -> None:
    """The IPv6 engine waits for the same GRE SAs as the IPv4 one: IPv6
    reaches host2 via the hub, then over the spoke-to-spoke SA directly."""
    topo = Topology.from_data(
        {"phase": 3, "holdtime": 30, "ipv6": True, "ipsec_psk": "dual-stack-test-psk-0123"}
    )
    lab = Lab(topo, prefix=f"dm6s{os.getpid() % 100000}-", state_path=tmp_path / "lab.json")
    cloud = Cloud(lab, topo, tmp_path)
    try:
        lab.up()
        for plan in topo.routers:
            cloud.start(plan.name)
        spokes = [p.name for p in topo.spokes]

        def both_up(spoke: str) -> bool:
            return {e["nhs"] for e in cloud.events(spoke, "nhs-up")} == {"10.0.0.1", "fd00::1"}

        cloud.wait(
            "every spoke to register both families over IPsec",
            lambda: all(map(both_up, spokes)),
            timeout=30,
        )
        # Four charons and their first IKE exchanges share two cores: replies
        # may take longer than a second while the spoke-to-spoke SA comes up.
        first = _hops6(cloud, "host1", "fd00:2::10", wait=3)
        assert first[1] == "fd00::1" and first[-1] == "fd00:2::10", first
        cloud.wait(
            "spoke1's IPv6 shortcut route over the new SA",
            lambda: (
                "fd00:2::/64 via "
                "fd00::12" in cloud.sh("spoke1", "ip", "-6", "route", "show", "proto", "177")
            ),
            timeout=20,
        )
        cloud.wait(
            "the direct IPv6 path",
            lambda: (
                _hops6(cloud, "host1", "fd00:2::10", wait=3)
                == ["fd00:1::1", "fd00::12", "fd00:2::10"]
            ),
        )
        assert cloud.events("spoke1", "ipsec-up")
    finally:
        for node in list(cloud.procs):
            cloud.stop(node)
        lab.down()


def _show_both_families(cloud: ApiCloud, record: Path) -> None:
    """`dmvpn show` and /metrics see the IPv6 engine beside the IPv4 one."""
    v4, v6 = cloud.show_json("spoke1", "dmvpn")["interfaces"]
    assert (v4["family"], v4["tunnel_address"]) == (4, "10.0.0.11")
    assert (v6["family"], v6["tunnel_address"], v6["type"]) == (6, "fd00::11", "spoke")
    peers = {p["nbma"]: [(e["target"], e["attrb"]) for e in p["entries"]] for p in v6["peers"]}
    assert peers["172.30.0.1"] == [("fd00::1/128", "S")], peers
    assert peers["172.30.0.12"] == [("fd00::12/128", "DT1"), ("fd00:2::/64", "DT2")], peers
    (hub6,) = cloud.show_json("hub1", "dmvpn", "--family", "6")["interfaces"]
    tunnels = {e["tunnel_address"] for p in hub6["peers"] for e in p["entries"]}
    assert {"fd00::11", "fd00::12", "fd00::13"} <= tunnels, tunnels
    entries = cloud.show_json("spoke1", "nhrp")["entries"]
    six = {(e["protocol"], e["type"], e["shortcut"]) for e in entries if e["family"] == 6}
    assert {("fd00::1/128", "nhs", False), ("fd00:2::/64", "cached", True)} <= six, six
    assert {e["family"] for e in entries if ":" not in e["protocol"]} == {4}
    nhs = cloud.show_json("spoke1", "nhrp", "nhs")["nhs"]
    assert [(n["family"], n["protocol"], n["state"]) for n in nhs] == [
        (4, "10.0.0.1", "up"),
        (6, "fd00::1", "up"),
    ]
    traffic = cloud.show_json("spoke1", "nhrp", "traffic")["interfaces"]
    assert [t["family"] for t in traffic] == [4, 6]
    assert traffic[1]["received"]["traffic_indication"] >= 1
    m = cloud.metrics("spoke1")
    f6 = (("family", "6"), ("interface", "dmvpn0"))
    assert m["dmvpn_nhrp_nhs_up", (*f6, ("nbma", "172.30.0.1"), ("nhs", "fd00::1"))] == 1
    ti = (("direction", "received"), *f6, ("type", "traffic_indication"))
    assert m["dmvpn_nhrp_messages_total", ti] >= 1
    assert m["dmvpn_nhrp_shortcuts_installed_total", f6] >= 1
    assert m["dmvpn_peers", f6] == 2
    # The text an operator reads (kept for the docs' examples).
    record.write_text(
        "".join(
            f"{node}# dmvpn show {' '.join(argv)}\n{cloud.show(node, *argv)}\n"
            for node, argv in (
                ("spoke1", ["dmvpn"]),
                ("spoke1", ["nhrp"]),
                ("spoke1", ["nhrp", "shortcut", "--family", "6"]),
                ("spoke1", ["nhrp", "nhs"]),
                ("spoke1", ["nhrp", "traffic", "--family", "6"]),
                ("hub1", ["dmvpn", "--family", "6"]),
            )
        )
    )
