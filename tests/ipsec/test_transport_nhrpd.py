"""IPsec transport mode between our kernel-plane spoke and an nhrpd hub
protected by stock strongSwan (issue 15).

    hub1    frr guest: FRR nhrpd on the kernel's mGRE, strongSwan with the
            kernel's ESP answering for GRE from any peer in transport mode
    spoke1  vm guest: our daemon, `dataplane: auto` (kernel plane, kernel ESP)

Both in QEMU guests with Debian's kernel. Our spoke proposes transport mode
(its default on the kernel plane), strongSwan accepts it, nhrpd registers
the spoke over the SA; the underlay carries IKE and ESP only, and the ESP
payload is GRE with no inner IP header (tshark, keys from `ip xfrm state`).
nhrpd's own `tunnel protection` needs a strongSwan with events Debian's
lacks (real-peers.md); a policy-based responder is what its docs suggest.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dmvpn.lab import Lab, Topology
from dmvpn.lab.frrnode import FrrNodes
from dmvpn.lab.vmnode import DmvpnGuests

from ..capture import flush
from .test_interop_nhrpd import GUEST_START, GUEST_STRONGSWAN, GUEST_SWANCTL, PSK

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, guest taps)")

TOPOLOGY = {
    "phase": 3,
    "holdtime": 30,
    "nodes": {
        "hubs": [{"name": "hub1", "kind": "frr"}],
        "spokes": [{"name": "spoke1", "kind": "vm", "dataplane": "auto"}],
    },
}
TRANSPORT_SWANCTL = GUEST_SWANCTL.replace("mode = tunnel", "mode = transport")
# "src A dst B\n\tproto esp spi 0x.. reqid .. mode transport ... aead rfc4106(gcm(aes)) 0xKEY 128"
XFRM_STATE = re.compile(
    r"src (\S+) dst (\S+)\s+proto esp spi (0x[0-9a-f]+) .*?mode (\w+).*?"
    r"aead rfc4106\(gcm\(aes\)\) (0x[0-9a-f]+) 128",
    re.S,
)


class IpsecGuests(DmvpnGuests):
    """Our daemon in its guest, with IPsec (the lab's `ipsec_psk` is for
    labs without frr nodes: nhrpd's guests get their strongSwan here)."""

    def config(self, node: str) -> dict[str, Any]:
        return {**super().config(node), "ipsec": {"psk": PSK}}


class Cloud:
    def __init__(self, lab: Lab, frr: FrrNodes, guests: DmvpnGuests) -> None:
        self.lab, self.frr, self.guests = lab, frr, guests

    def hub(self, script: str) -> str:
        res = self.frr.run("hub1", script, timeout=60)
        assert res.returncode == 0, res.output
        return res.output

    def spoke(self, script: str) -> str:
        res = self.guests.run("spoke1", script, timeout=60)
        assert res.returncode == 0, res.output
        return res.output

    def wait(self, what: str, check: Callable[[], object], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                pytest.fail(
                    f"timed out waiting for {what}\n--- spoke1:\n{self.guests.log_tail('spoke1')}"
                    f"\n--- hub1 charon:\n{self.hub('tail -n 20 /run/out/charon.log')}"
                )
            time.sleep(0.5)


@pytest.fixture(scope="module")
def cloud() -> Iterator[Cloud]:
    for tool in ("qemu-system-x86_64", "vtysh", "tshark", "swanctl"):
        assert shutil.which(tool), f"{tool} missing: ./run.sh test installs it"
    lab = Lab(Topology.from_data(TOPOLOGY), prefix=f"tpn{os.getpid() % 10000}-")
    lab.up()
    frr = FrrNodes(lab)
    guests = IpsecGuests(lab, nodes=["spoke1"])
    try:
        frr.start()
        guests.start()  # both guests boot at once
        frr.wait_ready()
        c = Cloud(lab, frr, guests)
        hub_nbma = str(lab.topology.plan("hub1").nbma.ip)  # type: ignore[union-attr]
        work = frr.dir("hub1")
        (work / "strongswan.conf").write_text(GUEST_STRONGSWAN)
        (work / "swanctl.conf").write_text(TRANSPORT_SWANCTL % (hub_nbma, PSK))
        c.hub(GUEST_START)
        guests.wait_ready(timeout=300)
        yield c
    finally:
        guests.stop()
        frr.stop_all()
        lab.down()


def test_our_kernel_spoke_registers_with_nhrpd_over_a_transport_mode_sa(
    cloud: Cloud, tmp_path: Path
) -> None:
    # auto took the kernel plane and the kernel's ESP in the guest.
    assert any(
        e["message"] == "kernel data plane with the kernel's ESP (ip_gre, esp4, XFRM)"
        for e in cloud.guests.events("spoke1", "dataplane")
    ), cloud.guests.log_tail("spoke1")
    cloud.wait("spoke1 to register with nhrpd", lambda: cloud.guests.events("spoke1", "nhs-up"))
    view = cloud.guests.api("spoke1", "/v1/ipsec")
    assert view["esp"] == "kernel" and view["esp_mode"] == "transport", view
    peer = next(p for p in view["peers"] if p["remote"] == "172.30.0.1")
    assert peer["state"] == "up" and peer["child"]["mode"] == "TRANSPORT", peer
    # strongSwan's side: the same SA, transport, kernel ESP (no UDP: no NAT).
    sas = cloud.hub("swanctl --list-sas --uri unix:///run/charon.vici")
    assert "INSTALLED, TRANSPORT, ESP:AES_GCM_16-256" in sas, sas
    assert "172.30.0.1/32[gre]" in sas and "172.30.0.11/32[gre]" in sas, sas
    cache = cloud.hub("vtysh --vty_socket /run/frr -c 'show ip nhrp cache'")
    assert any(
        line.split()[1:4] == ["dynamic", "10.0.0.11", "172.30.0.11"]
        for line in cache.splitlines()
        if len(line.split()) > 3
    ), cache

    # Data over it, captured on the underlay: ESP only, and inside GRE
    # straight after the ESP header (transport mode: no second IP header).
    pcap = tmp_path / "underlay.pcap"
    errors = (tmp_path / "tshark.err").open("w")
    tshark = cloud.lab.popen(
        "inet", ["tshark", "-q", "-i", "br0", "-w", str(pcap)], stdout=errors, stderr=errors
    )
    try:
        cloud.wait("the capture to start", lambda: pcap.exists() and pcap.stat().st_size)
        flush(cloud.lab, pcap)
        ping = cloud.guests.run("spoke1", "ping -c 3 -i 0.3 -W 2 10.0.0.1", timeout=30)
        assert ping.returncode == 0, ping.output
        flush(cloud.lab, pcap)
    finally:
        tshark.terminate()
        tshark.wait(timeout=10)
    states = XFRM_STATE.findall(cloud.spoke("ip xfrm state"))
    assert len(states) >= 2 and all(s[3] == "transport" for s in states), states
    args = ["-o", "esp.enable_encryption_decode:TRUE"]
    for src, dst, spi, _mode, key in states:
        args += [
            "-o",
            f'uat:esp_sa:"IPv4","{src}","{dst}","{spi}",'
            f'"AES-GCM with 16 octet ICV [RFC4106]","{key}","NULL",""',
        ]
    out = subprocess.run(
        ["tshark", "-r", str(pcap), *args, "-Y", "ip.addr == 172.30.0.11",
         "-T", "fields", "-e", "frame.protocols", "-e", "ip.src", "-e", "ip.dst"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )  # fmt: skip
    rows = [line.split("\t") for line in out.stdout.splitlines() if line]
    assert rows, (out.stderr, pcap)
    # Between the NBMA addresses only ESP (and IKE, should a rekey fall in);
    # decrypted, GRE right after the ESP header and then the overlay's echo.
    for protocols, _, _ in rows:
        assert protocols.startswith(("eth:ethertype:ip:esp", "eth:ethertype:ip:udp:isakmp")), rows
    decrypted = [r for r in rows if ":esp:gre:ip:icmp" in r[0]]
    assert len(decrypted) >= 6, rows  # 3 echoes and 3 replies
    for protocols, srcs, dsts in decrypted:
        assert ":esp:ip:" not in protocols, protocols
        assert (srcs.split(","), dsts.split(",")) in (
            (["172.30.0.11", "10.0.0.11"], ["172.30.0.1", "10.0.0.1"]),
            (["172.30.0.1", "10.0.0.1"], ["172.30.0.11", "10.0.0.11"]),
        ), (srcs, dsts)
