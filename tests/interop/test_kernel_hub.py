"""Issue 15: a hub on the kernel's own mGRE (`dataplane: kernel`, in a QEMU
guest) with userspace spokes (namespaces), phase 3:

    hub1    dmvpn, kernel (guest)         spoke1, spoke2  dmvpn, userspace

The hub sees its hairpins without iptables (a filtered packet socket on the
GRE device, dataplane/kernel.py) and replicates link multicast itself.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from .kernelcloud import Cloud, kernel_cloud

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, guest taps)")

TOPOLOGY = {
    "phase": 3,
    "holdtime": 60,
    "nodes": {
        "hubs": [{"name": "hub1", "kind": "frr"}],  # the lab's guest wiring; dmvpn runs in it
        "spokes": [{"name": "spoke1"}, {"name": "spoke2"}],
    },
}

# A UDP listener on spoke2's tunnel interface, joined to a group (host side).
LISTEN = """
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"dmvpn0")
s.bind(("239.1.1.1", 5000))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             socket.inet_aton("239.1.1.1") + socket.inet_aton("10.0.0.12"))
print("listening", flush=True)
s.settimeout(20)
print(s.recv(100).decode(), flush=True)
"""
SEND = (
    "python3 -S -c 'import socket,time; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); "
    's.setsockopt(socket.IPPROTO_IP,socket.IP_MULTICAST_IF,socket.inet_aton("10.0.0.1")); '
    '[(s.sendto(b"hello-from-the-kernel-hub",("239.1.1.1",5000)),time.sleep(0.3)) '
    "for _ in range(5)]'"
)


@pytest.fixture(scope="module")
def cloud() -> Iterator[Cloud]:
    with kernel_cloud(TOPOLOGY, f"kdh{os.getpid() % 10000}-") as c:
        yield c


def test_kernel_hub_redirects_without_iptables(cloud: Cloud) -> None:
    # Userspace spokes registered with the kernel hub: its cache, and their
    # bindings as the hub kernel's neighbour entries.
    hub = cloud.cache("hub1")
    for n in (11, 12):
        assert hub[f"10.0.0.{n}/32"]["nbma"] == f"172.30.0.{n}", hub
        assert f"lladdr 172.30.0.{n} PERMANENT" in cloud.neighbour("hub1", f"10.0.0.{n}")
    assert "NFLOG" not in cloud.sh("hub1", "iptables-save 2>/dev/null; nft list ruleset")
    # spoke1 -> spoke2's LAN through the hub: the kernel forwards it back out
    # of the GRE device, the capture socket sees the hairpin, the hub sends a
    # Traffic Indication and the spokes resolve a shortcut.
    assert cloud.ping("host1", cloud.lan_ip("host2"))
    cloud.wait(
        "spoke1's shortcut to host2's LAN",
        lambda: cloud.shortcut_via("spoke1", "192.168.2.0/24") == "10.0.0.12",
    )
    assert cloud.guests.events("hub1", "redirect"), [e["kind"] for e in cloud.guests.events("hub1")]
    assert cloud.ping("host1", cloud.lan_ip("host2"))


def test_kernel_hub_replicates_link_multicast(cloud: Cloud) -> None:
    listener = cloud.lab.popen(
        "spoke2",
        ["python3", "-S", "-c", LISTEN],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "listening"
        res = cloud.guests.run("hub1", SEND)
        assert res.returncode == 0, res.output
        got = listener.stdout.readline().strip()
        traffic = cloud.guests.api("hub1", "/v1/nhrp/traffic")
        link = cloud.sh("hub1", "ip -s link show dmvpn0")
        assert got == "hello-from-the-kernel-hub", (traffic, link)
    finally:
        listener.kill()
        listener.wait()
    assert "tx.multicast" in str(traffic), traffic
