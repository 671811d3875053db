"""The engine's public surface: what the API, the CLI, the simulator and the
daemon may read and do, without reaching into its parts."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from dmvpn.nhrp import (
    BindingRemoved,
    EntryType,
    Event,
    SendPacket,
    ShortcutRemoved,
)
from dmvpn.nhrp.sim import SimNetwork, build_cloud, spoke_lan, spoke_nbma, spoke_tunnel

SRC = Path(__file__).resolve().parents[2] / "src" / "dmvpn"


def _shortcut_cloud() -> SimNetwork:
    net = build_cloud(spokes=2, phase=3, holding_time=60)
    net.start()
    net.run_until(1.0)
    host2 = spoke_lan(1).network_address + 10
    net.send_data("spoke1", host2)  # via the hub, which redirects
    net.run_until(net.now + 0.5)
    return net


def test_entries_in_address_order_and_the_lookups() -> None:
    net = _shortcut_cloud()
    spoke1 = net.nodes["spoke1"].engine
    targets = [(str(e.protocol), e.prefix_length, e.type) for e in spoke1.entries()]
    assert targets == [
        ("10.0.0.1", 32, EntryType.NHS),
        ("10.0.1.1", 32, EntryType.LOCAL),
        ("10.0.1.2", 32, EntryType.CACHED),
        (str(spoke_lan(1).network_address), 24, EntryType.CACHED),
    ]
    (route,) = spoke1.shortcuts()
    assert route.is_shortcut and route.prefix == spoke_lan(1) and route.next_hop == spoke_tunnel(1)
    hop = spoke1.entry(spoke_tunnel(1))
    assert hop is not None and hop.nbma == spoke_nbma(1) and not hop.is_shortcut
    assert spoke1.entry(IPv4Address("10.9.9.9")) is None
    counts = spoke1.entry_counts()
    assert list(counts) == list(EntryType)  # every type, zeros included
    assert counts[EntryType.CACHED] == 2 and counts[EntryType.DYNAMIC] == 0


def test_nhs_and_addresses() -> None:
    net = _shortcut_cloud()
    spoke1 = net.nodes["spoke1"].engine
    assert spoke1.registered
    nhs = spoke1.current_nhs()
    assert nhs is not None and str(nhs.protocol) == "10.0.0.1" and str(nhs.nbma) == "192.0.2.1"
    assert spoke1.nbma == spoke_nbma(0) and spoke1.public_nbma is None
    assert spoke1.timer_count > 0
    hub = net.nodes["hub1"].engine
    assert not hub.registered and hub.current_nhs() is None  # a hub has no NHS
    net.kill("hub1")
    net.run_until(net.now + 7300)  # the registration runs out unanswered
    assert not spoke1.registered and spoke1.current_nhs() is None


def test_clear_removes_what_was_not_configured_and_queues_the_withdrawals() -> None:
    net = _shortcut_cloud()
    spoke1 = net.nodes["spoke1"].engine
    spoke1.pop_outputs()
    with pytest.raises(ValueError, match="scope must be one of all, shortcut"):
        spoke1.clear(net.now, "everything")  # type: ignore[arg-type]
    (gone,) = spoke1.clear(net.now, "shortcut")
    assert gone.prefix == spoke_lan(1)
    assert [type(o) for o in spoke1.pop_outputs()] == [ShortcutRemoved]
    (gone,) = spoke1.clear(net.now)
    assert gone.protocol == spoke_tunnel(1)
    assert any(isinstance(o, BindingRemoved) for o in spoke1.pop_outputs())
    assert {e.type for e in spoke1.entries()} == {EntryType.NHS, EntryType.LOCAL}
    # A hub's registrations: each reported and counted (they come back at
    # the spokes' next refresh).
    hub = net.nodes["hub1"].engine
    hub.pop_outputs()
    cleared = hub.clear(net.now)
    assert sorted(str(e.protocol) for e in cleared) == ["10.0.1.1", "10.0.1.2"]
    kinds = [o.kind for o in hub.pop_outputs() if isinstance(o, Event)]
    assert kinds == ["registration-cleared", "registration-cleared"]
    assert hub.stats["registrations.cleared"] == 2


def test_clear_purges_the_bindings_a_phase2_hub_handed_out() -> None:
    net = build_cloud(spokes=2, phase=2, holding_time=60)
    net.start()
    net.run_until(1.0)
    net.send_data("spoke1", spoke_lan(1).network_address + 10)  # resolved by the hub
    net.run_until(net.now + 0.5)
    hub = net.nodes["hub1"].engine
    hub.pop_outputs()
    hub.clear(net.now)
    purges = [o for o in hub.pop_outputs() if isinstance(o, SendPacket) and o.nbma == spoke_nbma(0)]
    assert [p.packet.type.name for p in purges] == ["PURGE_REQUEST"]
    assert purges[0].packet.cies[0].protocol == spoke_tunnel(1)


def test_events_can_be_turned_off_and_are_still_counted() -> None:
    net = build_cloud(spokes=1, phase=3)
    hub = net.nodes["hub1"].engine
    hub.events_enabled = False
    net.start()
    net.run_until(1.0)
    assert not hub.events_enabled
    assert not [o for o in hub.pop_outputs() if isinstance(o, Event)]
    assert net.events("hub1") == [] and hub.stats["event.registered"] == 1


def test_nothing_outside_the_engine_package_reaches_into_its_parts() -> None:
    parts = re.compile(r"engine\w*\._?(core|client|server|resolver|purges)\b")
    offenders = [
        f"{path.relative_to(SRC)}:{n}"
        for path in SRC.rglob("*.py")
        if path.parent.name != "nhrp"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if parts.search(line)
    ]
    assert offenders == []


def test_static_map_entries_are_listed_and_never_cleared() -> None:
    from dataclasses import replace

    from dmvpn.nhrp import Engine, StaticMap

    net = build_cloud(spokes=1, phase=3)
    config = replace(
        net.nodes["spoke1"].config,
        static_maps=(StaticMap(IPv4Address("10.0.1.7"), IPv4Address("198.18.9.7")),),
    )
    engine = Engine(config)
    engine.start(0.0)
    assert engine.clear(1.0) == []
    static = engine.entry(IPv4Address("10.0.1.7"))
    assert static is not None and static.type == EntryType.STATIC
    assert IPv4Network("10.0.1.7/32") == static.prefix
