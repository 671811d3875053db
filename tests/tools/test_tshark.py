"""tshark, a second opinion: our encoder's packets are not malformed to it.

The test writes a pcap of hypothesis-drawn packets of every type, extension
and address family (realistic ones: addresses of the right family, a real IP
packet in a Traffic Indication, a real NHRP packet in an Error Indication),
runs tshark over it and requires every frame to be NHRP with a good checksum
and no error or warning expert info from NHRP or GRE.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from dmvpn.decode.examples import conversation
from dmvpn.decode.pcapfile import write_pcap
from dmvpn.wire import (
    AddressFamily,
    EthernetFrame,
    EtherType,
    GrePacket,
    IPv4Header,
    IPv6Header,
    NhrpPacket,
    PacketType,
)
from dmvpn.wire.ip import PROTO_GRE

from ..strategies import nhrp_packets

TSHARK = shutil.which("tshark")
pytestmark = pytest.mark.skipif(
    TSHARK is None, reason="tshark is not installed (the README test command installs it)"
)

_PACKETS: list[NhrpPacket] = []


def _frame(pkt: NhrpPacket, key: int | None) -> bytes:
    gre = GrePacket(0x2001, pkt.encode(), key=key).encode()
    if pkt.afn == AddressFamily.IPV6:
        ip = IPv6Header(
            src=IPv6Address("2001:db8::1"), dst=IPv6Address("2001:db8::2"), next_header=PROTO_GRE
        ).encode(gre)
        etype = EtherType.IPV6
    else:
        ip = IPv4Header(
            src=IPv4Address("192.0.2.1"), dst=IPv4Address("192.0.2.2"), protocol=PROTO_GRE
        ).encode(gre)
        etype = EtherType.IPV4
    return EthernetFrame(
        b"\x02\x00\x00\x00\x00\x02", b"\x02\x00\x00\x00\x00\x01", etype, ip
    ).encode()


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(nhrp_packets(realistic=True))
def _collect(pkt: NhrpPacket) -> None:
    _PACKETS.append(pkt)


def _tshark_json(pcap: Path) -> list[dict]:  # type: ignore[type-arg]
    # Cisco's authentication extension has no source address field; tell
    # Wireshark so (its default expects RFC 2332's layout with one).
    args = ["-T", "json", "-V", "-o", "nhrp.auth_ext_has_addr:FALSE"]
    out = subprocess.run(
        [TSHARK or "tshark", "-r", str(pcap), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _experts(tree: object, path: str = "") -> list[tuple[str, str]]:
    """(severity, message) of every expert item anywhere in a packet tree."""
    found: list[tuple[str, str]] = []
    if isinstance(tree, dict):
        if "_ws.expert" in tree:
            exp = tree["_ws.expert"]
            for e in exp if isinstance(exp, list) else [exp]:
                found.append((e.get("_ws.expert.severity", "?"), e.get("_ws.expert.message", "?")))
        for k, v in tree.items():
            if k == "_ws.malformed" or k.startswith("_ws.malformed"):
                found.append(("error", "malformed"))
            found += _experts(v, path + "/" + k)
    elif isinstance(tree, list):
        for v in tree:
            found += _experts(v, path)
    return found


# Wireshark expert severities: note 0x400000, warn 0x600000, error 0x800000.
_WARN = 0x600000


def _serious(severity: str, message: str) -> bool:
    text = message.lower()
    return (
        not severity.isdigit()
        or int(severity) >= _WARN
        or "malformed" in text
        or "checksum" in text
    )


def test_tshark_accepts_generated_packets(tmp_path: Path) -> None:
    _PACKETS.clear()
    _collect()
    types = {p.type for p in _PACKETS}
    assert types == set(PacketType), f"strategy did not cover {set(PacketType) - types}"
    assert {p.afn for p in _PACKETS} == {1, 2}
    pcap = tmp_path / "generated.pcap"
    write_pcap(pcap, 1, ((i, _frame(p, i if i % 2 else None)) for i, p in enumerate(_PACKETS)))
    decoded = _tshark_json(pcap)
    assert len(decoded) == len(_PACKETS)
    problems = []
    for i, frame in enumerate(decoded):
        layers = frame["_source"]["layers"]
        if "nhrp" not in layers:
            problems.append((i, "no NHRP layer"))
            continue
        text = json.dumps(layers["nhrp"])
        if "Checksum Status: Good" not in text and '"nhrp.hdr.chksum.status": "1"' not in text:
            problems.append((i, "checksum not good"))
        problems += [(i, f"{sev}: {msg}") for sev, msg in _experts(layers) if _serious(sev, msg)]
    detail = "\n".join(f"#{i} {_PACKETS[i].type.name}: {p}" for i, p in problems[:20])
    assert not problems, f"{len(problems)} problems:\n{detail}"


def test_tshark_accepts_example_capture(tmp_path: Path) -> None:
    pcap = tmp_path / "example.pcap"
    steps = conversation()
    write_pcap(pcap, 1, ((i, f) for i, (_, f) in enumerate(steps)))
    decoded = _tshark_json(pcap)
    assert len(decoded) == len(steps)
    nhrp = [f for f in decoded if "nhrp" in f["_source"]["layers"]]
    assert len(nhrp) == 15
    for frame in decoded:
        assert [e for e in _experts(frame["_source"]["layers"]) if _serious(*e)] == []


def test_checker_sees_a_bad_checksum(tmp_path: Path) -> None:
    """The expert check above is not blind: a flipped NHRP byte is reported."""
    _, frame = conversation()[0]
    bad = bytearray(frame)
    bad[-3] ^= 0xFF  # inside the NHRP packet (last extension), checksum now wrong
    pcap = tmp_path / "bad.pcap"
    write_pcap(pcap, 1, [(0, bytes(bad))])
    (decoded,) = _tshark_json(pcap)
    assert any(_serious(*e) for e in _experts(decoded["_source"]["layers"]))


def test_tshark_reads_the_nhrp_group_as_cisco_vendor_private(tmp_path: Path) -> None:
    """The NHRP group of a Registration Request (wire/nhrp_group.py) is, to
    Wireshark's dissector, a Vendor Private Extension from Cisco whose data
    is the group name, and nothing in it is malformed."""
    from dmvpn.nhrp import Engine, EngineConfig, NhsConfig, SendPacket

    spoke = Engine(
        EngineConfig(
            protocol_address=IPv4Address("10.0.0.11"),
            nbma_address=IPv4Address("192.0.2.11"),
            nhs=(NhsConfig(IPv4Address("10.0.0.1"), IPv4Address("192.0.2.1")),),
            group="branch-gold",
        )
    )
    spoke.start(0.0)
    (reg,) = [o.packet for o in spoke.pop_outputs() if isinstance(o, SendPacket)]
    pcap = tmp_path / "group.pcap"
    write_pcap(pcap, 1, [(0, _frame(reg, 7))])
    (frame,) = _tshark_json(pcap)
    layers = frame["_source"]["layers"]
    assert [e for e in _experts(layers) if _serious(*e)] == []
    text = json.dumps(layers["nhrp"])
    assert "Vendor-Private Extension" in text or "Vendor Private Extension" in text
    assert "Vendor ID=Cisco" in text
    assert b"branch-gold".hex() in text.replace(":", "")


def test_vrrp_adverts_are_good_vrrpv3_to_tshark(tmp_path: Path) -> None:
    # The dual spoke's gateway (daemon/vrrp.py): tshark's VRRP dissector
    # must read our advertisements as VRRPv3 with a correct checksum (over
    # the IPv4 pseudo-header), so that a real VRRP router would take them.
    from dmvpn.wire.vrrp import VRRP_GROUP, VRRP_PROTOCOL, VrrpAdvert

    assert TSHARK is not None
    adverts = [
        (IPv4Address("192.168.1.2"), VrrpAdvert(1, 200, 20, (IPv4Address("192.168.1.1"),))),
        (IPv4Address("10.9.8.3"), VrrpAdvert(255, 0, 0xFFF, (IPv4Address("10.9.8.1"),) * 3)),
    ]
    frames = [
        (
            0.0,
            IPv4Header(src=src, dst=VRRP_GROUP, protocol=VRRP_PROTOCOL, ttl=255).encode(
                adv.encode(src)
            ),
        )
        for src, adv in adverts
    ]
    pcap = tmp_path / "vrrp.pcap"
    write_pcap(pcap, 101, frames)  # LINKTYPE_RAW: IPv4 packets
    fields = ["vrrp.version", "vrrp.virt_rtr_id", "vrrp.prio", "vrrp.checksum.status"]
    argv = [TSHARK, "-r", str(pcap), "-T", "fields", *(a for f in fields for a in ("-e", f))]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    assert rows == [["3", "1", "200", "1"], ["3", "255", "0", "1"]]  # status 1: good
