"""Issue 15: our kernel-plane spoke with an nhrpd hub and an nhrpd spoke.

    hub1    frr guest: FRR nhrpd on the kernel's mGRE, redirect (NFLOG)
    spoke1  vm guest: our daemon on the kernel's mGRE (`dataplane: kernel`)
    spoke2  frr guest: FRR nhrpd

All three in QEMU guests with Debian's kernel, so every GRE packet is the
kernel's. Our spoke registers with nhrpd's hub, takes the shortcut nhrpd's
redirect offers towards nhrpd's spoke, and nhrpd's spoke resolves us in
turn: phase 3 between the two implementations, both on kernel mGRE.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator

import pytest

from dmvpn.lab import Lab, Topology
from dmvpn.lab.frrnode import FrrNodes
from dmvpn.lab.vmnode import DmvpnGuests

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, guest taps)")

TOPOLOGY = {
    "phase": 3,
    "holdtime": 60,
    "nodes": {
        "hubs": [{"name": "hub1", "kind": "frr"}],
        "spokes": [
            {"name": "spoke1", "kind": "vm", "dataplane": "kernel"},
            {"name": "spoke2", "kind": "frr"},
        ],
    },
}


class Cloud:
    def __init__(self, lab: Lab, frr: FrrNodes, guests: DmvpnGuests) -> None:
        self.lab, self.frr, self.guests = lab, frr, guests

    def lan_ip(self, node: str) -> str:
        addr = self.lab.topology.plan(node).lan
        assert addr is not None
        return str(addr.ip)

    def ours(self, command: str) -> str:
        return self.guests.run("spoke1", command, timeout=60).output

    def vtysh(self, node: str, command: str) -> str:
        return self.frr.vtysh(node, command)

    def ping(self, host: str, dst: str) -> bool:
        res = self.lab.exec(
            host, ["ping", "-c", "3", "-i", "0.3", "-W", "2", dst], capture_output=True, timeout=30
        )
        return res.returncode == 0

    def wait(self, what: str, check: Callable[[], object], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}\n{self.guests.log_tail('spoke1')}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def cloud() -> Iterator[Cloud]:
    for tool in ("qemu-system-x86_64", "vtysh"):
        assert shutil.which(tool), f"{tool} missing: ./run.sh test installs it"
    lab = Lab(Topology.from_data(TOPOLOGY), prefix=f"kni{os.getpid() % 10000}-")
    lab.up()
    frr = FrrNodes(lab)
    guests = DmvpnGuests(lab, nodes=["spoke1"])
    try:
        frr.start()
        guests.start()  # the three guests boot at once
        frr.wait_ready()
        guests.wait_ready(timeout=300)
        yield Cloud(lab, frr, guests)
    finally:
        guests.stop()
        frr.stop_all()
        lab.down()


def _nhrpd_cache(cloud: Cloud, node: str) -> dict[str, tuple[str, str]]:
    rows: dict[str, tuple[str, str]] = {}
    for line in cloud.vtysh(node, "show ip nhrp cache").splitlines()[1:]:
        w = line.split()
        if len(w) >= 4:
            rows[w[2]] = (w[1], w[3])
    return rows


def test_our_kernel_spoke_and_nhrpd_shortcut_both_ways(cloud: Cloud) -> None:
    cloud.wait("spoke1 to register with nhrpd", lambda: cloud.guests.events("spoke1", "nhs-up"))
    cloud.wait(
        "nhrpd's hub to list both spokes",
        lambda: (
            {
                "10.0.0.11": ("dynamic", "172.30.0.11"),
                "10.0.0.12": ("dynamic", "172.30.0.12"),
            }.items()
            <= _nhrpd_cache(cloud, "hub1").items()
        ),
    )
    # Ours -> nhrpd's spoke: via nhrpd's hub first, whose redirect brings a
    # shortcut route on our kernel spoke and a neighbour entry on its mGRE
    # device naming nhrpd spoke's NBMA address.
    host1, host2 = cloud.lan_ip("host1"), cloud.lan_ip("host2")
    assert cloud.ping("host1", host2)

    def ours_direct() -> bool:
        cloud.ping("host1", host2)
        route = cloud.ours("ip route show proto 177 192.168.2.0/24")
        return "via 10.0.0.12" in route

    cloud.wait("our spoke's shortcut to host2's LAN", ours_direct)
    neigh = cloud.ours("ip neigh show 10.0.0.12 dev dmvpn0")
    assert re.search(r"lladdr 172\.30\.0\.12\b", neigh), neigh
    resolved = [e for e in cloud.guests.events("spoke1", "resolution-sent")]
    assert any(e["reason"] == "redirect from 10.0.0.1" for e in resolved), resolved
    # nhrpd's spoke -> ours: it resolves our LAN through its hub, and we
    # answer (a Resolution Reply from our kernel-plane spoke).
    assert cloud.ping("host2", host1)

    def theirs_direct() -> bool:
        cloud.ping("host2", host1)
        cache = _nhrpd_cache(cloud, "spoke2")
        return cache.get("10.0.0.11", ("", ""))[1] == "172.30.0.11"

    cloud.wait("nhrpd's spoke to resolve ours", theirs_direct)
    assert cloud.ping("host1", host2) and cloud.ping("host2", host1)
