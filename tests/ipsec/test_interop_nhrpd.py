"""IPsec interop: a dmvpn spoke (kernel-libipsec, its private charon) and an
FRR 8.4 nhrpd hub in User-Mode Linux whose GRE is protected by strongSwan
with kernel ESP (tunnel mode, GRE-only selectors). They bring up an SA and
exchange NHRP and data over it; the underlay carries only IKE and ESP in
UDP. The frr node comes from the lab (`kind: frr`); the guest's charon is
configured here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dmvpn.lab import Lab, Topology
from dmvpn.lab.frrnode import FrrNodes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, guest taps)")

DMVPN = str(Path(sys.executable).with_name("dmvpn"))
PSK = "interop-psk-0123456789"
TOPOLOGY = {
    "phase": 3,
    "holdtime": 30,
    "nodes": {"hubs": [{"name": "hub1", "kind": "frr"}], "spokes": [{"name": "spoke1"}]},
}
# strongSwan in the guest: kernel ESP (kernel-netlink), no libipsec.
GUEST_PLUGINS = (
    "random nonce openssl pem x509 pubkey pkcs1 pkcs8 hmac sha1 sha2 aes gcm kdf curve25519 "
    "kernel-netlink socket-default vici"
)
GUEST_STRONGSWAN = (
    """charon {
  load_modular = no
  load = """
    + GUEST_PLUGINS
    + """
  filelog { f { path = /run/out/charon.log
    default = 1 } }
  plugins { vici { socket = unix:///run/charon.vici } }
}
"""
)
# A responder for GRE from any peer, as nhrpd's docs suggest for a hub
# without `tunnel protection` (real-peers.md: Debian's strongSwan lacks the
# events nhrpd's vici profile needs); tunnel mode because kernel-libipsec
# does no transport mode.
GUEST_SWANCTL = """connections {
  dmvpn {
    version = 2
    local_addrs = %s
    proposals = aes256gcm16-prfsha384-x25519
    local { auth = psk }
    remote { auth = psk }
    children {
      gre {
        local_ts = dynamic[gre]
        remote_ts = dynamic[gre]
        mode = tunnel
        esp_proposals = aes256gcm16-x25519
      }
    }
  }
}
secrets { ike-cloud { secret = "%s" } }
"""
# The guest kernel's modules are on /lib/modules: the kernel loads ESP's
# crypto by itself.
GUEST_START = """
modprobe -a esp4 xfrm_user
(STRONGSWAN_CONF=/run/out/strongswan.conf setsid /usr/lib/ipsec/charon >/run/out/charon.out 2>&1 &)
for i in $(seq 100); do [ -S /run/charon.vici ] && break; sleep 0.1; done
swanctl --load-all --file /run/out/swanctl.conf --uri unix:///run/charon.vici
"""


class Interop:
    def __init__(self, lab: Lab, frr: FrrNodes, tmp: Path) -> None:
        self.lab, self.frr, self.tmp = lab, frr, tmp
        self.proc: subprocess.Popen[bytes] | None = None

    def guest(self, script: str) -> str:
        res = self.frr.run("hub1", script, timeout=60)
        assert res.returncode == 0, res.output
        return res.output

    def log(self, kind: str) -> list[dict[str, Any]]:
        path = self.tmp / "spoke1.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [
            r for r in (json.loads(x) for x in lines if x.startswith("{")) if r.get("kind") == kind
        ]

    def wait(self, what: str, check: Any, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                log = (self.tmp / "spoke1.log").read_text()[-2000:]
                pytest.fail(f"timed out waiting for {what}; spoke1: {log}")
            time.sleep(0.2)


@pytest.fixture
def interop(tmp_path: Path) -> Iterator[Interop]:
    for tool in ("qemu-system-x86_64", "vtysh", "tshark", "swanctl"):
        assert shutil.which(tool), f"{tool} missing: ./run.sh test installs it"
    topo = Topology.from_data(TOPOLOGY)
    lab = Lab(topo, prefix=f"uxi{os.getpid() % 10000}-")
    lab.up()
    it: Interop | None = None
    try:
        frr = FrrNodes(lab)
        frr.start()
        frr.wait_ready()
        it = Interop(lab, frr, tmp_path)
        hub_nbma = str(topo.plan("hub1").nbma.ip)  # type: ignore[union-attr]
        work = frr.dir("hub1")
        (work / "strongswan.conf").write_text(GUEST_STRONGSWAN)
        (work / "swanctl.conf").write_text(GUEST_SWANCTL % (hub_nbma, PSK))
        it.guest(GUEST_START)
        yield it
    finally:
        if it is not None and it.proc is not None:
            it.proc.terminate()
            it.proc.wait(timeout=15)
        lab.down()


def test_dmvpn_spoke_and_strongswan_kernel_esp_hub(interop: Interop, tmp_path: Path) -> None:
    lab = interop.lab
    pcap = tmp_path / "underlay.pcap"
    errors = (tmp_path / "tshark.err").open("w")
    tshark = lab.popen(
        "inet", ["tshark", "-q", "-i", "br0", "-w", str(pcap)], stdout=errors, stderr=errors
    )
    time.sleep(1.5)
    config = json.loads(json.dumps(lab.topology.node_config("spoke1"), default=str))
    config["ipsec"] = {"psk": PSK, "run_dir": str(tmp_path / "spoke1-charon")}
    config["socket"] = str(tmp_path / "spoke1.sock")
    (tmp_path / "spoke1.yaml").write_text(json.dumps(config))
    log = (tmp_path / "spoke1.log").open("a")
    interop.proc = lab.popen(
        "spoke1", [DMVPN, "run", "-c", str(tmp_path / "spoke1.yaml")], stdout=log, stderr=log
    )
    try:
        interop.wait("the SA to the frr hub", lambda: interop.log("ipsec-up"))
        interop.wait("registration with nhrpd over it", lambda: interop.log("nhs-up"))
        cache = interop.guest("vtysh --vty_socket /run/frr -c 'show ip nhrp cache'")
        assert any(
            line.split()[1:4] == ["dynamic", "10.0.0.11", "172.30.0.11"]
            for line in cache.splitlines()
            if len(line.split()) > 3
        ), cache
        sas = interop.guest("swanctl --list-sas --uri unix:///run/charon.vici")
        assert "ESTABLISHED" in sas and "INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-256" in sas, sas
        assert "172.30.0.1/32[gre]" in sas and "172.30.0.11/32[gre]" in sas
        # Data over the same SA: spoke1 pings the hub's tunnel address.
        ping = lab.exec(
            "spoke1",
            ["ping", "-c", "3", "-i", "0.3", "-W", "2", "10.0.0.1"],
            capture_output=True,
            text=True,
        )
        assert ping.returncode == 0, ping.stdout
        xfrm = interop.guest("ip -s xfrm state")
        assert "encap type espinudp" in xfrm and "mode tunnel" in xfrm
    finally:
        tshark.terminate()
        tshark.wait(timeout=10)
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(pcap),
            "-Y",
            "ip",
            "-T",
            "fields",
            "-e",
            "ip.proto",
            "-e",
            "udp.dstport",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = {tuple(line.split("\t")) for line in out.splitlines() if line.strip()}
    assert rows and rows <= {("17", "500"), ("17", "4500")}, rows
