"""`tunnel.path_mtu_discovery` in a real cloud (Cisco `tunnel
path-mtu-discovery`): spoke1's access link is 1380 bytes, smaller than a
full tunnel packet (1400 + 28). A 1400-byte DF ping from host1 gets
Fragmentation Needed from spoke1 with the MTU that fits (1352), and a ping of
that size goes through. ICMP Fragmentation Needed sent to spoke1 by a router
on the underlay (here: forged from hub1's namespace, real packets through
the kernel) lowers the path MTU to spoke2 only when it quotes GRE
spoke1 could have sent there; forged ones are counted and change nothing."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmvpn.lab.netns import Lab
from dmvpn.lab.topology import Topology
from tests.e2e.test_cloud import Cloud

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root for network namespaces (CI runs as root)"
)

# Run in hub1's namespace (an underlay address): ICMP Fragmentation Needed to spoke1 quoting
# a GRE packet from spoke1 to argv[2] with key argv[3], reporting MTU argv[4].
FORGE = """
import socket, struct, sys
from dmvpn.wire import IPv4Header, GrePacket, internet_checksum
from ipaddress import IPv4Address
spoke1, peer, key, mtu = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
gre = GrePacket(0x0800, bytes(1400), key=key).encode()
quoted = IPv4Header(src=IPv4Address(spoke1), dst=IPv4Address(peer), protocol=47).encode(gre)
body = quoted[:28 + 8]
head = struct.pack("!BBHHH", 3, 4, 0, 0, mtu)
csum = internet_checksum(head + body)
msg = head[:2] + struct.pack("!H", csum) + head[4:] + body
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.sendto(msg, (spoke1, 0))
"""


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    topo = Topology.from_data(
        {
            "phase": 2,
            "path_mtu_discovery": True,
            "nodes": {
                "hubs": [{"name": "hub1"}],
                "spokes": [{"name": "spoke1"}, {"name": "spoke2"}],
            },
        }
    )
    lab = Lab(topo, prefix=f"dpmt{os.getpid() % 100000}-", state_path=tmp_path / "lab.json")
    lab.up()
    try:
        c = Cloud(lab, topo, tmp_path)
        for plan in topo.routers:
            c.start(plan.name)
        c.wait(
            "both spokes to register",
            lambda: all(c.events(s, "nhs-up") for s in ("spoke1", "spoke2")),
            timeout=30,
        )
        yield c
    finally:
        lab.down()


def ping(cloud: Cloud, size: int) -> str:
    host2 = str(cloud.topo.plan("host2").lan.ip)  # type: ignore[union-attr]
    argv = ["ping", "-n", "-c", "2", "-i", "0.3", "-W", "2", "-M", "do", "-s", str(size), host2]
    run = cloud.lab.exec("host1", argv, capture_output=True, text=True)
    return run.stdout + run.stderr


def frag_needed_mtu(out: str) -> int | None:
    found = re.search(r"Frag needed and DF set \(mtu = (\d+)\)|mtu=(\d+)", out)
    return None if found is None else int(found.group(1) or found.group(2))


def test_df_packets_learn_the_path_mtu_and_senders_are_told(cloud: Cloud) -> None:
    spoke1 = str(cloud.topo.plan("spoke1").nbma.ip)  # type: ignore[union-attr]
    spoke2 = str(cloud.topo.plan("spoke2").nbma.ip)  # type: ignore[union-attr]
    # The direct path first (phase 2: resolution), with small packets.
    cloud.wait("a direct path", lambda: " 0% packet loss" in ping(cloud, 56), timeout=20)
    cloud.sh("spoke1", "ip", "link", "set", "nbma0", "mtu", "1380")
    # 1400 + 28 does not fit spoke1's own link: EMSGSIZE, learned, answered.
    out = ping(cloud, 1372)
    assert frag_needed_mtu(out) == 1352, out
    assert " 0% packet loss" in ping(cloud, 1324)  # 1352: fits
    stats = cloud.dataplane("spoke1")
    assert stats["pmtu.learned.local"] >= 1 and stats["pmtu.frag_needed_sent"] >= 1, stats

    # Reports from the underlay: forged ones first (another cloud's key, an
    # absurd MTU, a peer spoke1 never sent to), then a real-looking one.
    def forge(peer: str, key: int, mtu: int) -> None:
        run = cloud.lab.exec(
            "hub1",
            [sys.executable, "-c", FORGE, spoke1, peer, str(key), str(mtu)],
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stderr

    forge(spoke2, 7, 1200)
    forge(spoke2, 42, 300)
    forge("172.30.0.99", 42, 1200)
    cloud.wait(
        "the forged reports to be counted",
        lambda: (
            cloud.dataplane("spoke1").get("pmtu.rejected.bad_quote", 0) >= 1
            and cloud.dataplane("spoke1").get("pmtu.rejected.mtu", 0) >= 1
            and cloud.dataplane("spoke1").get("pmtu.rejected.unknown_peer", 0) >= 1
        ),
    )
    assert " 0% packet loss" in ping(cloud, 1324)  # nothing changed
    forge(spoke2, 42, 1300)
    cloud.wait(
        "the report to be learned",
        lambda: cloud.dataplane("spoke1").get("pmtu.learned.icmp", 0) >= 1,
    )
    out = ping(cloud, 1324)
    assert frag_needed_mtu(out) == 1272, out
