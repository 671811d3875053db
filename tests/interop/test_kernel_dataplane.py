"""Issue 15: our daemon on the kernel's own mGRE (`dataplane: kernel`), inside
QEMU guests (this host has no ip_gre), in one phase 3 cloud with userspace
nodes on the host side (dmvpn.lab.vmnode):

    hub1    dmvpn, userspace (namespace)    spoke1  dmvpn, kernel (guest)
    spoke3  dmvpn, userspace (namespace)    spoke2  dmvpn, kernel (guest)

One cloud for the module: booting guests costs seconds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .kernelcloud import Cloud, kernel_cloud

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, guest taps)")

TOPOLOGY = {
    "phase": 3,
    "holdtime": 60,
    "nodes": {
        "hubs": [{"name": "hub1"}],
        "spokes": [
            {"name": "spoke1", "kind": "frr"},  # the lab's guest wiring; dmvpn runs in it
            {"name": "spoke2", "kind": "frr"},
            {"name": "spoke3"},
        ],
    },
}


@pytest.fixture(scope="module")
def cloud() -> Iterator[Cloud]:
    with kernel_cloud(TOPOLOGY, f"kdp{os.getpid() % 10000}-") as c:
        yield c


def test_kernel_spokes_register_with_a_userspace_hub(cloud: Cloud) -> None:
    # The device is the kernel's keyed multipoint GRE (no remote), our tunnel address on it.
    link = cloud.sh("spoke1", "ip -d addr show dmvpn0")
    assert "gre remote any local 172.30.0.11" in link, link
    assert "key 42" in link or "ikey 0.0.0.42" in link, link
    assert "10.0.0.11/24" in link
    # The binding of the NHS is a permanent neighbour entry whose link-layer
    # address is its NBMA address, as nhrpd keeps it.
    assert cloud.neighbour("spoke1", "10.0.0.1") == "10.0.0.1 lladdr 172.30.0.1 PERMANENT"
    # The hub sees both kernel spokes, at their NBMA addresses.
    hub = cloud.cache("hub1")
    for n in (11, 12):
        entry = hub[f"10.0.0.{n}/32"]
        assert entry["type"] == "dynamic" and entry["nbma"] == f"172.30.0.{n}", entry
    # The same show commands in the guest (the API `dmvpn show` reads; the
    # CLI itself would cost another 15 s of Python start under emulation).
    dmvpn = cloud.guests.api("spoke1", "/v1/dmvpn")
    assert "172.30.0.1" in str(dmvpn) and "10.0.0.1" in str(dmvpn), dmvpn
    assert cloud.cache("spoke1")["10.0.0.1/32"]["nbma"] == "172.30.0.1"
    traffic = cloud.guests.api("spoke1", "/v1/nhrp/traffic")
    assert "rx.nhrp" in str(traffic) and "tx.nhrp" in str(traffic), traffic


def test_phase3_shortcuts_from_a_kernel_spoke(cloud: Cloud) -> None:
    host2, host3 = cloud.lan_ip("host2"), cloud.lan_ip("host3")
    # Kernel spoke1 <-> userspace spoke3: first via the hub, whose redirect
    # (Traffic Indication) reaches the kernel spoke's packet socket.
    assert cloud.ping("host1", host3)
    cloud.wait(
        "spoke1's shortcut to host3's LAN",
        lambda: cloud.shortcut_via("spoke1", "192.168.3.0/24") == "10.0.0.13",
    )
    cloud.wait(
        "spoke3's shortcut back to host1's LAN",
        lambda: cloud.shortcut_via("spoke3", "192.168.1.0/24") == "10.0.0.11",
    )
    cloud.wait(
        "spoke1's neighbour entry for spoke3",
        lambda: "lladdr 172.30.0.13 PERMANENT" in cloud.neighbour("spoke1", "10.0.0.13"),
        timeout=5,
    )
    assert cloud.ping("host1", host3)
    assert "10.0.0.13/32" in cloud.cache("spoke1")
    # Kernel spoke1 <-> kernel spoke2: both ends on the kernel's mGRE.
    assert cloud.ping("host1", host2)
    cloud.wait(
        "spoke1's shortcut to host2's LAN",
        lambda: cloud.shortcut_via("spoke1", "192.168.2.0/24") == "10.0.0.12",
    )
    cloud.wait(
        "spoke2's shortcut back",
        lambda: cloud.shortcut_via("spoke2", "192.168.1.0/24") == "10.0.0.11",
    )
    assert cloud.ping("host1", host2)
