"""A phase 3 cloud over an IPv6 underlay (topology `underlay: ipv6`) in
network namespaces: every router's nbma0 has only an IPv6 address, the
daemons (userspace data plane) send GRE over IPv6 from raw AF_INET6
sockets and NHRP with the IPv6 NBMA address family (ar$afn 2). The spokes
register, a spoke-to-spoke shortcut forms, and a capture on the underlay
bridge holds nothing but GRE over IPv6, which tshark dissects without
warnings and `dmvpn decode` decodes and re-encodes byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from dmvpn.lab.netns import Lab
from dmvpn.lab.topology import Topology

from ..capture import flush
from .test_cloud import DMVPN, Cloud

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root for network namespaces (CI runs as root)"
)


def _hops(cloud: Cloud, node: str, dst: str, *, v6: bool = False) -> list[str]:
    argv = ["traceroute", *(["-6"] if v6 else []), "-n", "-q", "1", "-w", "3", "-m", "5", dst]
    out = cloud.sh(node, *argv)
    return [line.split()[1] for line in out.splitlines()[1:] if len(line.split()) > 1]


@pytest.mark.parametrize("overlay6", [False, True], ids=["ipv4-overlay", "dual-stack-overlay"])
def test_phase3_cloud_over_ipv6_underlay(tmp_path: Path, overlay6: bool) -> None:
    assert shutil.which("tshark"), "tshark is installed by ./run.sh test"
    topo = Topology.from_data({"phase": 3, "holdtime": 12, "underlay": "ipv6", "ipv6": overlay6})
    lab = Lab(topo, prefix=f"du6{os.getpid() % 100000}-", state_path=tmp_path / "lab.json")
    cloud = Cloud(lab, topo, tmp_path)
    tshark: subprocess.Popen | None = None  # type: ignore[type-arg]
    pcap = tmp_path / "underlay.pcap"
    try:
        lab.up()
        # The underlay is IPv6 only: fd30::N on every router, no IPv4 at all.
        spoke1 = cloud.sh("spoke1", "ip", "-o", "addr", "show", "dev", "nbma0")
        assert "inet6 fd30::11/64" in spoke1 and " inet " not in spoke1, spoke1
        rows = {r["name"]: r for r in lab.status()}
        assert rows["hub1"]["underlay"] == "fd30::1/64"
        assert rows["spoke2"]["underlay"] == "fd30::12/64"
        errors = (tmp_path / "tshark.err").open("w")
        tshark = lab.popen(
            "inet",
            ["tshark", "-q", "-i", "br0", "-w", str(pcap), "-f", "ip6 proto 47 or ip proto 47"],
            stdout=errors,
            stderr=errors,
        )
        time.sleep(1.5)  # tshark needs a moment before it captures
        for plan in topo.routers:
            cloud.start(plan.name)
        spokes = [p.name for p in topo.spokes]
        want = {"10.0.0.1", "fd00::1"} if overlay6 else {"10.0.0.1"}
        cloud.wait(
            "every spoke to register over the IPv6 underlay",
            lambda: all({e["nhs"] for e in cloud.events(s, "nhs-up")} == want for s in spokes),
        )
        registered = {(e["protocol"], e["nbma"]) for e in cloud.events("hub1", "registered")}
        assert {("10.0.0.11", "fd30::11"), ("10.0.0.12", "fd30::12")} <= registered, registered
        # The hub's neighbour entry for spoke2: the 06:00 MAC of fd30::12.
        neigh = cloud.sh("hub1", "ip", "neigh", "show", "dev", "dmvpn0", "10.0.0.12")
        assert "lladdr 06:00:" in neigh and "PERMANENT" in neigh, neigh

        host2 = str(topo.plan("host2").lan.ip)  # type: ignore[union-attr]
        first = _hops(cloud, "host1", host2)
        assert first == ["192.168.1.1", "10.0.0.1", "10.0.0.12", host2], first
        cloud.wait(
            "spoke1's shortcut to spoke2's LAN",
            lambda: (
                "192.168.2.0/24 via 10.0.0.12"
                in cloud.sh("spoke1", "ip", "route", "show", "proto", "177")
            ),
        )
        later = _hops(cloud, "host1", host2)
        assert later == ["192.168.1.1", "10.0.0.12", host2], later
        ping = lab.exec("host1", ["ping", "-c", "3", "-i", "0.2", "-W", "1", host2])
        assert ping.returncode == 0, ping.stdout
        # The binding names spoke2 by its IPv6 NBMA address.
        entries = json.loads(
            cloud.sh(
                "spoke1", DMVPN, "show", "nhrp", "--json", "--socket", str(tmp_path / "spoke1.sock")
            )
        )["entries"]
        nbma = {e["protocol"]: e.get("nbma") for e in entries}
        assert nbma.get("10.0.0.12/32") == "fd30::12", entries
        if overlay6:
            host2v6 = str(topo.plan("host2").lan6.ip)  # type: ignore[union-attr]
            cloud.wait(
                "spoke1's IPv6 shortcut",
                lambda: (
                    _hops(cloud, "host1", host2v6, v6=True) == ["fd00:1::1", "fd00::12", host2v6]
                    or "fd00:2::/64 via fd00::12"
                    in cloud.sh("spoke1", "ip", "-6", "route", "show", "proto", "177")
                ),
                timeout=20,
            )
            assert _hops(cloud, "host1", host2v6, v6=True) == ["fd00:1::1", "fd00::12", host2v6]
        if not overlay6:
            # spoke1's IPv6 underlay address changes (a new prefix or lease):
            # the daemon follows it, registers anew, and the shortcut comes
            # back to the new address.
            cloud.sh("spoke1", "ip", "addr", "del", "fd30::11/64", "dev", "nbma0")
            cloud.sh("spoke1", "ip", "addr", "add", "fd30::111/64", "dev", "nbma0", "nodad")
            cloud.wait(
                "hub1 to bind spoke1 at fd30::111",
                lambda: any(
                    e.get("nbma") == "fd30::111" for e in cloud.events("hub1", "registered")
                ),
            )
            (moved,) = cloud.events("spoke1", "underlay-moved")
            assert (moved["old"], moved["new"]) == ("fd30::11", "fd30::111")
            cloud.wait("spoke2 to purge the old address", lambda: cloud.events("spoke2", "purged"))
            lab.exec("host2", ["ping", "-c", "3", "-i", "0.3", "-W", "1", "192.168.1.10"])
            cloud.wait(
                "spoke2's shortcut to spoke1's new address",
                lambda: any(
                    e.get("nbma") == "fd30::111" for e in cloud.events("spoke2", "shortcut")
                ),
                timeout=30,
            )
            back = lab.exec("host2", ["ping", "-c", "3", "-i", "0.2", "-W", "1", "192.168.1.10"])
            assert back.returncode == 0, back.stdout
        time.sleep(4.5)  # a registration refresh (holding time 12 s / 3)
        for node in ("hub1", *spokes):
            sock = str(tmp_path / f"{node}.sock")
            out = cloud.sh(node, DMVPN, "show", "nhrp", "traffic", "--json", "--socket", sock)
            for itf in json.loads(out)["interfaces"]:
                # Nothing dropped: no malformed packet, none of the other NBMA family.
                assert itf["errors"] == {}, (node, itf["errors"])
                assert itf["dataplane"].get("rx.bad_gre", 0) == 0, (node, itf["dataplane"])
                assert itf["dataplane"].get("tap.unknown_mac", 0) == 0, (node, itf["dataplane"])
        flush(lab, pcap, ipv6=True)
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
            "-Y",
            "gre",
            "-T",
            "fields",
            "-e",
            "frame.protocols",
            "-e",
            "ipv6.version",
            "-e",
            "gre.key",
            "-e",
            "gre.proto",
            "-e",
            "nhrp.hdr.afn",
            "-e",
            "nhrp.hdr.op.type",
            "-e",
            "ipv6.src",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split("\t") for line in fields.splitlines() if line.strip()]
    ours = [r for r in rows if r[6] != "2001:db8::1"]  # not the capture marker
    assert ours
    # GRE over IPv6 only (the capture filter also let GRE over IPv4 in, and
    # there is none), key 42.
    assert all(r[0].startswith("eth:ethertype:ipv6:gre") for r in ours), ours[:5]
    assert all(r[2] == "0x0000002a" for r in ours), ours[:5]
    nhrp = [r for r in ours if r[3] == "0x2001"]
    assert {r[4] for r in nhrp} == {"0x0002"}, {r[4] for r in nhrp}  # ar$afn: IPv6
    types = {r[5] for r in nhrp}
    assert {"3", "4", "8", "1", "2"} <= types, types
    assert any(r[3] == "0x0800" for r in ours)  # the data too
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
    assert len(recs) == len(nhrp), (len(recs), len(nhrp))
    assert all(r["roundtrip"] for r in recs), [r for r in recs if not r["roundtrip"]][:3]
    print(json.dumps(recs[0])[:600])
