"""Bulk TCP across a small access link, through lab access routers
(dmvpn.lab.access), plain and with IPsec: spoke1 and spoke2 each sit behind
an access router whose link to them is 1380 bytes (less than a full tunnel
packet, 1400 + 28); spoke2's router also drops ICMP Fragmentation Needed (a
path MTU black hole). host3, behind a plain spoke, sends a few MB to host1
and host2.

- path MTU discovery with ICMP passed: the transfer to host1 completes;
- path MTU discovery through the black hole, no MSS clamp: the transfer to
  host2 stalls (DF packets vanish and nobody says why: the hole is real);
- through the black hole with `tcp_adjust_mss`: it completes, and the cloud
  also works through an underlay firewall that passes only docs/MTU.md's
  table (the phase 3 shortcut forms through it)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dmvpn.lab.netns import Lab
from dmvpn.lab.topology import Topology
from tests.e2e.test_cloud import DMVPN, Cloud

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root for network namespaces (CI runs as root)"
)

PSK = "mtu-paths-test-psk-0123"
SIZE = 3 * 1024 * 1024

# host side: receive until EOF, answer with the count.
SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5201)); s.listen(1); s.settimeout(60)
c, _ = s.accept(); n = 0
while (b := c.recv(65536)):
    n += len(b)
c.sendall(str(n).encode()); c.close()
"""
# sender: SIZE bytes, then wait (at most argv[3] s) for the receiver's count.
CLIENT = """
import json, socket, sys, time
t = time.monotonic(); size = int(sys.argv[2]); limit = float(sys.argv[3])
try:
    c = socket.create_connection((sys.argv[1], 5201), timeout=limit)
    c.sendall(bytes(size)); c.shutdown(socket.SHUT_WR)
    c.settimeout(max(0.1, limit - (time.monotonic() - t)))
    got = int(c.recv(100) or b"0")
except (TimeoutError, OSError) as exc:
    got = -1
print(json.dumps({"received": got, "seconds": round(time.monotonic() - t, 2)}))
"""


def transfer(cloud: Cloud, src: str, dst: str, limit: float) -> dict[str, Any]:
    """SIZE bytes of TCP from host `src` to host `dst`, given `limit` seconds."""
    addr = str(cloud.topo.plan(dst).lan.ip)  # type: ignore[union-attr]
    server = cloud.lab.popen(dst, [sys.executable, "-c", SERVER])
    try:
        cloud.wait(
            f"{dst}'s listener",
            lambda: cloud.sh(dst, "ss", "-ltnH", "sport = :5201").strip() != "",
            timeout=10,
        )
        run = cloud.lab.exec(
            src,
            [sys.executable, "-c", CLIENT, addr, str(SIZE), str(limit)],
            capture_output=True,
            text=True,
        )
        return json.loads(run.stdout)  # type: ignore[no-any-return]
    finally:
        server.kill()
        server.wait()


def path_mtu(cloud: Cloud, node: str, nbma: str) -> dict[str, Any] | None:
    """`show dmvpn --json`: the path MTU `node` learned towards `nbma`."""
    sock = str(cloud.logs / f"{node}.sock")
    out = cloud.sh(node, DMVPN, "show", "dmvpn", "--json", "--socket", sock)
    for peer in json.loads(out)["interfaces"][0]["peers"]:
        if peer["nbma"] == nbma:
            return peer.get("path_mtu")  # type: ignore[no-any-return]
    return None


@pytest.fixture
def make_cloud(tmp_path: Path) -> Iterator[Callable[..., Cloud]]:
    labs: list[Lab] = []

    def make(**extra: Any) -> Cloud:
        topo = Topology.from_data(
            {
                "phase": 3,
                "path_mtu_discovery": True,
                "nodes": {
                    "hubs": [{"name": "hub1"}],
                    "spokes": [
                        {"name": "spoke1", "access": extra.pop("access1")},
                        {"name": "spoke2", "access": extra.pop("access2", None)},
                        {"name": "spoke3"},
                    ],
                },
                **extra,
            }
        )
        lab = Lab(topo, prefix=f"dmtp{os.getpid() % 100000}-", state_path=tmp_path / "lab.json")
        labs.append(lab)
        lab.up()
        cloud = Cloud(lab, topo, tmp_path)
        for plan in topo.routers:
            cloud.start(plan.name)
        cloud.wait(
            "every spoke to register",
            lambda: all(cloud.events(s.name, "nhs-up") for s in topo.spokes),
            timeout=30,
        )
        return cloud

    try:
        yield make
    finally:
        for lab in labs:
            lab.down()


def _ipsec(on: bool) -> dict[str, Any]:
    return {"ipsec_psk": PSK} if on else {}


@pytest.mark.parametrize("ipsec", [False, True], ids=["plain", "ipsec"])
def test_path_mtu_discovery_and_the_black_hole(make_cloud, ipsec: bool) -> None:  # type: ignore[no-untyped-def]
    cloud = make_cloud(
        access1={"mtu": 1380},
        access2={"mtu": 1380, "drop_icmp": True},
        **_ipsec(ipsec),
    )
    done = transfer(cloud, "host3", "host1", 20)
    assert done["received"] == SIZE, done
    # Who learned what (`show dmvpn`): plain, the access link from its
    # router's ICMP; with IPsec that ICMP quotes charon's ESP, which the
    # kernel acts on, so no ICMP-learned value (docs/MTU.md).
    spoke1 = str(cloud.topo.plan("spoke1").nbma.ip)  # type: ignore[union-attr]
    learned = [m for n in ("hub1", "spoke3") if (m := path_mtu(cloud, n, spoke1))]
    icmp = [m for m in learned if m["source"] == "icmp"]
    if ipsec:
        assert not icmp, learned
    else:
        assert icmp and all(m["mtu"] == 1380 for m in icmp), learned
        assert icmp[0]["reporter"] == str(cloud.topo.access_routers[0].address.ip)
    # The black hole: nothing tells host3's TCP its full-size segments vanish.
    stalled = transfer(cloud, "host3", "host2", 4)
    assert stalled["received"] == -1, stalled
    drops = cloud.sh("spoke2acc", "nft", "list", "chain", "ip", "dmvpnlab_access", "output")
    assert "packets 0 " not in drops, drops


@pytest.mark.parametrize("ipsec", [False, True], ids=["plain", "ipsec"])
def test_mss_clamp_through_a_black_hole_and_a_firewall(make_cloud, ipsec: bool) -> None:  # type: ignore[no-untyped-def]
    cloud = make_cloud(
        access1={"mtu": 1380, "drop_icmp": True, "firewall": True},
        tcp_adjust_mss=1380 - 28 - 40 - (80 if ipsec else 0),
        **_ipsec(ipsec),
    )
    done = transfer(cloud, "host3", "host1", 20)
    assert done["received"] == SIZE, done
    # The phase 3 shortcut forms through the firewall: host1 -> host3 direct.
    host3 = str(cloud.topo.plan("host3").lan.ip)  # type: ignore[union-attr]
    cloud.wait(
        "the spoke1-spoke3 shortcut through the firewall",
        lambda: cloud.hops("host1", host3)[1:] == ["10.0.0.13", host3],
        timeout=20,
    )
    # What the table does not list is dropped: a ping between the NBMA addresses.
    spoke1 = str(cloud.topo.plan("spoke1").nbma.ip)  # type: ignore[union-attr]
    ping = cloud.lab.exec("spoke3", ["ping", "-c", "1", "-W", "1", spoke1], capture_output=True)
    assert ping.returncode != 0
