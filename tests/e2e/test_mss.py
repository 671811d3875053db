"""`tcp_adjust_mss` in a real cloud (Cisco `ip tcp adjust-mss`): hosts on
1500-byte LANs open TCP connections across a dual-stack phase 3 cloud whose
tunnel MTU is 1400. Only spoke1 clamps, so it alone must lower both host1's
SYN (into the cloud) and host2's SYN-ACK (out of it); the MSS both ends learn
is the clamped one, for IPv4 and IPv6, on both data planes, and spoke1
counts the SYNs it lowered each way."""

from __future__ import annotations

import json
import os
import subprocess
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

MSS = 1360

# On host2: accept one connection per family and print the MSS each accepted
# socket sends with (min of the peer's SYN MSS and its own, less options).
SERVER = """
import json, socket, sys
out = {}
socks = []
for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    s = socket.socket(family)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, 5001))
    s.listen()
    s.settimeout(30)
    socks.append((family, s))
print("listening", flush=True)
for family, s in socks:
    c, _ = s.accept()
    out[family.name] = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
    c.close()
print(json.dumps(out), flush=True)
"""

# On host1: connect to host2 over each family; print the MSS each side uses.
CLIENT = """
import json, socket, sys
out = {}
for family, addr in ((socket.AF_INET, sys.argv[1]), (socket.AF_INET6, sys.argv[2])):
    c = socket.create_connection((addr, 5001), timeout=20)
    out[family.name] = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
    c.close()
print(json.dumps(out))
"""


class OneClamp(Cloud):
    """The lab sets tcp_adjust_mss on every router; here only spoke1 keeps it."""

    def config(self, node: str) -> dict:  # type: ignore[type-arg]
        config = super().config(node)
        if node != "spoke1":
            for itf in config["interfaces"]:
                itf.pop("tcp_adjust_mss")
        return config


@pytest.fixture(params=["userspace", "ebpf"])
def cloud(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cloud]:
    topo = Topology.from_data(
        {
            "phase": 3,
            "ipv6": True,
            "dataplane": request.param,
            "tcp_adjust_mss": MSS,
            "nodes": {
                "hubs": [{"name": "hub1"}],
                "spokes": [{"name": "spoke1"}, {"name": "spoke2"}],
            },
        }
    )
    lab = Lab(topo, prefix=f"dmss{os.getpid() % 100000}-", state_path=tmp_path / "lab.json")
    lab.up()
    try:
        c = OneClamp(lab, topo, tmp_path)
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


def test_syns_crossing_the_tunnel_carry_the_clamped_mss(cloud: Cloud) -> None:
    host2 = cloud.topo.plan("host2")
    assert host2.lan is not None and host2.lan6 is not None
    server = cloud.lab.popen(
        "host2", [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "listening"
        client = cloud.lab.exec(
            "host1",
            [sys.executable, "-c", CLIENT, str(host2.lan.ip), str(host2.lan6.ip)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert client.returncode == 0, client.stderr
        sent_by_host1 = json.loads(client.stdout)
        sent_by_host2 = json.loads(server.stdout.readline())
    finally:
        server.kill()
        server.wait()
    # Unclamped, hosts on 1500-byte LANs would use 1448 (IPv4) and 1428
    # (IPv6), timestamps taken off. Clamped: at most MSS, and MSS - 20 for
    # IPv6, in both directions (host1's SYN and host2's SYN-ACK).
    for seen in (sent_by_host1, sent_by_host2):
        assert MSS - 40 < seen["AF_INET"] <= MSS, seen
        assert MSS - 60 < seen["AF_INET6"] <= MSS - 20, seen
    # spoke1 lowered host1's SYNs on their way into the cloud and host2's
    # SYN-ACKs on their way out of it (one of each per family); nobody else
    # clamps.
    counters = cloud.dataplane("spoke1")
    assert counters.get("tcp.mss_clamped.out", 0) >= 2, counters
    assert counters.get("tcp.mss_clamped.in", 0) >= 2, counters
