"""Dual spoke without root: the lab's `site:` key, the VRRPv3 codec and
state machine (daemon/vrrp.py), and routes whose next hops answer echoes."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, ip_address
from typing import Any

import pytest

from dmvpn.cli.show import render_vrrp
from dmvpn.config import NodeConfig, Route
from dmvpn.daemon.static_routes import next_hops
from dmvpn.daemon.vrrp import VrrpGroup, VrrpRole
from dmvpn.lab.topology import Topology, TopologyError
from dmvpn.nhrp.client import NhsState, NhsStatus
from dmvpn.wire import DecodeError
from dmvpn.wire.vrrp import VrrpAdvert, decode_vrrp, virtual_mac

A = IPv4Address
SPOKES = [{"name": "spoke1", "site": "hq"}, {"name": "spoke2", "site": "hq"}, {"name": "spoke3"}]


def topo(**extra: Any) -> Topology:
    return Topology.from_data({"nodes": {"spokes": SPOKES}, **extra})


def test_a_site_shares_one_lan_and_host_and_vrrp_moves_its_gateway() -> None:
    t = topo()
    s1, s2, s3 = (t.plan(f"spoke{n}") for n in (1, 2, 3))
    assert str(s1.lan) == "192.168.1.2/24" and str(s2.lan) == "192.168.1.3/24"
    assert s1.peer == s2.peer == "host1" and s1.site == s2.site == "hq"
    assert str(s3.lan) == "192.168.3.1/24" and s3.site is None
    assert [h.name for h in t.hosts] == ["host1", "host3"]  # one host for the site
    assert t.site_gateway("host1") == t.site_gateway("spoke2") == A("192.168.1.1")
    assert t.site_gateway("spoke3") is None
    v1, v2 = (t.node_config(n)["vrrp"][0] for n in ("spoke1", "spoke2"))
    assert v1["address"] == v2["address"] == "192.168.1.1" and v1["priority"] > v2["priority"]
    assert "vrrp" not in t.node_config("spoke3")
    # The hub: the site's LAN over both spokes, kept by echoes; others as before.
    routes = t.node_config("hub1")["routes"]
    assert {"prefix": "192.168.1.0/24", "via": ["10.0.0.11", "10.0.0.12"]}.items() <= next(
        r for r in routes if r["prefix"] == "192.168.1.0/24"
    ).items()
    assert {"prefix": "192.168.3.0/24", "via": "10.0.0.13"} in routes
    # A site's spokes watch their NHS with echoes (the gateway role follows it).
    assert "nhs_liveness" in t.node_config("spoke1")["interfaces"][0]["nhrp"]
    for name in ("hub1", "spoke1", "spoke2", "spoke3"):
        NodeConfig.model_validate(t.node_config(name))  # what `dmvpn run` reads


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"nodes": {"spokes": [{"name": "s1", "site": "hq"}]}}, "has one spoke"),
        ({"nodes": {"spokes": SPOKES}, "phase": 2}, "phases 1 and 3"),
        ({"nodes": {"spokes": SPOKES}, "ipv6": True}, "IPv4"),
        (
            {"nodes": {"spokes": [SPOKES[0], {**SPOKES[1], "lan": "192.168.9.0/24"}]}},
            "leave lan and host out",
        ),
        ({"nodes": {"spokes": [{**SPOKES[0], "site": "Bad-Name"}]}}, "site"),
    ],
)
def test_bad_sites_are_refused_with_the_reason(data: dict[str, Any], message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        Topology.from_data(data)


def test_vrrp_advert_round_trips_and_bad_ones_are_refused() -> None:
    src = A("192.168.1.2")
    adv = VrrpAdvert(1, 200, 20, (A("192.168.1.1"),))
    data = adv.encode(src)
    assert data[:4] == bytes([0x31, 1, 200, 1]) and len(data) == 12
    assert decode_vrrp(data, src, A("224.0.0.18")) == adv
    with pytest.raises(DecodeError, match="checksum"):
        decode_vrrp(data, A("192.168.1.3"), A("224.0.0.18"))  # the pseudo-header counts
    with pytest.raises(DecodeError, match="VRRPv3"):
        decode_vrrp(b"\x21" + data[1:], src, A("224.0.0.18"))
    with pytest.raises(DecodeError, match="addresses"):
        decode_vrrp(data[:10], src, A("224.0.0.18"))
    assert virtual_mac(1) == "00:00:5e:00:01:01"


def group(priority: int, own: str) -> VrrpGroup:
    return VrrpGroup(1, priority, 0.2, A("192.168.1.1"), A(own))


def test_vrrp_backup_takes_over_when_the_master_goes_silent_or_resigns() -> None:
    g = group(190, "192.168.1.3")
    assert g.start(0.0, eligible=True) == [] and g.role is VrrpRole.BACKUP
    master = VrrpAdvert(1, 200, 20, (A("192.168.1.1"),))
    g.receive(master, A("192.168.1.2"), 1.0)
    assert g.on_timer(1.5) == []  # 3 intervals + skew not over yet
    down = g.deadline()
    assert down is not None and 1.6 < down < 1.7  # 0.6 + (256 - 190) * 0.2 / 256
    assert g.on_timer(down) == [("advert", 190), ("master",)] and g.role is VrrpRole.MASTER
    # The preferred spoke is back: we step down.
    assert g.receive(master, A("192.168.1.2"), 2.0) == [("backup",)]
    # It resigns (priority 0): we take over after the skew only.
    g.receive(VrrpAdvert(1, 0, 20, (A("192.168.1.1"),)), A("192.168.1.2"), 3.0)
    assert g.deadline() == pytest.approx(3.0 + 66 * 0.2 / 256)


def test_vrrp_role_follows_eligibility() -> None:
    g = group(200, "192.168.1.2")
    g.start(0.0, eligible=False)
    assert g.deadline() is None and g.on_timer(10.0) == []  # no NHS up: never master
    g.set_eligible(True, 10.0)
    assert g.on_timer(10.0 + g.master_down()) == [("advert", 200), ("master",)]
    # Every NHS lost: resign at once with priority 0 and give the address up.
    assert g.set_eligible(False, 11.0) == [("advert", 0), ("backup",)]
    assert g.role is VrrpRole.BACKUP and g.deadline() is None
    # A lower priority master does not stop an eligible preferred one.
    g.set_eligible(True, 12.0)
    g.receive(VrrpAdvert(1, 190, 20, (A("192.168.1.1"),)), A("192.168.1.3"), 12.1)
    assert g.on_timer(12.0 + g.master_down())[-1] == ("master",)
    # Equal priority: the higher address wins.
    assert g.receive(VrrpAdvert(1, 200, 20, ()), A("192.168.1.9"), 13.0) == [("backup",)]


def status(addr: str, state: NhsState) -> NhsStatus:
    return NhsStatus(ip_address(addr), A("172.30.0.1"), 1, state, 1, 0, None, 0.0, None, None)


def test_tracked_next_hops_count_only_while_they_answer() -> None:
    r = Route.model_validate(
        {"prefix": "192.168.1.0/24", "via": ["10.0.0.11", "10.0.0.12"], "track": {}}
    )
    assert next_hops(r, []) == ()  # nothing answered yet
    assert next_hops(r, [], {A("10.0.0.12")}) == (A("10.0.0.12"),)
    assert next_hops(r, [], {A("10.0.0.11"), A("10.0.0.12")}) == (A("10.0.0.11"), A("10.0.0.12"))
    # An NHS among them still follows its registration.
    r2 = Route.model_validate({"prefix": "192.168.0.0/16", "via": ["10.0.0.1"], "track": {}})
    assert next_hops(r2, [status("10.0.0.1", NhsState.UP)]) == (A("10.0.0.1"),)
    with pytest.raises(ValueError, match="list of next hops"):
        Route.model_validate({"prefix": "192.168.1.0/24", "via": "10.0.0.11", "track": {}})
    assert r.prefix == IPv4Network("192.168.1.0/24")


def test_ospf_site_spokes_both_advertise_the_lan_and_keep_the_gateway_quiet() -> None:
    from dmvpn.lab.routingconf import daemon_configs

    t = topo(routing="ospf")
    assert t.node_config("hub1")["routes"] == []  # OSPF brings the site's routes
    for name in ("spoke1", "spoke2"):
        conf = daemon_configs(t, name, "/tmp")["ospfd"]
        assert " network 192.168.1.0/24 area 0" in conf and "passive-interface vrrp1" in conf
    assert "vrrp1" not in daemon_configs(t, "spoke3", "/tmp")["ospfd"]
    assert t.node_config("spoke1")["vrrp"][0]["address"] == "192.168.1.1"


def test_tracked_next_hops_must_be_on_a_tunnel_network() -> None:
    from dmvpn.config import ConfigError, parse_config

    hub = topo().node_config("hub1")
    hub["routes"].append({"prefix": "172.16.0.0/12", "via": ["192.0.2.9"], "track": {}})
    with pytest.raises(ConfigError, match=r"routes\.2\.via: 192\.0\.2\.9 is on no interface"):
        parse_config(hub)


def test_show_vrrp_renders_each_group_and_none() -> None:
    group = {"interface": "lan0", "vrid": 1, "priority": 190, "interval": 0.2}
    group |= {"role": "backup", "eligible": False, "address": "192.168.1.1"}
    lines = render_vrrp({"node": "spoke2", "groups": [group]}).splitlines()
    assert lines[0].split() == [
        "Interface",
        "Grp",
        "Pri",
        "Time",
        "State",
        "Eligible",
        "Group",
        "addr",
    ]
    assert lines[1].split() == ["lan0", "1", "190", "0.2s", "Backup", "no", "192.168.1.1"]
    assert "no VRRP groups" in render_vrrp({"node": "hub1", "groups": []})
