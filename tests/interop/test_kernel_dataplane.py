"""Issue 15: our daemon on the kernel's own mGRE (`dataplane: kernel`), inside
QEMU guests (this host has no ip_gre), in one phase 3 cloud with userspace
nodes on the host side (dmvpn.lab.vmnode):

    hub1    dmvpn, userspace (namespace)    spoke1  dmvpn, kernel (guest)
    spoke3  dmvpn, userspace (namespace)    spoke2  dmvpn, kernel (guest)

One cloud for the module: booting guests costs seconds.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dmvpn.lab import Lab, Topology
from dmvpn.lab.runner import Runner
from dmvpn.lab.vmnode import DmvpnGuests

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


class Cloud:
    def __init__(self, lab: Lab, runner: Runner, guests: DmvpnGuests) -> None:
        self.lab, self.runner, self.guests = lab, runner, guests

    def wait(self, what: str, check: Callable[[], object], timeout: float = 30) -> float:
        start = time.monotonic()
        while not check():
            if time.monotonic() - start > timeout:
                pytest.fail(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.3)
        return time.monotonic() - start

    def sh(self, node: str, command: str) -> str:
        if node in self.guests.nodes:
            return self.guests.run(node, command).output
        res = self.lab.exec(node, ["sh", "-c", command], capture_output=True, text=True)
        return str(res.stdout)

    def ping(self, host: str, dst: str, count: int = 3) -> bool:
        res = self.lab.exec(
            host,
            ["ping", "-c", str(count), "-i", "0.3", "-W", "2", dst],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return res.returncode == 0

    def lan_ip(self, node: str) -> str:
        addr = self.lab.topology.plan(node).lan
        assert addr is not None
        return str(addr.ip)

    def cache(self, node: str) -> dict[str, dict[str, Any]]:
        data = self.guests.api(node, "/v1/nhrp") if node in self.guests.nodes else None
        if data is None:
            import json

            sock = str(self.runner.socket_path(node))
            out = self.lab.exec(
                node,
                [*self.runner.dmvpn, "show", "nhrp", "--json", "--socket", sock],
                capture_output=True,
                text=True,
            ).stdout
            data = json.loads(out)
        return {e["protocol"]: e for e in data["entries"]}

    def shortcut_via(self, node: str, prefix: str) -> str | None:
        """The next hop of the node's NHRP shortcut route (protocol 177) for prefix."""
        out = self.sh(node, f"ip route show proto 177 {prefix}")
        m = re.search(r"via (\S+)", out)
        return m.group(1) if m else None

    def neighbour(self, node: str, addr: str) -> str:
        return self.sh(node, f"ip neigh show {addr} dev dmvpn0").strip()


@pytest.fixture(scope="module")
def cloud() -> Iterator[Cloud]:
    assert shutil.which("qemu-system-x86_64"), "qemu-system-x86 missing"
    lab = Lab(Topology.from_data(TOPOLOGY), prefix=f"kdp{os.getpid() % 10000}-")
    lab.up()
    try:
        runner = Runner(lab)
        guests = DmvpnGuests(lab)
        guests.start()  # the guests boot while the host's daemons start
        runner.start()
        guests.wait_ready(timeout=240)
        c = Cloud(lab, runner, guests)
        c.wait(
            "the kernel spokes to register",
            lambda: all(guests.events(s, "nhs-up") for s in guests.nodes),
            timeout=60,
        )
        runner.wait_registered()
        yield c
    finally:
        keep = os.environ.get("DMVPN_INTEROP_KEEP")
        if keep:  # for a post-mortem: the guests' consoles and daemons' logs
            shutil.copytree(
                lab.run_dir,
                f"{keep}/kernel-dataplane",
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("*.sock"),
            )
        lab.down()


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
    # The same show commands in the guest (the operator's text, then the API's JSON).
    text = cloud.guests.show("spoke1", "dmvpn")
    assert "172.30.0.1" in text and "10.0.0.1" in text, text
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
