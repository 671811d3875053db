"""Issue 15: our daemon on the kernel's own mGRE (`dataplane: kernel`), inside
QEMU guests (this host has no ip_gre), with userspace nodes on the host side
(dmvpn.lab.vmnode), phase 3. Two labs, booted together (one boot of all
three guests: each is one emulated CPU, so they share the cores instead of
booting in turn):

The spokes' lab (kernel spokes, a userspace hub):

    hub1    dmvpn, userspace (namespace)    spoke1  dmvpn, kernel (guest)
    spoke3  dmvpn, userspace (namespace)    spoke2  dmvpn, kernel (guest)

The hub's lab (a kernel hub, userspace spokes):

    hub1    dmvpn, kernel (guest)           spoke1, spoke2  dmvpn, userspace

The kernel hub sees its hairpins without iptables (a filtered packet socket
on the GRE device, dataplane/kernel.py) and replicates link multicast itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .kernelcloud import Cloud, kernel_clouds

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, guest taps)")

KERNEL_SPOKES = {
    "phase": 3,
    # IPsec everywhere: the kernel spokes' charon on the guest kernel's XFRM
    # (transport mode between them), the host nodes' on kernel-libipsec
    # (tunnel mode, which the mixed pairs settle on: docs/IPSEC.md).
    "ipsec_psk": "lab-psk-0123456789",
    "holdtime": 60,
    "tcp_adjust_mss": 1360,  # on the kernel plane too (issue 19)
    "nodes": {
        "hubs": [{"name": "hub1"}],
        "spokes": [
            # Our daemon in guests: spoke1 with `auto`, which with IPsec takes
            # the kernel plane and the kernel's ESP where the guest has both
            # (its /v1/ipsec below says esp kernel, transport); spoke2 named.
            {"name": "spoke1", "kind": "vm", "dataplane": "auto"},
            {"name": "spoke2", "kind": "vm", "dataplane": "kernel"},
            {"name": "spoke3"},
        ],
    },
}


KERNEL_HUB = {
    "phase": 3,
    "holdtime": 60,
    "nodes": {
        "hubs": [{"name": "hub1", "kind": "vm"}],  # our daemon in a guest, dataplane: kernel
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
def clouds() -> Iterator[tuple[Cloud, Cloud]]:
    tag = os.getpid() % 10000
    with kernel_clouds((KERNEL_SPOKES, f"kdp{tag}-"), (KERNEL_HUB, f"kdh{tag}-")) as (s, h):
        # The shortcuts wait for the SAs (the gate holds NHRP meanwhile).
        yield s, h


@pytest.fixture
def cloud(clouds: tuple[Cloud, Cloud]) -> Cloud:
    """The spokes' lab: kernel spokes, a userspace hub."""
    return clouds[0]


@pytest.fixture
def hub_cloud(clouds: tuple[Cloud, Cloud]) -> Cloud:
    """The hub's lab: a kernel hub, userspace spokes."""
    return clouds[1]


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
    # tcp_adjust_mss on the kernel's GRE device: a SYN host1 sends (to a
    # closed port: the clamp acts on the SYN alone) leaves spoke1's dmvpn0
    # through the daemon's nftables clamp, which counts it.
    syn = f"import socket; s = socket.socket(); s.settimeout(2); s.connect_ex(('{host2}', 9))"
    cloud.lab.exec("host1", ["python3", "-c", syn], capture_output=True)
    counters = cloud.guests.api("spoke1", "/v1/nhrp/traffic")["interfaces"][0]["dataplane"]
    assert counters.get("tcp.mss_clamped.out", 0) >= 1, counters


def test_kernel_hub_redirects_without_iptables(hub_cloud: Cloud) -> None:
    # Userspace spokes registered with the kernel hub: its cache, and their
    # bindings as the hub kernel's neighbour entries.
    hub = hub_cloud.cache("hub1")
    for n in (11, 12):
        assert hub[f"10.0.0.{n}/32"]["nbma"] == f"172.30.0.{n}", hub
        assert f"lladdr 172.30.0.{n} PERMANENT" in hub_cloud.neighbour("hub1", f"10.0.0.{n}")
    assert "NFLOG" not in hub_cloud.sh("hub1", "iptables-save 2>/dev/null; nft list ruleset")
    # spoke1 -> spoke2's LAN through the hub: the kernel forwards it back out
    # of the GRE device, the capture socket sees the hairpin, the hub sends a
    # Traffic Indication and the spokes resolve a shortcut.
    assert hub_cloud.ping("host1", hub_cloud.lan_ip("host2"))
    hub_cloud.wait(
        "spoke1's shortcut to host2's LAN",
        lambda: hub_cloud.shortcut_via("spoke1", "192.168.2.0/24") == "10.0.0.12",
    )
    kinds = [e["kind"] for e in hub_cloud.guests.events("hub1")]
    assert "redirect" in kinds, kinds
    assert hub_cloud.ping("host1", hub_cloud.lan_ip("host2"))


def test_kernel_hub_replicates_link_multicast(hub_cloud: Cloud) -> None:
    listener = hub_cloud.lab.popen(
        "spoke2",
        ["python3", "-S", "-c", LISTEN],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "listening"
        res = hub_cloud.guests.run("hub1", SEND)
        assert res.returncode == 0, res.output
        got = listener.stdout.readline().strip()
        traffic = hub_cloud.guests.api("hub1", "/v1/nhrp/traffic")
        link = hub_cloud.sh("hub1", "ip -s link show dmvpn0")
        assert got == "hello-from-the-kernel-hub", (traffic, link)
    finally:
        listener.kill()
        listener.wait()
    assert "tx.multicast" in str(traffic), traffic


def _sa(cloud: Cloud, node: str, remote: str) -> dict[str, Any] | None:
    view = cloud.guests.api(node, "/v1/ipsec")
    for peer in view["peers"]:
        if peer["remote"] == remote and peer["state"] == "up" and peer["child"]:
            return dict(peer)
    return None


# `ip xfrm state` of an AEAD SA: "src A dst B\n\tproto esp spi 0x.. reqid .. mode transport
# ... aead rfc4106(gcm(aes)) 0xKEY 128".
_XFRM_STATE = re.compile(
    r"src (\S+) dst (\S+)\s+proto esp spi (0x[0-9a-f]+) .*?mode (\w+).*?"
    r"aead rfc4106\(gcm\(aes\)\) (0x[0-9a-f]+) 128",
    re.S,
)


# GRE from the guest's NBMA address to one no SA covers: the block policy
# refuses it in the kernel (EPERM from xfrm_lookup), nothing leaves in clear.
CLEAR_GRE = (
    "python3 -S -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47); "
    's.bind(("172.30.0.11", 0))\n'
    'try:\n s.sendto(bytes(4), ("172.30.0.99", 0)); print("sent")\n'
    "except OSError as e: print(e.errno)'"
)


def test_kernel_spokes_protect_gre_in_transport_mode(cloud: Cloud, tmp_path: Path) -> None:
    """Kernel spoke1 <-> kernel spoke2: an SA of the kernel's XFRM in
    transport mode, GRE between the NBMA addresses inside ESP with no IP
    header in between (what the underlay shows, decrypted by tshark with
    the keys of `ip xfrm state`); spoke1 <-> the userspace hub (kernel-libipsec)
    settles on tunnel mode."""
    host2 = cloud.lan_ip("host2")
    hub = _sa(cloud, "spoke1", "172.30.0.1")
    assert hub is not None and hub["child"]["mode"] == "TUNNEL", hub
    view = cloud.guests.api("spoke1", "/v1/ipsec")
    assert view["esp"] == "kernel" and view["esp_mode"] == "transport", view
    # No libipsec device in the guest: ESP is the kernel's.
    assert "ipsec0" not in cloud.sh("spoke1", "ip -o link show")
    # Mixed pair, kernel spoke1 <-> kernel-libipsec spoke3 (the shortcut of
    # the test before): tunnel too.
    assert cloud.ping("host1", cloud.lan_ip("host3"))
    spoke3 = _sa(cloud, "spoke1", "172.30.0.13")
    assert spoke3 is not None and spoke3["child"]["mode"] == "TUNNEL", spoke3
    # No cleartext GRE: the block policies are in, and they refuse GRE to
    # an NBMA address without an SA.
    policies = cloud.sh("spoke1", "ip xfrm policy show")
    assert policies.count("action block") == 2 and "proto gre" in policies, policies
    assert cloud.guests.run("spoke1", CLEAR_GRE).output.strip() == "1", policies  # EPERM
    assert cloud.ping("host1", host2)
    cloud.wait(
        "spoke1's shortcut to host2's LAN",
        lambda: cloud.shortcut_via("spoke1", "192.168.2.0/24") == "10.0.0.12",
    )
    cloud.wait(
        "the transport-mode SA between the kernel spokes",
        lambda: (
            (_sa(cloud, "spoke1", "172.30.0.12") or {}).get("child", {}).get("mode") == "TRANSPORT"
        ),
    )
    pcap = tmp_path / "underlay.pcap"
    errors = (tmp_path / "tshark.err").open("w")
    tshark = cloud.lab.popen(
        "inet",
        ["tshark", "-q", "-i", "br0", "-f", "ip proto 50", "-w", str(pcap)],
        stdout=errors,
        stderr=errors,
    )
    try:
        time.sleep(2)  # tshark is listening
        assert cloud.ping("host1", host2, count=5)
        time.sleep(1)
    finally:
        tshark.terminate()
        tshark.wait(timeout=10)
        errors.close()
    states = _XFRM_STATE.findall(cloud.sh("spoke1", "ip xfrm state"))
    between = [s for s in states if {s[0], s[1]} == {"172.30.0.11", "172.30.0.12"}]
    assert len(between) >= 2 and all(s[3] == "transport" for s in between), states
    uat = [
        f'"IPv4","{src}","{dst}","{spi}","AES-GCM with 16 octet ICV [RFC4106]","{key}","NULL",""'
        for src, dst, spi, _, key in between
    ]
    args = ["-o", "esp.enable_encryption_decode:TRUE"]
    for line in uat:
        args += ["-o", f"uat:esp_sa:{line}"]
    out = subprocess.run(
        ["tshark", "-r", str(pcap), *args, "-T", "fields", "-e", "frame.protocols",
         "-e", "ip.src", "-e", "ip.dst"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )  # fmt: skip
    rows = [line.split("\t") for line in out.stdout.splitlines() if line]
    assert rows, (out.stderr, pcap)
    # Only ESP between the NBMA addresses on the wire; inside it GRE right
    # away (transport mode: no second IP header), then the overlay's packet
    # from host1 to host2.
    host1 = cloud.lan_ip("host1")
    for protocols, _, _ in rows:
        assert protocols.startswith("eth:ethertype:ip:esp"), protocols
    decrypted = [r for r in rows if ":esp:gre:ip:icmp" in r[0]]
    assert len(decrypted) >= 10, rows  # 5 echoes and 5 replies
    for protocols, srcs, dsts in decrypted:
        assert ":esp:ip:" not in protocols, protocols
        # Outer: the NBMA addresses; the IP header after GRE: the overlay's.
        pair = (srcs.split(","), dsts.split(","))
        assert pair in (
            (["172.30.0.11", host1], ["172.30.0.12", host2]),
            (["172.30.0.12", host2], ["172.30.0.11", host1]),
        ), pair
