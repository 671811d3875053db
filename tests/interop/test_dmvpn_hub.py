"""Issue 5 with a dmvpn hub: FRR 8.4 nhrpd spokes (User-Mode Linux, kernel
mGRE) and a dmvpn spoke in one phase 3 cloud (cases 1, 3, 5, 6).

    hub1    dmvpn            spoke1  frr            spoke3  dmvpn
    spoke2  frr              spoke4  frr, unique registration (case 5)
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from .mixed import Cloud, mixed_cloud

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, guest taps)")

HOLDTIME = 30
TOPOLOGY = {
    "phase": 3,
    "holdtime": HOLDTIME,
    "nodes": {
        "hubs": [{"name": "hub1"}],
        "spokes": [
            {"name": "spoke1", "kind": "frr"},
            {"name": "spoke2", "kind": "frr"},
            {"name": "spoke3"},
            {"name": "spoke4", "kind": "frr", "registration_no_unique": False},
        ],
    },
}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    tmp = tmp_path_factory.mktemp("dmvpn-hub")
    with mixed_cloud(TOPOLOGY, f"dih{os.getpid() % 10000}-", tmp) as c:
        yield c


def test_nhrpd_spokes_register_with_the_dmvpn_hub(cloud: Cloud) -> None:
    # nhrpd's side: its NHS entry (8.4's `show ip nhrp nhs` has no state column).
    for spoke in ("spoke1", "spoke2", "spoke4"):
        assert cloud.nhs_up(spoke) == {"10.0.0.1"}
        assert "10.0.0.1" in cloud.vtysh(spoke, "show ip nhrp nhs")
    # Ours: dynamic entries at their NBMA addresses, unique only for spoke4.
    cache = cloud.cache("hub1")
    for n, unique in ((11, False), (12, False), (13, False), (14, True)):
        entry = cache[f"10.0.0.{n}/32"]
        assert entry["type"] == "dynamic" and entry["nbma"] == f"172.30.0.{n}"
        assert ("unique" in entry["flags"]) == unique, entry
    # `dmvpn lab show` speaks vtysh on an frr node.
    assert " nhs " in cloud.frr.show("spoke1", ["nhrp"])
    assert "172.30.0.1 " in cloud.frr.show("spoke1", ["dmvpn"])


def test_hosts_behind_nhrpd_spokes_reach_each_other_over_a_shortcut(cloud: Cloud) -> None:
    host2 = cloud.lan_ip("host2")
    assert cloud.tunnel_nbma("spoke1", host2) == "172.30.0.1"  # the summary, via the hub
    assert cloud.ping("host1", host2)
    # Our hub redirects (Traffic Indication); nhrpd resolves through us; the
    # owner's answer comes back via the hub, which passes it on.
    cloud.wait(
        "nhrpd spoke1's shortcut to host2's LAN",
        lambda: cloud.nhrpd_shortcuts("spoke1").get("192.168.2.0/24") == "10.0.0.12",
    )
    assert cloud.tunnel_nbma("spoke1", host2) == "172.30.0.12"  # straight to spoke2
    assert cloud.nhrpd_shortcuts("spoke2").get("192.168.1.0/24") == "10.0.0.11"
    assert cloud.ping("host1", host2)
    forwarded = cloud.runner.events("hub1", "resolution-reply-forwarded")
    assert "10.0.0.11" in {e["requester"] for e in forwarded}


@pytest.mark.parametrize(("src", "dst"), [("spoke3", "spoke1"), ("spoke2", "spoke3")])
def test_dmvpn_and_nhrpd_spokes_shortcut_both_ways(cloud: Cloud, src: str, dst: str) -> None:
    # Case 3 under our hub: started from our spoke, then from an nhrpd spoke.
    peer = {"spoke1": "host1", "spoke2": "host2", "spoke3": "host3"}
    src_lan = cloud.lan_ip(peer[src]).rsplit(".", 1)[0] + ".0/24"
    dst_lan = cloud.lan_ip(peer[dst]).rsplit(".", 1)[0] + ".0/24"
    assert cloud.ping(peer[src], cloud.lan_ip(peer[dst]))

    def shortcut(node: str, lan: str, via: str) -> bool:
        if cloud.kind(node) == "frr":
            return cloud.nhrpd_shortcuts(node).get(lan) == via
        return cloud.shortcut_route(node, lan) == via

    cloud.wait(f"{src}'s shortcut to {dst}", lambda: shortcut(src, dst_lan, cloud.tunnel(dst)))
    cloud.wait(f"{dst}'s shortcut back", lambda: shortcut(dst, src_lan, cloud.tunnel(src)))
    assert cloud.tunnel_nbma(src, cloud.lan_ip(peer[dst])) == cloud.nbma(dst)
    assert cloud.tunnel_nbma(dst, cloud.lan_ip(peer[src])) == cloud.nbma(src)
    assert cloud.ping(peer[src], cloud.lan_ip(peer[dst]))


def _renumber(cloud: Cloud, node: str, old: str, new: str) -> None:
    """The spoke comes back at another NBMA address (a new DHCP lease)."""
    cloud.frr.stop_nhrpd(node)
    # Delete first: deleting a primary address takes its secondaries along.
    res = cloud.frr.run(node, f"ip addr del {old}/24 dev nbma0 && ip addr add {new}/24 dev nbma0")
    assert res.returncode == 0, res.output
    cloud.frr.start_nhrpd(node)


def test_unique_registration_from_a_new_nbma_is_refused_with_code_14(cloud: Cloud) -> None:
    # RFC 2332 5.2.4 / code 14: spoke4 (nhrpd, unique) restarts with another
    # NBMA address while its binding stands.
    since = time.time()
    _renumber(cloud, "spoke4", "172.30.0.14", "172.30.0.24")
    refused = cloud.wait(
        "our hub to refuse spoke4's new NBMA",
        lambda: [
            e
            for e in cloud.runner.events("hub1", "registration-refused")
            if e["ts"] >= since and e.get("nbma") == "172.30.0.24"
        ],
        timeout=HOLDTIME,
    )
    assert refused < HOLDTIME
    (event, *_) = [
        e for e in cloud.runner.events("hub1", "registration-refused") if e["ts"] >= since
    ]
    assert event["code"] == 14 and event["protocol"] == "10.0.0.14"
    assert cloud.cache("hub1")["10.0.0.14/32"]["nbma"] == "172.30.0.14"  # the binding stands
    assert "NHS: CIE registration: 10.0.0.14: 14" in cloud.nhrpd_log("spoke4")  # nhrpd got it
    # Once the old binding has run out, nhrpd's next retry (it backs off
    # 1, 2, 4... s) is accepted from the new address.
    cloud.wait(
        "spoke4 to be registered from its new NBMA",
        lambda: cloud.cache("hub1").get("10.0.0.14/32", {}).get("nbma") == "172.30.0.24",
        timeout=HOLDTIME + 70,  # nhrpd backs off 1, 2, 4 ... 32 s
    )
    expired = [
        e
        for e in cloud.runner.events("hub1", "registration-expired")
        if e["protocol"] == "10.0.0.14"
    ]
    accepted = [
        e
        for e in cloud.runner.events("hub1", "registered")
        if e["protocol"] == "10.0.0.14" and e["nbma"] == "172.30.0.24"
    ]
    assert len(expired) == 1 and len(accepted) == 1
    assert expired[0]["ts"] <= accepted[0]["ts"] and accepted[0]["unique"] is True


def test_no_unique_registration_moves_to_the_new_nbma(cloud: Cloud) -> None:
    since = time.time()
    _renumber(cloud, "spoke2", "172.30.0.12", "172.30.0.22")
    cloud.wait(
        "our hub to move spoke2 to its new NBMA",
        lambda: cloud.cache("hub1")["10.0.0.12/32"]["nbma"] == "172.30.0.22",
        timeout=HOLDTIME,
    )
    moved = [e for e in cloud.runner.events("hub1", "registration-replaced") if e["ts"] >= since]
    assert [e["protocol"] for e in moved] == ["10.0.0.12"]
    assert not [
        e
        for e in cloud.runner.events("hub1", "registration-refused")
        if e["ts"] >= since and e["protocol"] == "10.0.0.12"
    ]


def test_a_vanished_nhrpd_spoke_expires_on_time(cloud: Cloud) -> None:
    # nhrpd killed without a word: its registration runs out after the
    # holding time it asked for (HOLDTIME), counted from its last refresh
    # (sent every HOLDTIME/3).
    cloud.frr.run("spoke1", "kill -9 $(cat /run/frr/nhrpd.pid)")
    killed = time.time()
    took = cloud.wait(
        "spoke1's registration to expire on our hub",
        lambda: "10.0.0.11/32" not in cloud.cache("hub1"),
        timeout=HOLDTIME + 10,
    )
    (event,) = [
        e
        for e in cloud.runner.events("hub1", "registration-expired")
        if e["protocol"] == "10.0.0.11"
    ]
    assert HOLDTIME * 2 / 3 - 2 <= event["ts"] - killed <= HOLDTIME + 1, took
    assert "10.0.0.12/32" in cloud.cache("hub1")  # the others stay


def test_every_nhrp_packet_on_the_underlay_decodes(cloud: Cloud) -> None:
    senders = cloud.check_capture()
    # From both implementations: our hub and spoke, and nhrpd's spokes.
    assert {"registration_reply", "traffic_indication", "resolution_request"} <= senders[
        "172.30.0.1"
    ]
    for nhrpd in ("172.30.0.11", "172.30.0.12"):
        assert {"registration_request", "resolution_request", "resolution_reply"} <= senders[nhrpd]
    assert "registration_request" in senders["172.30.0.13"]
