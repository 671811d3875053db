"""Issue 5 with an FRR 8.4 nhrpd hub (User-Mode Linux, kernel mGRE, redirect
through NFLOG): dmvpn spokes and an nhrpd spoke (cases 2, 3, 5, 6).

    hub1    frr              spoke1  dmvpn          spoke3  frr
    spoke2  dmvpn            spoke4  dmvpn, unique registration (case 5)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator

import pytest
import yaml

from .mixed import DMVPN, Cloud, mixed_cloud

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, guest taps)")

HOLDTIME = 30
TOPOLOGY = {
    "phase": 3,
    "holdtime": HOLDTIME,
    "nodes": {
        "hubs": [{"name": "hub1", "kind": "frr"}],
        "spokes": [
            {"name": "spoke1"},
            {"name": "spoke2"},
            {"name": "spoke3", "kind": "frr"},
            {"name": "spoke4", "registration_no_unique": False},
        ],
    },
}
PEER = {"spoke1": "host1", "spoke2": "host2", "spoke3": "host3"}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    tmp = tmp_path_factory.mktemp("nhrpd-hub")
    with mixed_cloud(TOPOLOGY, f"nih{os.getpid() % 10000}-", tmp) as c:
        yield c


def _lan(cloud: Cloud, spoke: str) -> str:
    return cloud.lan_ip(PEER[spoke]).rsplit(".", 1)[0] + ".0/24"


def test_dmvpn_spokes_register_with_the_nhrpd_hub(cloud: Cloud) -> None:
    for spoke in ("spoke1", "spoke2", "spoke4"):
        (up,) = cloud.runner.events(spoke, "nhs-up")
        assert up["nhs"] == "10.0.0.1" and up["holding_time"] == HOLDTIME
    expected = {f"10.0.0.{n}": ("dynamic", f"172.30.0.{n}") for n in (11, 12, 13, 14)}
    cloud.wait(
        "nhrpd's hub to list every spoke",
        lambda: expected.items() <= cloud.nhrpd_cache("hub1").items(),
    )
    assert cloud.nhs_up("spoke3") == {"10.0.0.1"}


def test_dmvpn_spokes_shortcut_through_the_nhrpd_hubs_redirect(cloud: Cloud) -> None:
    # Case 2: nhrpd's hub learns of the hairpin through NFLOG and sends a
    # Traffic Indication; our spoke resolves through it; our other spoke answers.
    host2 = cloud.lan_ip("host2")
    assert cloud.tunnel_nbma("spoke1", host2) == "172.30.0.1"
    assert cloud.ping("host1", host2)
    cloud.wait(
        "spoke1's shortcut to host2's LAN",
        lambda: cloud.shortcut_route("spoke1", "192.168.2.0/24") == "10.0.0.12",
    )
    assert cloud.tunnel_nbma("spoke1", host2) == "172.30.0.12"
    (sent,) = cloud.runner.events("spoke1", "resolution-sent")
    assert sent["target"] == host2 and sent["reason"] == "redirect from 10.0.0.1"
    assert cloud.ping("host1", host2)


@pytest.mark.parametrize(("src", "dst"), [("spoke1", "spoke3"), ("spoke3", "spoke2")])
def test_dmvpn_and_nhrpd_spokes_shortcut_both_ways(cloud: Cloud, src: str, dst: str) -> None:
    # Case 3 under nhrpd's hub: started from our spoke, then from nhrpd's.
    assert cloud.ping(PEER[src], cloud.lan_ip(PEER[dst]))

    def shortcut(node: str, lan: str, via: str) -> bool:
        if cloud.kind(node) == "frr":
            return cloud.nhrpd_shortcuts(node).get(lan) == via
        return cloud.shortcut_route(node, lan) == via

    cloud.wait(
        f"{src}'s shortcut to {dst}", lambda: shortcut(src, _lan(cloud, dst), cloud.tunnel(dst))
    )
    cloud.wait(f"{dst}'s shortcut back", lambda: shortcut(dst, _lan(cloud, src), cloud.tunnel(src)))
    assert cloud.tunnel_nbma(src, cloud.lan_ip(PEER[dst])) == cloud.nbma(dst)
    assert cloud.tunnel_nbma(dst, cloud.lan_ip(PEER[src])) == cloud.nbma(src)
    assert cloud.ping(PEER[src], cloud.lan_ip(PEER[dst]))


def test_nhrpd_hub_lets_a_unique_registration_move_without_code_14(cloud: Cloud) -> None:
    # Our spoke4 registers uniquely, vanishes (SIGKILL: no purge) and comes
    # back from another NBMA address. RFC 2332 5.2.4 says code 14 until the
    # old binding expires; nhrpd 8.4 replaces the binding at once (it never
    # sends code 14). We cope: the new registration is simply up.
    pid = cloud.runner.running()["spoke4"]
    os.kill(pid, 9)
    for verb, addr in (("del", "172.30.0.14/24"), ("add", "172.30.0.24/24")):
        cloud.lab.exec("spoke4", ["ip", "addr", verb, addr, "dev", "nbma0"], check=True)
    config = cloud.runner.node_config("spoke4")
    config["interfaces"][0]["tunnel"]["source"] = "172.30.0.24"
    path = cloud.lab.run_dir / "spoke4-renumbered.yaml"
    path.write_text(yaml.safe_dump(config))
    log = cloud.lab.run_dir / "spoke4-renumbered.log"
    with log.open("wb") as out:
        proc = cloud.lab.popen("spoke4", [DMVPN, "run", "-c", str(path)], stdout=out, stderr=out)
    try:
        moved = ("dynamic", "172.30.0.24")
        cloud.wait(
            "nhrpd to bind spoke4 at its new NBMA",
            lambda: cloud.nhrpd_cache("hub1").get("10.0.0.14") == moved,
        )
        assert '"kind": "nhs-up"' in log.read_text()
        assert '"registration-refused"' not in log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_vanished_dmvpn_spoke_expires_from_nhrpd_on_time(cloud: Cloud) -> None:
    pid = cloud.runner.running()["spoke2"]
    os.kill(pid, 9)  # no purge, no deregistration: just gone
    killed = time.monotonic()
    cloud.wait(
        "nhrpd's hub to drop spoke2",
        lambda: "10.0.0.12" not in cloud.nhrpd_cache("hub1"),
        timeout=HOLDTIME + 10,
    )
    gone = time.monotonic() - killed
    # Our last refresh was at most HOLDTIME/3 before the kill; each check
    # costs a vtysh round trip (~1-2 s).
    assert HOLDTIME * 2 / 3 - 2 <= gone <= HOLDTIME + 4, gone
    assert "10.0.0.11" in cloud.nhrpd_cache("hub1")


# Sent from spoke2's namespace (its daemon gone) with a raw GRE socket: two
# Resolution Requests nhrpd's hub should refuse, and what comes back.
_PROBE = r"""
import json, select, socket, sys, time
from ipaddress import IPv4Address as A
from dmvpn.wire import (Cie, EndExtension, ForwardTransitNhsExtension, GrePacket, NhrpPacket,
                        PacketType, UnknownExtension, decode_gre, decode_nhrp)
def request(rid, *exts):
    return NhrpPacket(type=PacketType.RESOLUTION_REQUEST, src_nbma=A("172.30.0.12"),
                      src_proto=A("10.0.0.12"), dst_proto=A("192.168.1.10"), request_id=rid,
                      cies=(Cie(prefix_length=32),), extensions=(*exts, EndExtension()))
unknown = UnknownExtension(type=0x1234, data=b"probe", compulsory=True)
looped = ForwardTransitNhsExtension(cies=(Cie(protocol=A("10.0.0.1"), nbma=A("172.30.0.1")),))
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
answers = {}
for rid, ext in ((101, unknown), (102, looped)):
    gre = GrePacket(protocol=0x2001, payload=request(rid, ext).encode(), key=42)
    sock.sendto(gre.encode(), ("172.30.0.1", 0))
    got, end = [], time.monotonic() + 3
    while (left := end - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            continue
        data, (src, _) = sock.recvfrom(65535)
        pkt = decode_nhrp(decode_gre(data[(data[0] & 15) * 4:]).payload)
        got.append({"from": src, "type": pkt.type.name, "error_code": pkt.error_code})
    answers[rid] = got
print(json.dumps(answers))
"""


def test_nhrpd_drops_an_unknown_compulsory_extension_and_misses_a_loop(cloud: Cloud) -> None:
    # RFC 2332 5.3: an unrecognized compulsory extension gets Error Indication
    # code 1; 5.3.2: a request whose Forward Transit NHS record already holds
    # this NHS is a loop (code 3). dmvpn does both (tests/nhrp). nhrpd 8.4,
    # met on the wire: drops the first silently, and forwards the second to
    # the owner (our spoke1), who answers it.
    res = cloud.lab.exec(
        "spoke2", [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 0, res.stderr
    answers = json.loads(res.stdout)
    assert answers["101"] == []
    assert answers["102"] == [{"from": "172.30.0.11", "type": "RESOLUTION_REPLY", "error_code": 0}]


def test_nhrpd_ignores_our_spokes_purge_on_sigterm(cloud: Cloud) -> None:
    # SIGTERM: our spoke purges its registration (RFC 2332 5.2.5) before it
    # goes. nhrpd receives the Purge Request but never acts on one (a
    # deviation, docs/INTEROP.md): the binding stays until it expires, as
    # for a spoke that vanished.
    assert "10.0.0.11" in cloud.nhrpd_cache("hub1")
    os.kill(cloud.runner.running()["spoke1"], signal.SIGTERM)
    cloud.wait("our spoke to purge", lambda: cloud.runner.events("spoke1", "deregistered"))
    seen = "Recv Purge-Request(5) 10.0.0.11 -> 10.0.0.1"
    cloud.wait("nhrpd to receive the purge", lambda: seen in cloud.nhrpd_log("hub1"))
    time.sleep(2)
    assert cloud.nhrpd_cache("hub1").get("10.0.0.11") == ("dynamic", "172.30.0.11")


def test_every_nhrp_packet_on_the_underlay_decodes(cloud: Cloud) -> None:
    senders = cloud.check_capture()
    assert {"registration_reply", "traffic_indication", "resolution_request"} <= senders[
        "172.30.0.1"
    ]  # nhrpd's hub: answers, redirects, forwards
    for ours in ("172.30.0.11", "172.30.0.12"):
        assert {"registration_request", "resolution_request", "resolution_reply"} <= senders[ours]
    assert {"registration_request", "resolution_request"} <= senders["172.30.0.13"]
