"""The kernel data plane's pure parts (dataplane/kernel.py): the `ip`
commands, the capture socket's BPF program (run by a small classic-BPF
interpreter here), the neighbour-miss parser, and the config's refusals.
The plane itself runs in QEMU guests (tests/interop/test_kernel_dataplane.py):
this host has no ip_gre."""

from __future__ import annotations

import json
import os
import struct
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
import yaml

from dmvpn.config import ConfigError, parse_config
from dmvpn.daemon.node import make_dataplane
from dmvpn.dataplane.kernel import (
    ETH_P_IP,
    HEADERS,
    PACKET_OUTGOING,
    WHOLE,
    KernelDataPlane,
    capture_filter,
    complete_udp_checksum,
    link_commands,
    neighbour_misses,
    sysctls,
)
from dmvpn.dataplane.neighbours import _lladdr, neigh_message
from dmvpn.dataplane.xfrmblock import BLOCK_PRIORITY, block_policy_commands


def node(**itf: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "gre1",
        "address": "10.0.0.11/24",
        "dataplane": "kernel",
        "tunnel": {"source": "172.30.0.11", "key": 42},
        "nhrp": {"network_id": 1, "nhs": [{"address": "10.0.0.1", "nbma": "172.30.0.1"}]},
    }
    base.update(itf)
    return {"node": "spoke1", "interfaces": [base]}


LOCAL = ["local", "172.30.0.11", "ttl", "64"]


def test_link_commands_make_a_keyed_multipoint_gre_device() -> None:
    cfg = parse_config(node(mtu=1400)).interfaces[0]
    assert link_commands(cfg) == [
        ["ip", "link", "add", "gre1", "type", "gre", "key", "42", *LOCAL],
        ["ip", "link", "set", "gre1", "mtu", "1400", "arp", "on"],
        ["ip", "addr", "replace", "10.0.0.11/24", "dev", "gre1"],
        ["ip", "link", "set", "gre1", "up"],
    ]
    keyless = parse_config(node(tunnel={"source": "172.30.0.11"})).interfaces[0]
    assert "key" not in link_commands(keyless)[0]
    assert "remote" not in link_commands(keyless)[0]  # multipoint


def test_sysctls_leave_resolution_to_the_daemon() -> None:
    got = dict(sysctls("gre1"))
    neigh = "/proc/sys/net/ipv4/neigh/gre1/"
    assert got[neigh + "ucast_solicit"] == got[neigh + "mcast_solicit"] == "0"
    assert got[neigh + "app_solicit"] == "1"
    assert got["/proc/sys/net/ipv4/conf/gre1/send_redirects"] == "0"


# -- the capture filter, run by a classic BPF interpreter (linux/filter.h) -----


def run_bpf(prog: bytes, packet: bytes, protocol: int, pkttype: int) -> int:
    insns = [struct.unpack_from("=HBBI", prog, i) for i in range(0, len(prog), 8)]
    a, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:  # ld W abs (ancillary when k >= SKF_AD_OFF)
            if k == 0xFFFFF000:
                a = protocol
            elif k == 0xFFFFF004:
                a = pkttype
            else:
                if k + 4 > len(packet):
                    return 0
                a = int.from_bytes(packet[k : k + 4], "big")
            pc += 1
        elif code == 0x15:
            pc += 1 + (jt if a == k else jf)
        elif code == 0x35:
            pc += 1 + (jt if a >= k else jf)
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unknown instruction {code:#x}")


def ipv4(src: str, dst: str) -> bytes:
    return (
        b"\x45\x00\x00\x54" + b"\x00" * 8 + IPv4Address(src).packed + IPv4Address(dst).packed
    ) + b"x" * 64


@pytest.mark.parametrize("redirect", [False, True])
def test_capture_filter_takes_outgoing_multicast_whole(redirect: bool) -> None:
    prog = capture_filter(redirect)
    ospf = ipv4("10.0.0.1", "224.0.0.5")
    assert run_bpf(prog, ospf, ETH_P_IP, PACKET_OUTGOING) == WHOLE
    assert run_bpf(prog, ipv4("10.0.0.1", "255.255.255.255"), ETH_P_IP, PACKET_OUTGOING) == WHOLE
    unicast = ipv4("192.168.1.10", "192.168.2.10")
    expect = HEADERS if redirect else 0
    assert run_bpf(prog, unicast, ETH_P_IP, PACKET_OUTGOING) == expect  # hairpin candidates
    assert run_bpf(prog, unicast, ETH_P_IP, 0) == expect  # where sources come from
    assert run_bpf(prog, ospf, ETH_P_IP, 0) == expect  # incoming multicast: not sent on
    assert run_bpf(prog, b"\x00" * 40, 0x2001, PACKET_OUTGOING) == 0  # NHRP: its own socket
    assert run_bpf(prog, b"\x00" * 40, 0x86DD, 0) == 0


# -- neighbour misses ----------------------------------------------------------------


def getneigh(index: int, addr: str, state: int = 0x01, family: int = 2) -> bytes:
    dst = IPv4Address(addr).packed
    body = struct.pack("=BxxxiHBB", family, index, state, 0, 0) + struct.pack("=HH", 8, 1) + dst
    return struct.pack("=IHHII", 16 + len(body), 30, 0, 0, 0) + body


def test_neighbour_misses_are_the_kernels_requests_for_this_device() -> None:
    data = (
        getneigh(7, "10.0.0.12")
        + getneigh(8, "10.0.0.13")  # another device
        + getneigh(7, "10.0.0.14", state=0x02)  # not a resolution request
        + neigh_message(1, 7, IPv4Address("10.0.0.15"), b"\xac\x1e\x00\x0f")  # RTM_NEWNEIGH
        + getneigh(7, "10.0.0.16")
    )
    assert neighbour_misses(data, 7) == [IPv4Address("10.0.0.12"), IPv4Address("10.0.0.16")]
    assert neighbour_misses(data[:-3], 7) == [IPv4Address("10.0.0.12")]  # truncated: stop
    assert neighbour_misses(b"", 7) == []


def test_neighbour_entries_carry_the_nbma_address_as_link_layer_address() -> None:
    nbma = IPv4Address("172.30.0.12").packed
    msg = neigh_message(1, 7, IPv4Address("10.0.0.12"), nbma)
    assert _lladdr(msg) == nbma
    mac = b"\x02\x00" + nbma
    assert _lladdr(neigh_message(2, 7, IPv4Address("10.0.0.12"), mac)) == mac


# -- config and selection ---------------------------------------------------------------


def test_config_refuses_what_the_kernel_plane_does_not_do_yet() -> None:
    with pytest.raises(ConfigError, match="dataplane: kernel does not do ipv6_address"):
        parse_config(node(ipv6_address="fd00::11/64"))
    with pytest.raises(ConfigError, match=r"dataplane: kernel does not do tunnel\.namespace"):
        parse_config(node(tunnel={"source": "172.30.0.11", "namespace": "under"}))
    # IPsec needs the whole node on one ESP (one charon).
    two = node()
    two["interfaces"].append(
        {
            **two["interfaces"][0],
            "name": "dmvpn1",
            "address": "10.1.0.11/24",
            "dataplane": "userspace",
            "nhrp": {"network_id": 2},
        }
    )
    with pytest.raises(ConfigError, match="every interface is on dataplane: kernel or none"):
        parse_config({**two, "ipsec": {"psk": "0123456789abcdef"}})


def test_kernel_plane_ipsec_defaults_to_transport_with_xfrm() -> None:
    cfg = parse_config({**node(), "ipsec": {"psk": "0123456789abcdef"}})
    assert cfg.kernel_esp and cfg.ipsec is not None and cfg.ipsec.mode == "transport"


def test_block_policies_keep_cleartext_gre_of_the_nbma_address_in() -> None:
    add = block_policy_commands(IPv4Address("172.30.0.11"))
    assert add == [
        ["ip", "xfrm", "policy", "add", "src", "172.30.0.11/32", "proto", "gre", "dir", "out",
         "action", "block", "priority", str(BLOCK_PRIORITY)],
        ["ip", "xfrm", "policy", "add", "dst", "172.30.0.11/32", "proto", "gre", "dir", "in",
         "action", "block", "priority", str(BLOCK_PRIORITY)],
    ]  # fmt: skip
    # Deleted by the same selector (and direction), without action or priority.
    assert [a[4:] for a in block_policy_commands(IPv4Address("172.30.0.11"), add=False)] == [
        ["src", "172.30.0.11/32", "proto", "gre", "dir", "out"],
        ["dst", "172.30.0.11/32", "proto", "gre", "dir", "in"],
    ]


def test_dataplane_kernel_makes_a_kernel_plane_without_touching_the_host() -> None:
    cfg = parse_config(node()).interfaces[0]
    plane = make_dataplane(cfg, None, lambda kind, msg: None)  # type: ignore[arg-type]
    assert isinstance(plane, KernelDataPlane)
    assert plane.index == -1 and dict(plane.bindings) == {} and dict(plane.stats) == {}
    # Before open(), decisions are only recorded.
    plane.bind(IPv4Address("10.0.0.12"), IPv4Address("172.30.0.12"))
    assert plane.bindings == {IPv4Address("10.0.0.12"): IPv4Address("172.30.0.12")}
    plane.unbind(IPv4Address("10.0.0.12"))
    assert dict(plane.bindings) == {}


def test_multicast_copies_get_the_udp_checksum_offload_left_undone() -> None:
    # A UDP datagram as a packet socket sees it leave a device with HW_CSUM:
    # the checksum field holds only the pseudo-header sum.
    payload = b"hello-from-the-kernel-hub"
    udp = struct.pack("!HHHH", 5000, 5000, 8 + len(payload), 0x1234) + payload
    header = bytearray(b"\x45\x00" + struct.pack("!H", 20 + len(udp)) + b"\0\0\x40\x00\x01\x11")
    header += b"\0\0" + IPv4Address("10.0.0.1").packed + IPv4Address("239.1.1.1").packed
    fixed = complete_udp_checksum(bytes(header) + udp)
    assert fixed[:20] == header and fixed[28:] == payload
    # A correct checksum sums (with the pseudo-header) to 0xFFFF.
    pseudo = bytes(header[12:20]) + struct.pack("!BBH", 0, 17, len(udp))
    data = pseudo + fixed[20:]
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    assert total == 0xFFFF
    ospf = bytes(header[:9]) + b"\x59" + bytes(header[10:]) + udp
    assert complete_udp_checksum(ospf) == ospf  # not UDP: untouched


def test_auto_prefers_the_kernel_plane_only_where_it_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    from dmvpn.daemon import node as node_module

    logs: list[str] = []
    log = lambda kind, msg: logs.append(msg)  # noqa: E731
    monkeypatch.setattr(node_module, "kernel_gre_unavailable", lambda: None)
    cfg = parse_config(node(dataplane="auto")).interfaces[0]
    plane = make_dataplane(cfg, None, log)  # type: ignore[arg-type]
    assert isinstance(plane, KernelDataPlane) and "kernel data plane" in logs[-1]
    # IPsec (decided for the whole node: decide_ipsec) and no ip_gre:
    # not the kernel plane here.
    assert not isinstance(make_dataplane(cfg, None, log, ipsec=True), KernelDataPlane)  # type: ignore[arg-type]
    monkeypatch.setattr(node_module, "kernel_gre_unavailable", lambda: "no ip_gre")
    assert not isinstance(make_dataplane(cfg, None, log), KernelDataPlane)  # type: ignore[arg-type]


def test_ipsec_takes_the_kernel_esp_and_auto_the_kernel_plane_where_the_host_has_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dmvpn.daemon import node as node_module

    logs: list[tuple[str, str]] = []
    log = lambda kind, msg: logs.append((kind, msg))  # noqa: E731
    psk = {"ipsec": {"psk": "0123456789abcdef"}}
    auto = parse_config({**node(dataplane="auto"), **psk})
    decide = node_module.decide_ipsec
    monkeypatch.setattr(node_module, "kernel_gre_unavailable", lambda: None)
    monkeypatch.setattr(node_module, "kernel_esp_unavailable", lambda: None)
    assert decide(auto, log) == (True, True)
    assert logs[-2:] == [
        ("ipsec-esp", "ESP by the kernel (XFRM, esp4)"),
        ("dataplane", "kernel data plane with the kernel's ESP (ip_gre, esp4, XFRM)"),
    ]
    # The userspace plane named: the kernel's ESP all the same.
    userspace = parse_config({**node(dataplane="userspace"), **psk})
    assert decide(userspace, log) == (True, False)
    # No ip_gre: the userspace plane, still with the kernel's ESP.
    monkeypatch.setattr(node_module, "kernel_gre_unavailable", lambda: "no ip_gre")
    assert decide(auto, log) == (True, False)
    assert logs[-1] == ("dataplane", "userspace data plane with the kernel's ESP (no ip_gre)")
    monkeypatch.setattr(node_module, "kernel_gre_unavailable", lambda: None)
    v6 = parse_config({**node(dataplane="auto", ipv6_address="fd00::11/64"), **psk})
    assert decide(v6, log) == (True, False)
    assert "has ipv6_address, which the kernel plane does not do yet" in logs[-1][1]
    # This project's CI hosts: XFRM but no esp4. kernel-libipsec, userspace.
    monkeypatch.setattr(node_module, "kernel_esp_unavailable", lambda: "no esp4 module")
    assert decide(auto, log) == (False, False)
    assert logs[-2:] == [
        ("ipsec-esp", "ESP by kernel-libipsec in charon (no esp4 module)"),
        ("dataplane", "userspace data plane with kernel-libipsec (no kernel ESP for it)"),
    ]
    # What the config asks for and the host lacks: refused, named.
    kernel = parse_config({**node(dataplane="kernel"), **psk})
    with pytest.raises(ValueError, match="dataplane: kernel with ipsec needs the kernel's ESP"):
        decide(kernel, log)
    esp = {"psk": "0123456789abcdef", "esp": "kernel"}
    forced = parse_config({**node(dataplane="userspace"), "ipsec": esp})
    with pytest.raises(ValueError, match=r"ipsec\.esp: kernel needs the kernel's ESP: no esp4"):
        decide(forced, log)
    # An external charon: libipsec as its operator set it up, but on the
    # kernel plane the kernel's XFRM, as before ipsec.esp existed.
    sock = {"psk": "0123456789abcdef", "charon": "external", "vici_socket": "/run/c.vici"}
    ext_user = parse_config({**node(dataplane="userspace"), "ipsec": sock})
    ext_kernel = parse_config({**node(dataplane="kernel"), "ipsec": sock})
    monkeypatch.setattr(node_module, "kernel_esp_unavailable", lambda: None)
    assert decide(ext_user, log) == (False, False)
    assert decide(ext_kernel, log) == (True, False) and ext_kernel.kernel_esp
    assert ext_kernel.ipsec is not None and ext_kernel.ipsec.mode == "transport"
    assert ext_user.ipsec is not None and ext_user.ipsec.mode == "tunnel"
    # esp: libipsec is not probed; no IPsec: nothing decided, nothing logged.
    monkeypatch.setattr(node_module, "kernel_esp_unavailable", lambda: None)
    esp = {"psk": "0123456789abcdef", "esp": "libipsec"}
    libipsec = parse_config({**node(dataplane="userspace"), "ipsec": esp})
    assert decide(libipsec, log) == (False, False)
    count = len(logs)
    assert decide(parse_config(node(dataplane="auto")), log) == (False, False)
    assert len(logs) == count


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a network namespace)")
def test_dataplane_kernel_without_ip_gre_is_refused_cleanly(tmp_path: Path) -> None:
    # A device of that name is there already (and this host has no ip_gre
    # at all, real-peers.md): the daemon says so as a config error and exits
    # 1, and leaves the device that was there alone.
    from dmvpn.lab import Lab, Topology
    from dmvpn.lab.runner import dmvpn_command

    topo = {"phase": 3, "nodes": {"hubs": [{"name": "hub1"}], "spokes": [{"name": "spoke1"}]}}
    lab = Lab(Topology.from_data(topo), prefix=f"kpr{os.getpid() % 10000}-")
    lab.up()
    try:
        cfg = lab.topology.node_config("spoke1")
        cfg["interfaces"][0]["dataplane"] = "kernel"
        cfg["socket"] = str(tmp_path / "api.sock")
        path = tmp_path / "spoke1.yaml"
        path.write_text(yaml.safe_dump(cfg))
        lab.exec("spoke1", ["ip", "link", "add", "dmvpn0", "type", "bridge"], check=True)
        res = lab.exec(
            "spoke1",
            [*dmvpn_command(), "run", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 1, res.stderr[-2000:]
        errors = [
            json.loads(line)
            for line in res.stderr.splitlines()
            if line.startswith("{") and '"config-error"' in line
        ]
        assert errors and "dataplane kernel" in errors[0]["message"], res.stderr[-2000:]
        assert "Traceback" not in res.stderr
        links = lab.exec("spoke1", ["ip", "-o", "link"], capture_output=True, text=True)
        assert (
            "dmvpn0" in links.stdout
            and "bridge"
            in lab.exec(
                "spoke1", ["ip", "-d", "link", "show", "dmvpn0"], capture_output=True, text=True
            ).stdout
        )
    finally:
        lab.down()
