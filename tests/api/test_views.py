"""The management API's views and metrics, built from engines driven by the
simulator (real NHRP between engines, virtual time): no sockets, no root."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_network
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from dmvpn.api.views import (
    PACKET_TYPES,
    Iface,
    clear_nhrp,
    dmvpn_view,
    format_duration,
    metric_families,
    nhrp_view,
    nhs_view,
    shortcut_view,
    traffic_view,
)
from dmvpn.dataplane.forwarding import (
    MAX_PEER_COUNTERS,
    FamilyDispatch,
    Forwarder,
    PeerCounters,
    nbma_mac,
)
from dmvpn.nhrp import (
    BindingRemoved,
    Engine,
    EngineConfig,
    EntryType,
    NhsConfig,
    SendPacket,
    ShortcutRemoved,
)
from dmvpn.nhrp.routing import StaticRouting
from dmvpn.nhrp.sim import SimNetwork, build_cloud, spoke_lan, spoke_nbma, spoke_tunnel
from dmvpn.wire import GrePacket, IPv4Header, IPv6Header

A, B = IPv4Address, IPv6Address


def _host(i: int) -> IPv4Address:
    return spoke_lan(i).network_address + 10


def _cloud(phase: int = 3, **kw: object) -> SimNetwork:
    net = build_cloud(phase=phase, **kw)  # type: ignore[arg-type]
    net.start()
    net.run_until(5.0)
    return net


def _shortcut(net: SimNetwork) -> None:
    """spoke1 -> host2: redirect, resolution, shortcut; then use it."""
    net.send_data("spoke1", _host(1))
    net.run_until(net.now + 0.5)
    assert net.send_data("spoke1", _host(1)).path == ("spoke1", "spoke2")
    net.run_until(net.now + 2.0)


def _iface(net: SimNetwork, node: str) -> list[Iface]:
    return [Iface("dmvpn0", net.nodes[node].engine)]


def test_format_duration_is_ciscos() -> None:
    assert format_duration(None) == "never"
    assert format_duration(-3) == "00:00:00"
    assert format_duration(62.9) == "00:01:02"
    assert format_duration(86399) == "23:59:59"
    assert format_duration(86400 + 2 * 3600 + 59) == "1d02h"
    assert format_duration(16 * 86400) == "2w2d"


def test_show_dmvpn_on_a_phase3_spoke_after_a_shortcut() -> None:
    net = _cloud(spokes=2)
    _shortcut(net)
    view = dmvpn_view("spoke1", _iface(net, "spoke1"), net.now)
    (itf,) = view["interfaces"]
    assert itf["type"] == "spoke" and itf["tunnel_address"] == str(spoke_tunnel(0))
    assert itf["nbma_address"] == str(spoke_nbma(0)) and itf["peer_count"] == 2
    hub, peer = itf["peers"]
    # The NHS: configured (S), up since its registration; our own address is not a peer.
    assert hub["nbma"] == "192.0.2.1" and hub["entry_count"] == 1
    (nhs,) = hub["entries"]
    assert (nhs["tunnel_address"], nhs["state"], nhs["attrb"]) == ("10.0.0.1", "UP", "S")
    assert nhs["updn_seconds"] == pytest.approx(net.now, abs=0.1)
    # spoke2: its tunnel address bound for the shortcut (DT1), then the
    # shortcut route to its LAN via that address (DT2), Cisco's phase 3 shape.
    assert peer["nbma"] == str(spoke_nbma(1)) and peer["entry_count"] == 2
    first, route = peer["entries"]
    assert (first["target"], first["tunnel_address"], first["attrb"]) == (
        f"{spoke_tunnel(1)}/32",
        str(spoke_tunnel(1)),
        "DT1",
    )
    assert (route["target"], route["tunnel_address"], route["attributes"]) == (
        str(spoke_lan(1)),
        str(spoke_tunnel(1)),
        ["D", "T2"],
    )
    assert route["state"] == "UP" and 1.0 < route["updn_seconds"] < 3.0
    assert route["updn"] == "00:00:0" + str(int(route["updn_seconds"]))


def test_show_dmvpn_on_a_hub_marks_nat_and_phase2_bindings_have_no_t() -> None:
    net = _cloud(phase=2, spokes=2, nat_spokes=frozenset({0}))
    (itf,) = dmvpn_view("hub1", _iface(net, "hub1"), net.now)["interfaces"]
    assert itf["type"] == "hub"
    rows = {p["nbma"]: p["entries"][0] for p in itf["peers"]}
    assert rows[str(spoke_nbma(0))]["attrb"] == "DN"  # registered from behind NAT
    assert rows[str(spoke_nbma(0))]["claimed_nbma"] == "172.16.0.1"
    assert rows[str(spoke_nbma(1))]["attrb"] == "D"
    # Phase 2: spoke2 resolves spoke1's tunnel address itself: a plain binding.
    net.send_data("spoke2", _host(0))
    net.run_until(net.now + 1.0)
    (itf,) = dmvpn_view("spoke2", _iface(net, "spoke2"), net.now)["interfaces"]
    attrs = {e["target"]: e["attrb"] for p in itf["peers"] for e in p["entries"]}
    assert attrs[f"{spoke_tunnel(0)}/32"] == "D"  # no T1: no shortcut uses it


def test_incomplete_entries_are_peers_without_nbma() -> None:
    net = _cloud(spokes=2)
    engine = net.nodes["spoke1"].engine
    engine.next_hop_unbound(A("10.0.1.99"), net.now)  # nobody answers yet
    (itf,) = dmvpn_view("spoke1", _iface(net, "spoke1"), net.now)["interfaces"]
    last = itf["peers"][-1]
    assert last["nbma"] is None
    assert last["entries"][0]["state"] == "NHRP" and last["entries"][0]["attrb"] == "I"
    (entry,) = [
        e
        for e in nhrp_view("n", _iface(net, "spoke1"), net.now)["entries"]
        if e["type"] == "incomplete"
    ]
    assert entry["protocol"] == "10.0.1.99/32" and entry["nbma"] is None
    assert entry["expires_text"] == "00:03:00"


def test_show_nhrp_entries_carry_cisco_flags_and_times() -> None:
    net = _cloud(spokes=2)
    _shortcut(net)
    hub = {e["protocol"]: e for e in nhrp_view("hub1", _iface(net, "hub1"), net.now)["entries"]}
    spoke2 = hub[f"{spoke_tunnel(1)}/32"]
    assert spoke2["type"] == "dynamic" and spoke2["interface"] == "dmvpn0"
    assert spoke2["cisco_flags"][:2] == ["unique", "registered"] and "nhop" in spoke2["cisco_flags"]
    assert spoke2["nbma"] == str(spoke_nbma(1)) and spoke2["holding_time"] == 7200
    assert spoke2["expires_text"] == format_duration(spoke2["expires_in"])
    assert hub["10.0.0.1/32"]["type"] == "local" and hub["10.0.0.1/32"]["expires_in"] is None
    entries = nhrp_view("spoke1", _iface(net, "spoke1"), net.now)["entries"]
    nets = [ip_network(e["protocol"]) for e in entries]
    assert nets == sorted(nets, key=lambda n: (n.network_address, n.prefixlen))
    route = next(e for e in entries if e["shortcut"])
    assert route["protocol"] == str(spoke_lan(1)) and route["next_hop"] == str(spoke_tunnel(1))
    assert route["cisco_flags"] == ["used", "rib", "nho"]
    shortcuts = shortcut_view("spoke1", _iface(net, "spoke1"), net.now)["entries"]
    assert shortcuts == [route]


def test_nhs_view_status_letters_with_failover() -> None:
    net = _cloud(hubs=2, spokes=1, max_nhs=1)
    rows = nhs_view("spoke1", _iface(net, "spoke1"), net.now)["nhs"]
    assert [(r["protocol"], r["state"], r["status"]) for r in rows] == [
        ("10.0.0.1", "up", "RE"),
        ("10.0.0.2", "standby", "S"),
    ]
    assert rows[0]["up_for_text"] == format_duration(rows[0]["up_for"])
    net.kill("hub1")
    net.run_until(net.now + 7300)  # the registration runs out, retries go unanswered
    rows = nhs_view("spoke1", _iface(net, "spoke1"), net.now)["nhs"]
    assert [(r["state"], r["status"]) for r in rows] == [("down", "W"), ("up", "RE")]
    (itf,) = dmvpn_view("spoke1", _iface(net, "spoke1"), net.now)["interfaces"]
    states = {p["nbma"]: p["entries"][0]["state"] for p in itf["peers"]}
    assert states == {"192.0.2.1": "DOWN", "192.0.2.2": "UP"}


def test_traffic_view_counts_messages_by_type() -> None:
    net = _cloud(spokes=2)
    _shortcut(net)
    engine = net.nodes["hub1"].engine
    (itf,) = traffic_view("hub1", _iface(net, "hub1"))["interfaces"]
    assert set(PACKET_TYPES) <= set(itf["sent"]) and set(PACKET_TYPES) <= set(itf["received"])
    assert itf["received"]["registration_request"] == 2
    assert itf["sent"]["registration_reply"] == 2
    assert itf["sent"]["traffic_indication"] == 1
    assert itf["sent"]["total"] == sum(itf["sent"][t] for t in PACKET_TYPES)
    assert itf["received"]["total"] == engine.stats["rx.packets"]
    assert itf["max_send"] == {"packets": 100_000, "interval": 10.0}
    assert itf["errors"] == {} and itf["counters"] == dict(sorted(engine.stats.items()))
    # A malformed packet is an error by kind.
    engine.receive(b"\x00\x01garbage", A("198.51.100.1"), net.now)
    (itf,) = traffic_view("hub1", _iface(net, "hub1"))["interfaces"]
    assert itf["errors"] == {"malformed": 1}


def test_clear_all_and_clear_shortcut() -> None:
    net = _cloud(spokes=2)
    _shortcut(net)
    spoke1 = net.nodes["spoke1"].engine
    cleared = clear_nhrp(_iface(net, "spoke1")[0], net.now, "shortcut")
    assert [(c["protocol"], c["type"]) for c in cleared] == [(str(spoke_lan(1)), "cached")]
    outs = spoke1.pop_outputs()
    assert any(isinstance(o, ShortcutRemoved) and o.prefix == spoke_lan(1) for o in outs)
    assert spoke1.route(_host(1)) is None and spoke1.bound(spoke_tunnel(1)) is not None
    cleared = clear_nhrp(_iface(net, "spoke1")[0], net.now, "all")
    assert [c["protocol"] for c in cleared] == [f"{spoke_tunnel(1)}/32"]
    assert any(isinstance(o, BindingRemoved) for o in spoke1.pop_outputs())
    left = {e.type for e in spoke1.entries()}
    assert left == {EntryType.NHS, EntryType.LOCAL}  # configuration stays
    # On the hub, registrations go too (they return at the next refresh).
    hub = net.nodes["hub1"].engine
    cleared = clear_nhrp(_iface(net, "hub1")[0], net.now)
    assert sorted(c["type"] for c in cleared) == ["dynamic", "dynamic"]
    assert hub.stats["registrations.cleared"] == 2 and hub.bound(spoke_tunnel(0)) is None
    with pytest.raises(ValueError, match="scope"):
        clear_nhrp(_iface(net, "hub1")[0], net.now, "everything")  # type: ignore[arg-type]


class _Collector(Collector):
    def __init__(self, node: str, ifaces: list[Iface], now: float) -> None:
        self.args = (node, ifaces, now)

    def collect(self):  # type: ignore[no-untyped-def]
        return metric_families(*self.args)


Sample = tuple[str, tuple[tuple[str, str], ...]]  # metric name, sorted labels


def _scrape(node: str, ifaces: list[Iface], now: float) -> dict[Sample, float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(node, ifaces, now))
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def _forwarder(engine: Engine) -> tuple[Forwarder, list[tuple[IPv4Address, bytes]]]:
    sent: list[tuple[IPv4Address, bytes]] = []
    fw = Forwarder(
        engine=engine,
        tunnel_address=A("10.0.0.1"),
        local_mac=b"\x02\xaa\0\0\0\1",
        key=42,
        send_gre=lambda n, d: sent.append((n, d)),
        write_tap=lambda f: None,
    )
    return fw, sent


def test_metrics_cover_messages_cache_nhs_peers_and_errors() -> None:
    net = _cloud(spokes=2)
    _shortcut(net)
    hub = net.nodes["hub1"].engine
    fw, _ = _forwarder(Engine(hub.config))  # a spare engine: the data plane is what we count
    peer = A("198.51.100.7")
    inner = IPv4Header(src=A("10.0.0.7"), dst=A("10.0.0.1"), protocol=1).encode(bytes(12))
    gre = GrePacket(0x0800, inner, key=42).encode()
    fw.from_gre(gre, peer, 0.0)
    fw.from_gre(gre, peer, 0.0)
    fw.send_nhrp(peer, b"\x00" * 20)
    m = _scrape("hub1", [Iface("dmvpn0", hub, fw)], net.now)
    dm = (("interface", "dmvpn0"),)  # the forwarder's metrics: one per interface
    e4 = (("family", "4"), *dm)  # the engine's: one per family
    assert m["dmvpn_node_info", (("node", "hub1"), ("version", "0.1.0"))] == 1
    key = (
        "dmvpn_nhrp_messages_total",
        (("direction", "received"), *e4, ("type", "registration_request")),
    )
    assert m[key] == 2
    key = ("dmvpn_nhrp_messages_total", (("direction", "sent"), *e4, ("type", "purge_request")))
    assert m[key] == 0  # every type is exported, zero or not
    assert m["dmvpn_nhrp_cache_entries", (*e4, ("type", "dynamic"))] == 2
    assert m["dmvpn_nhrp_cache_entries", (*e4, ("type", "negative"))] == 0
    assert m["dmvpn_nhrp_registrations_total", (*e4, ("result", "accepted"))] == 2
    assert m["dmvpn_nhrp_resolutions_total", (*e4, ("result", "forwarded"))] == 1
    assert m["dmvpn_nhrp_redirects_total", (*e4, ("result", "sent"))] == 1
    assert m["dmvpn_nhrp_events_total", (*e4, ("kind", "registered"))] == 2
    assert m["dmvpn_peers", e4] == 2
    pk = (*dm, ("peer", str(peer)))
    assert m["dmvpn_peer_packets_total", (("direction", "rx"), *pk)] == 2
    assert m["dmvpn_peer_bytes_total", (("direction", "rx"), *pk)] == 2 * len(gre)
    assert m["dmvpn_peer_packets_total", (("direction", "tx"), *pk)] == 1
    assert m["dmvpn_peer_bytes_total", (("direction", "tx"), *pk)] == 8 + 20  # GRE with key
    assert m["dmvpn_dataplane_packets_total", (("counter", "rx.data"), *dm)] == 2
    hub.receive(b"junk", peer, net.now)
    m = _scrape("hub1", [Iface("dmvpn0", hub)], net.now)
    assert m["dmvpn_nhrp_errors_total", (*e4, ("kind", "malformed"))] == 1
    spoke = _scrape("spoke1", _iface(net, "spoke1"), net.now)
    assert spoke["dmvpn_nhrp_nhs_up", (*e4, ("nbma", "192.0.2.1"), ("nhs", "10.0.0.1"))] == 1
    assert spoke["dmvpn_nhrp_shortcuts_installed_total", e4] == 1
    assert spoke["dmvpn_nhrp_redirects_total", (*e4, ("result", "received"))] == 1


def test_forwarder_counts_per_peer_without_bound() -> None:
    fw, sent = _forwarder(Engine(build_cloud(spokes=1).nodes["hub1"].config))
    fw.multicast = [A("198.51.100.1"), A("198.51.100.2")]
    frame = b"\xff" * 6 + b"\x02\xaa\0\0\0\1" + b"\x08\x00" + bytes(40)
    fw.from_tap(frame, 0.0)
    assert [n for n, _ in sent] == fw.multicast
    for nbma in fw.multicast:
        c = fw.peers[nbma]
        assert (c.tx_packets, c.tx_bytes, c.rx_packets) == (1, 8 + 40, 0)
    # A flood of spoofed sources stops growing the table at its bound.
    fw.peers.update({A(i): PeerCounters() for i in range(MAX_PEER_COUNTERS - len(fw.peers))})
    fw.send_nhrp(A("203.0.113.1"), b"x")
    assert A("203.0.113.1") not in fw.peers and fw.stats["peers.untracked"] == 1
    # Data to an untracked peer is still reported to the engine, once a second.
    engine = _RecordingEngine()
    fw.engine = engine
    unicast = nbma_mac(A("203.0.113.2")) + b"\x02\xaa\0\0\0\1\x08\x00"
    unicast += IPv4Header(src=A("10.0.0.1"), dst=A("10.0.0.9"), protocol=1).encode(bytes(8))
    for now in (0.0, 0.5, 1.0):
        fw.from_tap(unicast, now)
    assert engine.used == [(A("10.0.0.9"), 0.0), (A("10.0.0.9"), 1.0)]
    assert fw.stats["tx.data"] == 3 and A("203.0.113.2") not in fw.peers


def test_tracked_peers_report_use_once_a_second() -> None:
    engine = _RecordingEngine()
    fw, sent = _forwarder(engine)  # type: ignore[arg-type]
    unicast = nbma_mac(A("198.51.100.9")) + b"\x02\xaa\0\0\0\1\x08\x00"
    unicast += IPv4Header(src=A("10.0.0.1"), dst=A("10.0.0.9"), protocol=1).encode(bytes(8))
    for now in (0.0, 0.2, 0.9, 1.1, 1.5):
        fw.from_tap(unicast, now)
    assert engine.used == [(A("10.0.0.9"), 0.0), (A("10.0.0.9"), 1.1)]
    c = fw.peers[A("198.51.100.9")]
    assert (c.tx_packets, c.tx_bytes, c.last_use) == (5, 5 * len(sent[0][1]), 1.1)


class _RecordingEngine:
    def __init__(self) -> None:
        self.used: list[tuple[object, float]] = []

    def receive(self, data: bytes, src_nbma: object, now: float) -> None:
        pass

    def next_hop_unbound(self, next_hop: object, now: float) -> None:
        pass

    def hairpin(self, packet: bytes, from_nbma: object, now: float) -> None:
        pass

    def binding_used(self, addr: object, now: float) -> None:
        self.used.append((addr, now))


# ---------------------------------------------------------------- dual stack


class _DualNode:
    """One node of a dual-stack cloud: an IPv4 and an IPv6 engine over the
    same IPv4 NBMA address, packets split by ar$pro.type (FamilyDispatch)."""

    def __init__(self, nbma: str, v4: str, v6: str, *, hub: bool, lan: int = 0) -> None:
        self.nbma = A(nbma)
        self.routing = StaticRouting()
        common: dict[str, Any] = dict(
            nbma_address=self.nbma, server=hub, redirect=hub, shortcut=not hub
        )
        nhs4 = () if hub else (NhsConfig(A("10.0.0.1"), A("192.0.2.1")),)
        nhs6 = () if hub else (NhsConfig(B("fd00::1"), A("192.0.2.1")),)
        self.e4 = Engine(EngineConfig(protocol_address=A(v4), nhs=nhs4, **common), StaticRouting())
        self.e6 = Engine(EngineConfig(protocol_address=B(v6), nhs=nhs6, **common), self.routing)
        self.hooks = FamilyDispatch(self.e4, self.e6)
        if lan:
            self.routing.add_local(f"fd00:{lan}::/64")

    def ifaces(self) -> list[Iface]:
        return [Iface("dmvpn0", self.e4), Iface("dmvpn0", self.e6, None, 6)]


def _dual_run(nodes: dict[IPv4Address, _DualNode], now: float) -> None:
    """Deliver every NHRP packet until the cloud is quiet."""
    for _ in range(50):
        moved = False
        for node in nodes.values():
            for engine in (node.e4, node.e6):
                for out in engine.pop_outputs():
                    if isinstance(out, SendPacket):
                        assert isinstance(out.nbma, IPv4Address)
                        nodes[out.nbma].hooks.receive(out.data, node.nbma, now)
                        moved = True
        if not moved:
            return
    raise AssertionError("the cloud never went quiet")


def _dual_cloud() -> tuple[_DualNode, _DualNode]:
    """hub + two spokes registered in both families, then an IPv6 shortcut
    spoke1 -> fd00:2::/64 (the hub saw the hairpin); (hub, spoke1)."""
    hub = _DualNode("192.0.2.1", "10.0.0.1", "fd00::1", hub=True)
    s1 = _DualNode("198.51.100.11", "10.0.0.11", "fd00::11", hub=False, lan=1)
    s2 = _DualNode("198.51.100.12", "10.0.0.12", "fd00::12", hub=False, lan=2)
    hub.routing.add_route("fd00:1::/64", B("fd00::11"))
    hub.routing.add_route("fd00:2::/64", B("fd00::12"))
    for s in (s1, s2):
        s.routing.add_route("fd00::/16", B("fd00::1"))
    nodes = {n.nbma: n for n in (hub, s1, s2)}
    for n in nodes.values():
        n.e4.start(0.0)
        n.e6.start(0.0)
    _dual_run(nodes, 0.0)
    packet = IPv6Header(src=B("fd00:1::10"), dst=B("fd00:2::10"), next_header=58).encode(bytes(8))
    hub.hooks.hairpin(packet, s1.nbma, 1.0)
    _dual_run(nodes, 1.0)
    return hub, s1


def test_show_dmvpn_lists_each_family_of_a_dual_stack_interface() -> None:
    hub, s1 = _dual_cloud()
    v4, v6 = dmvpn_view("spoke1", s1.ifaces(), 2.0)["interfaces"]
    assert (v4["interface"], v4["family"], v4["tunnel_address"]) == ("dmvpn0", 4, "10.0.0.11")
    assert (v6["interface"], v6["family"], v6["tunnel_address"]) == ("dmvpn0", 6, "fd00::11")
    # IPv4: only the NHS (no IPv4 traffic, no IPv4 shortcut).
    assert [(p["nbma"], [e["tunnel_address"] for e in p["entries"]]) for p in v4["peers"]] == [
        ("192.0.2.1", ["10.0.0.1"])
    ]
    # IPv6: the NHS, and spoke2 with its tunnel address (T1) and its LAN (T2).
    hub_peer, spoke2 = v6["peers"]
    assert [(e["tunnel_address"], e["state"], e["attrb"]) for e in hub_peer["entries"]] == [
        ("fd00::1", "UP", "S")
    ]
    assert spoke2["nbma"] == "198.51.100.12"
    assert [(e["target"], e["tunnel_address"], e["attrb"]) for e in spoke2["entries"]] == [
        ("fd00::12/128", "fd00::12", "DT1"),
        ("fd00:2::/64", "fd00::12", "DT2"),
    ]
    # The hub: both registrations of each spoke, each in its family's table.
    hv4, hv6 = dmvpn_view("hub1", hub.ifaces(), 2.0)["interfaces"]
    assert [p["entries"][0]["tunnel_address"] for p in hv4["peers"]] == ["10.0.0.11", "10.0.0.12"]
    assert [p["entries"][0]["tunnel_address"] for p in hv6["peers"]] == ["fd00::11", "fd00::12"]
    assert hv6["type"] == "hub" and hv6["peer_count"] == 2


def test_show_nhrp_nhs_and_shortcut_carry_the_family() -> None:
    _, s1 = _dual_cloud()
    entries = nhrp_view("spoke1", s1.ifaces(), 2.0)["entries"]
    by_family = {(e["family"], e["protocol"], e["type"]) for e in entries}
    assert {
        (4, "10.0.0.1/32", "nhs"),
        (6, "fd00::1/128", "nhs"),
        (6, "fd00::12/128", "cached"),
        (6, "fd00:2::/64", "cached"),
    } <= by_family
    assert all(e["family"] == 6 for e in entries if ":" in e["protocol"])
    assert all(e["family"] == 4 for e in entries if ":" not in e["protocol"])
    (shortcut,) = shortcut_view("spoke1", s1.ifaces(), 2.0)["entries"]
    assert (shortcut["family"], shortcut["protocol"], shortcut["next_hop"]) == (
        6,
        "fd00:2::/64",
        "fd00::12",
    )
    rows = nhs_view("spoke1", s1.ifaces(), 2.0)["nhs"]
    assert [(n["family"], n["protocol"], n["nbma"], n["status"]) for n in rows] == [
        (4, "10.0.0.1", "192.0.2.1", "RE"),
        (6, "fd00::1", "192.0.2.1", "RE"),
    ]


def test_show_nhrp_traffic_counts_each_engine_on_its_own() -> None:
    hub, s1 = _dual_cloud()
    v4, v6 = traffic_view("spoke1", s1.ifaces())["interfaces"]
    assert (v4["family"], v6["family"]) == (4, 6)
    assert v4["sent"]["registration_request"] == v6["sent"]["registration_request"] == 1
    # The redirect and the resolution were IPv6 only.
    assert (v4["received"]["traffic_indication"], v6["received"]["traffic_indication"]) == (0, 1)
    assert (v4["sent"]["resolution_request"], v6["sent"]["resolution_request"]) == (0, 1)
    h4, h6 = traffic_view("hub1", hub.ifaces())["interfaces"]
    assert h4["received"]["registration_request"] == h6["received"]["registration_request"] == 2


def test_clear_nhrp_on_the_ipv6_engine_leaves_the_ipv4_one_alone() -> None:
    hub, s1 = _dual_cloud()
    v4, v6 = s1.ifaces()
    assert clear_nhrp(v4, 2.0) == []  # nothing dynamic in IPv4: only the NHS
    cleared = clear_nhrp(v6, 2.0, "shortcut")
    assert cleared == [
        {
            "interface": "dmvpn0",
            "family": 6,
            "protocol": "fd00:2::/64",
            "type": "cached",
            "nbma": "198.51.100.12",
        }
    ]
    assert any(isinstance(o, ShortcutRemoved) for o in s1.e6.pop_outputs())
    # On the hub, clearing IPv6 drops the IPv6 registrations only.
    cleared = clear_nhrp(hub.ifaces()[1], 2.0)
    assert sorted(c["protocol"] for c in cleared) == ["fd00::11/128", "fd00::12/128"]
    assert {e.type for e in hub.e4.entries()} >= {EntryType.DYNAMIC}


def test_metrics_of_a_dual_stack_interface_have_a_family_label() -> None:
    hub, s1 = _dual_cloud()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector("spoke1", s1.ifaces(), 2.0))
    samples = [
        (s.name, tuple(sorted(s.labels.items())))
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    ]
    assert len(samples) == len(set(samples)), "a label set is exported twice"
    m = _scrape("spoke1", s1.ifaces(), 2.0)
    f4 = (("family", "4"), ("interface", "dmvpn0"))
    f6 = (("family", "6"), ("interface", "dmvpn0"))
    ti = ("type", "traffic_indication")
    assert m["dmvpn_nhrp_messages_total", (("direction", "received"), *f6, ti)] == 1
    assert m["dmvpn_nhrp_messages_total", (("direction", "received"), *f4, ti)] == 0
    assert m["dmvpn_nhrp_nhs_up", (*f6, ("nbma", "192.0.2.1"), ("nhs", "fd00::1"))] == 1
    assert m["dmvpn_nhrp_nhs_up", (*f4, ("nbma", "192.0.2.1"), ("nhs", "10.0.0.1"))] == 1
    assert m["dmvpn_nhrp_shortcuts_installed_total", f6] == 1
    # Counters that never moved are absent, as for an IPv4-only interface.
    assert ("dmvpn_nhrp_shortcuts_installed_total", f4) not in m
    assert (m["dmvpn_peers", f4], m["dmvpn_peers", f6]) == (1, 2)
    assert m["dmvpn_nhrp_cache_entries", (*f6, ("type", "cached"))] == 2
    h = _scrape("hub1", hub.ifaces(), 2.0)
    reg = ("result", "accepted")
    assert h["dmvpn_nhrp_registrations_total", (*f4, reg)] == 2
    assert h["dmvpn_nhrp_registrations_total", (*f6, reg)] == 2
