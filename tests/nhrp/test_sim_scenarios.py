"""DMVPN behaviour end to end in the simulator: real encoded NHRP between
engines, virtual time, a data path followed hop by hop."""

from __future__ import annotations

from ipaddress import IPv4Address

from dmvpn.nhrp import EntryType
from dmvpn.nhrp.sim import SimNetwork, build_cloud, run_scenario, spoke_lan, spoke_tunnel


def _host(i: int) -> IPv4Address:
    return spoke_lan(i).network_address + 10


def _registered_all(net: SimNetwork, until: float = 30.0) -> None:
    names = [n for n in net.nodes if n.startswith("spoke")]
    net.run_until(until, stop=lambda: all(net.registered(n) for n in names))
    assert all(net.registered(n) for n in names), {n: net.registered(n) for n in names}


def test_every_spoke_registers_with_the_hub() -> None:
    net = build_cloud(spokes=3, phase=3)
    net.start()
    _registered_all(net)
    assert net.now < 1.0  # one round trip each
    hub = net.nodes["hub1"].engine
    dynamic = [e for e in hub.cache_view(net.now) if e["type"] == "dynamic"]
    assert sorted(e["protocol"] for e in dynamic) == [f"{spoke_tunnel(i)}/32" for i in range(3)]
    assert all("unique" in e["flags"] and e["nbma"].startswith("198.18.") for e in dynamic)
    # The hub bound each spoke and asked for IPsec protection to it.
    assert len(net.nodes["hub1"].bindings) == 3
    spoke = net.nodes["spoke1"].engine
    (nhs,) = spoke.nhs_view(net.now)
    assert nhs["state"] == "up" and nhs["protocol"] == "10.0.0.1"


def test_phase1_everything_goes_through_the_hub() -> None:
    net = build_cloud(spokes=2, phase=1)
    net.start()
    _registered_all(net)
    for _ in range(5):
        trace = net.send_data("spoke1", _host(1))
        net.run_until(net.now + 1)
        assert trace.delivered and trace.path == ("spoke1", "hub1", "spoke2")
    assert net.stats["nhrp_sent.resolution_request"] == 0
    # Even asked explicitly, a phase 1 spoke does not resolve.
    spoke = net.nodes["spoke1"].engine
    spoke.next_hop_unbound(spoke_tunnel(1), net.now)
    assert not [o for o in spoke.pop_outputs() if type(o).__name__ == "SendPacket"]
    assert spoke.stats["resolution.disabled"] == 1


def test_phase2_first_packet_via_hub_then_direct() -> None:
    net = build_cloud(spokes=2, phase=2)
    net.start()
    _registered_all(net)
    first = net.send_data("spoke1", _host(1))
    assert first.path == ("spoke1", "hub1", "spoke2")
    # The routing next hop (spoke2's tunnel address) is resolved via the NHS,
    # which answers from its registrations.
    entry = net.nodes["spoke1"].engine.entry(spoke_tunnel(1))
    assert entry is not None and entry.type == EntryType.INCOMPLETE
    net.run_until(net.now + 0.1)
    assert net.nodes["hub1"].engine.stats["resolution.answered_from_cache"] == 1
    second = net.send_data("spoke1", _host(1))
    assert second.path == ("spoke1", "spoke2")
    assert net.nodes["spoke1"].bindings[spoke_tunnel(1)] == IPv4Address("198.18.0.2")
    assert net.stats["nhrp_sent.traffic_indication"] == 0  # no redirect in phase 2


def test_phase3_redirect_resolution_and_shortcut() -> None:
    net = build_cloud(spokes=2, phase=3)
    net.start()
    _registered_all(net)
    first = net.send_data("spoke1", _host(1))
    assert first.path == ("spoke1", "hub1", "spoke2")
    net.run_until(net.now + 0.1)
    # Hub -> Traffic Indication -> spoke1 resolves host2 -> hub forwards the
    # request to spoke2 -> spoke2 answers spoke1 directly with its /24.
    assert net.stats["nhrp_sent.traffic_indication"] == 1
    assert net.nodes["hub1"].engine.stats["resolution.forwarded"] == 1
    assert net.nodes["spoke2"].engine.stats["resolution.answered_as_owner"] == 1
    found = net.nodes["spoke1"].shortcuts.lookup(_host(1))
    assert found is not None and found[0] == spoke_lan(1)
    assert found[1] == (spoke_tunnel(1), IPv4Address("198.18.0.2"))
    assert net.send_data("spoke1", _host(1)).path == ("spoke1", "spoke2")
    # The way back gets its own redirect and shortcut.
    assert net.send_data("spoke2", _host(0)).path == ("spoke2", "hub1", "spoke1")
    net.run_until(net.now + 0.1)
    assert net.send_data("spoke2", _host(0)).path == ("spoke2", "spoke1")
    view = {e["protocol"]: e for e in net.nodes["spoke1"].engine.cache_view(net.now)}
    assert "shortcut" in view[str(spoke_lan(1))]["flags"]


def test_phase3_shortcut_expires_when_idle_and_refreshes_when_used() -> None:
    net = build_cloud(spokes=4, phase=3, holding_time=60)
    net.start()
    _registered_all(net)
    for a, b in ((0, 1), (2, 3)):
        net.send_data(f"spoke{a + 1}", _host(b))
        net.run_until(net.now + 0.1)
    # spoke1 keeps using its shortcut; spoke3 goes quiet.
    t = net.now
    while net.now < t + 100:
        assert net.send_data("spoke1", _host(1)).delivered
        net.run_until(net.now + 5)
    assert net.nodes["spoke1"].shortcuts.lookup(_host(1)) is not None
    assert net.nodes["spoke3"].shortcuts.lookup(_host(3)) is None
    assert net.send_data("spoke3", _host(3)).via_hub
    assert net.nodes["spoke1"].engine.stats["resolution.refreshes"] >= 1


def test_hub_restart_and_reregistration() -> None:
    net = build_cloud(spokes=3, phase=3, holding_time=30)
    net.start()
    _registered_all(net)
    net.at(5.0, lambda: net.kill("hub1"))
    net.at(8.0, lambda: net.restart("hub1"))
    net.run_until(9.0)
    assert net.nodes["hub1"].engine.cache_view(net.now)[0]["type"] == "local"
    assert len(net.nodes["hub1"].bindings) == 0
    # Spokes refresh at a third of the holding time and come back.
    net.run_until(40.0)
    hub = net.nodes["hub1"].engine
    assert sum(1 for e in hub.cache_view(net.now) if e["type"] == "dynamic") == 3


def test_failover_between_two_hubs_and_back() -> None:
    net = build_cloud(hubs=2, spokes=2, phase=3, holding_time=30, max_nhs=1)
    net.start()
    _registered_all(net)
    states = {s["protocol"]: s["state"] for s in net.nodes["spoke1"].engine.nhs_view(net.now)}
    assert states == {"10.0.0.1": "up", "10.0.0.2": "standby"}
    net.kill("hub1")
    net.run_until(net.now + 60)
    states = {s["protocol"]: s["state"] for s in net.nodes["spoke1"].engine.nhs_view(net.now)}
    assert states == {"10.0.0.1": "down", "10.0.0.2": "up"}
    assert net.send_data("spoke1", _host(1)).path[1] == "hub2"
    net.restart("hub1")
    net.run_until(net.now + 130)  # the down NHS is probed with backoff (cap 64 s)
    states = {s["protocol"]: s["state"] for s in net.nodes["spoke1"].engine.nhs_view(net.now)}
    assert states == {"10.0.0.1": "up", "10.0.0.2": "standby"}
    # Falling back, the spoke purged its registration on hub2.
    assert net.nodes["hub2"].engine.stats["registrations.purged"] >= 1


def test_nbma_change_unique_is_refused_until_expiry() -> None:
    net = build_cloud(spokes=1, phase=3, holding_time=30, unique=True)
    net.start()
    _registered_all(net)
    net.change_nbma("spoke1", IPv4Address("198.18.7.7"))
    net.run_until(net.now + 2)
    spoke = net.nodes["spoke1"].engine
    refused = net.events("spoke1", "registration-refused")
    assert refused and refused[0].details["code"] == 14
    hub_entry = net.nodes["hub1"].engine.entry(spoke_tunnel(0))
    assert hub_entry is not None and hub_entry.nbma == IPv4Address("198.18.0.1")
    # After the old binding expires, the retry succeeds.
    net.run_until(net.now + 120)
    assert spoke.nhs_view(net.now)[0]["state"] == "up"
    hub_entry = net.nodes["hub1"].engine.entry(spoke_tunnel(0))
    assert hub_entry is not None and hub_entry.nbma == IPv4Address("198.18.7.7")


def test_nbma_change_no_unique_replaces_at_once() -> None:
    net = build_cloud(spokes=1, phase=3, holding_time=30, unique=False)
    net.start()
    _registered_all(net)
    net.change_nbma("spoke1", IPv4Address("198.18.7.7"))
    net.run_until(net.now + 1)
    hub_entry = net.nodes["hub1"].engine.entry(spoke_tunnel(0))
    assert hub_entry is not None and hub_entry.nbma == IPv4Address("198.18.7.7")
    assert not net.events("spoke1", "registration-refused")


def test_spoke_behind_nat() -> None:
    net = build_cloud(spokes=2, phase=3, nat_spokes=frozenset({0}))
    net.start()
    _registered_all(net)
    hub_entry = net.nodes["hub1"].engine.entry(spoke_tunnel(0))
    assert hub_entry is not None
    assert hub_entry.nbma == IPv4Address("198.18.0.1")  # post-NAT
    assert hub_entry.claimed_nbma == IPv4Address("172.16.0.1")
    (nhs,) = net.nodes["spoke1"].engine.nhs_view(net.now)
    assert nhs["public_nbma"] == "198.18.0.1"  # learned from the NAT extension
    # Shortcuts both ways: spoke2 must answer spoke1 at its public address.
    for a, b in ((0, 1), (1, 0)):
        net.send_data(f"spoke{a + 1}", _host(b))
        net.run_until(net.now + 0.1)
        assert net.send_data(f"spoke{a + 1}", _host(b)).path == (f"spoke{a + 1}", f"spoke{b + 1}")
    assert net.stats["nhrp_unroutable"] == 0
    # spoke1 told spoke2 its public address in the NAT extension of its answer.
    assert net.nodes["spoke2"].engine.stats["resolution.nat_extension"] == 1
    entry = net.nodes["spoke2"].engine.entry(spoke_tunnel(0))
    assert entry is not None and entry.nbma == IPv4Address("198.18.0.1")
    assert entry.claimed_nbma == IPv4Address("172.16.0.1")


def test_twenty_percent_loss_still_converges() -> None:
    # Lost redirects are sent again (one per 8 s per flow), lost requests
    # retransmitted; a flow whose five tries all fail sits on a negative
    # entry for 3 minutes, so give it 4.
    result = run_scenario(spokes=20, phase=3, loss=0.2, seed=7, traffic_seconds=240)
    assert result["registered_spokes"] == 20
    assert result["nhrp_messages_lost"] > 0
    assert result["direct_paths"] == 20  # both directions of all 10 pairs


def test_scenario_summary_numbers() -> None:
    r = run_scenario(spokes=6, phase=3, traffic_seconds=5)
    assert r["registered_spokes"] == 6 and r["shortcuts_formed"] == 6
    assert r["packets_via_hub"] == 6 and r["packets_direct"] == 24
    assert r["nhrp_by_type"]["traffic_indication"] == 6


def test_hub_failure_in_scenario_with_two_hubs() -> None:
    r = run_scenario(hubs=2, spokes=4, phase=3, kill_hub_at=3.0, traffic_seconds=5)
    assert r["registered_spokes"] == 4
    assert r["packets_dropped"] == 0


def test_hub_purges_a_binding_it_handed_out_when_it_changes() -> None:
    net = build_cloud(spokes=2, phase=2, unique=False)
    net.start()
    _registered_all(net)
    net.send_data("spoke1", _host(1))
    net.run_until(net.now + 0.1)
    assert net.nodes["spoke1"].bindings[spoke_tunnel(1)] == IPv4Address("198.18.0.2")
    # spoke2 moves; the hub tells spoke1 (RFC 2332 5.2.5) and spoke1 drops
    # the stale binding, so its next packet resolves again.
    net.change_nbma("spoke2", IPv4Address("198.18.9.9"))
    net.run_until(net.now + 0.1)
    assert net.stats["nhrp_sent.purge_request"] == 1
    assert spoke_tunnel(1) not in net.nodes["spoke1"].bindings
    assert net.send_data("spoke1", _host(1)).via_hub
    net.run_until(net.now + 0.1)
    assert net.send_data("spoke1", _host(1)).path == ("spoke1", "spoke2")
    assert net.nodes["spoke1"].bindings[spoke_tunnel(1)] == IPv4Address("198.18.9.9")


def test_hierarchical_hubs_shortcut_across_regions() -> None:
    """Regional hubs register with a top hub (hub and NHC at once); a spoke
    in one region builds a shortcut to a spoke in the other."""
    from dmvpn.nhrp import EngineConfig, NhsConfig
    from dmvpn.nhrp.sim import VIA_NHS

    net = SimNetwork()
    A = IPv4Address
    top = A("10.0.0.1"), A("192.0.2.1")
    regions = {"r1": (A("10.0.0.2"), A("192.0.2.2")), "r2": (A("10.0.0.3"), A("192.0.2.3"))}
    net.add_node(
        "top",
        EngineConfig(protocol_address=top[0], nbma_address=top[1], server=True, redirect=True),
        is_hub=True,
    )
    for name, (tun, nbma) in regions.items():
        node = net.add_node(
            name,
            EngineConfig(
                protocol_address=tun,
                nbma_address=nbma,
                server=True,
                redirect=True,
                nhs=(NhsConfig(*top),),
            ),
            is_hub=True,
        )
        node.routing.routes.add("10.128.0.0/9", top[0])
    spokes = {"spoke1": ("r1", 0), "spoke2": ("r2", 1)}
    for name, (region, i) in spokes.items():
        cfg = EngineConfig(
            protocol_address=spoke_tunnel(i),
            nbma_address=A("198.18.0.1") + i,
            nhs=(NhsConfig(*regions[region]),),
            shortcut=True,
        )
        node = net.add_node(name, cfg, lan=str(spoke_lan(i)))
        node.routing.routes.add("10.128.0.0/9", VIA_NHS)
        net.nodes[region].routing.routes.add(spoke_lan(i), spoke_tunnel(i))
        net.nodes["top"].routing.routes.add(spoke_lan(i), regions[region][0])
    net.start()
    net.run_until(1.0)
    assert all(net.registered(n) for n in ("r1", "r2", "spoke1", "spoke2"))
    first = net.send_data("spoke1", _host(1))
    assert first.path == ("spoke1", "r1", "top", "r2", "spoke2")
    net.run_until(net.now + 0.5)
    assert net.nodes["top"].engine.stats["resolution.forwarded"] == 1
    assert net.send_data("spoke1", _host(1)).path == ("spoke1", "spoke2")
