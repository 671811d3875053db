"""The daemon's InterfaceRuntime over a fake data plane: no root, no devices.

What crosses the DataPlane seam, and how the IPsec gate sits between the
engine and the data plane: a registration goes out at start without IPsec,
waits for the NHS's SA with it, and goes once the SA is up."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterator, Mapping
from ipaddress import IPv4Address, IPv4Network
from types import SimpleNamespace
from typing import Any

import pytest

from dmvpn.config import parse_config
from dmvpn.daemon.interface import InterfaceRuntime
from dmvpn.dataplane.forwarding import PeerCounters
from dmvpn.dataplane.plane import DataPlane, DataPlaneHooks
from dmvpn.nhrp import Engine, SendPacket, ShortcutAdded, ShortcutRemoved
from dmvpn.nhrp.outputs import shortcut_event
from dmvpn.nhrp.routing import PrefixTable
from dmvpn.wire import Address, PacketType, decode_nhrp

HUB = IPv4Address("192.0.2.1")
SPOKE_NBMA = IPv4Address("198.51.100.11")
HUB_CONFIG = {
    "node": "hub1",
    "interfaces": [
        {
            "name": "dmvpn0",
            "address": "10.0.0.1/24",
            "tunnel": {"source": str(HUB), "key": 42},
            "nhrp": {"network_id": 1, "holdtime": 60, "redirect": True},
        }
    ],
}
SPOKE = {
    "node": "spoke1",
    "interfaces": [
        {
            "name": "dmvpn0",
            "address": "10.0.0.11/24",
            "tunnel": {"source": "198.51.100.11", "key": 42},
            "nhrp": {
                "network_id": 1,
                "holdtime": 60,
                "shortcut": True,
                "nhs": [{"address": "10.0.0.1", "nbma": str(HUB)}],
                "map_multicast": ["nhs"],
            },
        }
    ],
}


class FakeDataPlane(DataPlane):
    """Records what the daemon asks; `deliver` plays a packet arriving."""

    def __init__(self) -> None:
        self.sent: list[tuple[IPv4Address, bytes]] = []
        self.bound: dict[Address, IPv4Address] = {}
        self.nhs: list[IPv4Address] = []
        self.multicast: Collection[IPv4Address] = []
        self.redirect = False
        self.protected: str | None = None
        self.state = "new"
        self.hooks: DataPlaneHooks | None = None
        self.order: list[str] = []  # neighbour flushes and routes, shared with FakeIpr

    def open(self, hooks: DataPlaneHooks) -> None:
        self.hooks, self.state = hooks, "open"

    @property
    def index(self) -> int:
        return 7

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.state = "started"

    def stop(self) -> None:
        self.state = "stopped"

    def close(self) -> None:
        self.state = "closed"

    def bind(self, protocol: Address, nbma: IPv4Address) -> None:
        self.bound[protocol] = nbma

    def unbind(self, protocol: Address) -> None:
        self.bound.pop(protocol, None)

    def flush_neighbours(self) -> None:
        self.order.append("neighbours")

    @property
    def bindings(self) -> Mapping[Address, IPv4Address]:
        return self.bound

    def send_nhrp(self, nbma: IPv4Address, data: bytes) -> None:
        self.sent.append((nbma, data))

    def set_nhs(self, nbmas: list[IPv4Address]) -> None:
        self.nhs = nbmas

    def set_multicast(self, nbmas: Collection[IPv4Address]) -> None:
        self.multicast = nbmas

    def set_redirect(self, on: bool) -> None:
        self.redirect = on

    def protect_path(self, device: str) -> None:
        self.protected = device

    @property
    def stats(self) -> Mapping[str, int]:
        return {}

    @property
    def peers(self) -> Mapping[IPv4Address, PeerCounters]:
        return {}


class StaticRouting:
    """Everything routed via the NHS, nothing local."""

    def __init__(self) -> None:
        self.table = PrefixTable()

    def next_hop(self, destination: Address) -> Address | None:
        return IPv4Address("10.0.0.1")

    def local_prefix(self, destination: Address) -> IPv4Network | None:
        return None


class FakeIpr:
    """pyroute2's IPRoute as the runtime uses it for shortcut routes."""

    def __init__(self, order: list[str] | None = None) -> None:
        self.routes: list[tuple[str, str]] = []
        self.fail = False
        self.order = order if order is not None else []

    def route(self, op: str, **kw: Any) -> None:
        if self.fail:
            raise OSError(101, "Network is unreachable")
        self.routes.append((op, kw["dst"]))
        self.order.append(f"route {op}")


class FakeIpsec:
    def __init__(self) -> None:
        self.cfg = SimpleNamespace(binding_on=False, device="ipsec0")
        self.kernel_esp = False  # kernel-libipsec: GRE bound to its device
        self.calls: list[tuple[str, IPv4Address]] = []

    def touch(self, local: IPv4Address, remote: IPv4Address) -> None:
        self.calls.append(("touch", remote))

    def want(self, local: IPv4Address, remote: IPv4Address) -> None:
        self.calls.append(("want", remote))

    def release(self, local: IPv4Address, remote: IPv4Address) -> None:
        self.calls.append(("release", remote))

    def claims(self, peer: Any) -> tuple[()]:
        return ()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _runtime(
    loop: asyncio.AbstractEventLoop, ipsec: FakeIpsec | None = None
) -> tuple[InterfaceRuntime, FakeDataPlane, list[tuple[str, str]]]:
    cfg = parse_config(SPOKE).interfaces[0]
    dp = FakeDataPlane()
    logged: list[tuple[str, str]] = []
    rt = InterfaceRuntime(
        cfg,
        dp,
        ipr=FakeIpr(dp.order),  # type: ignore[arg-type]
        log=lambda kind, message, **_: logged.append((kind, message)),  # type: ignore[arg-type]
        loop=loop,
        ipsec=ipsec,
        routing=lambda index, family: StaticRouting(),  # type: ignore[arg-type]
    )
    return rt, dp, logged


def _types(sent: list[tuple[IPv4Address, bytes]]) -> list[tuple[IPv4Address, PacketType]]:
    return [(nbma, decode_nhrp(data).type) for nbma, data in sent]


def test_construction_touches_nothing_open_creates_and_configures(loop) -> None:  # type: ignore[no-untyped-def]
    rt, dp, _ = _runtime(loop)
    assert dp.state == "new" and rt.engines == []
    rt.open()
    assert dp.state == "open" and dp.hooks is rt
    assert dp.nhs == [HUB] and list(dp.multicast) == [HUB]  # map multicast nhs
    assert len(rt.engines) == 1 and rt.engine6 is None


def _hub_answers(rt: InterfaceRuntime, dp: FakeDataPlane, now: float) -> None:
    """A real hub engine answers what the spoke sent; the answers come back in."""
    hub = Engine(parse_config(HUB_CONFIG).interfaces[0].engine_config(4), StaticRouting())
    hub.start(now)
    for nbma, data in dp.sent:
        assert nbma == HUB
        hub.receive(data, SPOKE_NBMA, now)
    for out in hub.pop_outputs():
        if isinstance(out, SendPacket) and out.nbma == SPOKE_NBMA:
            rt.receive(out.data, HUB, now)
    rt.batch_done()


def test_without_ipsec_the_registration_goes_out_at_start(loop) -> None:  # type: ignore[no-untyped-def]
    rt, dp, logged = _runtime(loop)
    rt.open()
    rt.start()
    assert dp.state == "started" and dp.protected is None
    assert _types(dp.sent) == [(HUB, PacketType.REGISTRATION_REQUEST)]
    _hub_answers(rt, dp, loop.time())
    assert ("nhs-up", "registered with NHS 10.0.0.1") in logged
    assert dp.bound == {IPv4Address("10.0.0.1"): HUB}  # the NHS's binding reached the plane
    rt.stop()
    # Stopping deregisters (a purge to the NHS) before the data plane goes.
    assert _types(dp.sent)[-1] == (HUB, PacketType.PURGE_REQUEST)
    assert dp.state == "closed"


def test_with_ipsec_the_registration_waits_for_the_nhs_sa(loop) -> None:  # type: ignore[no-untyped-def]
    ipsec = FakeIpsec()
    rt, dp, _ = _runtime(loop, ipsec)
    rt.open()
    rt.start()
    assert dp.protected == "ipsec0"  # GRE only where the SAs apply
    assert dp.sent == [] and ("touch", HUB) in ipsec.calls
    assert rt.ipsec_stats["held"] == 1
    rt.ipsec_up(SimpleNamespace(local=IPv4Address("198.51.100.11"), remote=HUB))  # type: ignore[arg-type]
    assert _types(dp.sent) == [(HUB, PacketType.REGISTRATION_REQUEST)]


LAN2 = IPv4Network("192.168.2.0/24")
T2, S2 = IPv4Address("10.0.0.12"), IPv4Address("198.51.100.12")
SHORTCUT = "shortcut 192.168.2.0/24 via 10.0.0.12 (198.51.100.12)"


def _engine_shortcut(rt: InterfaceRuntime) -> None:
    """What the engine outputs when a resolution answer gives a shortcut:
    the route, then its event."""
    sc = ShortcutAdded(LAN2, T2, S2)
    for out in (sc, shortcut_event(sc)):
        rt._handlers[type(out)](out)


def test_without_ipsec_shortcut_is_logged_with_the_route_installed(loop) -> None:  # type: ignore[no-untyped-def]
    rt, _, logged = _runtime(loop)
    rt.open()
    _engine_shortcut(rt)
    assert rt.ipr.routes == [("replace", "192.168.2.0/24")]  # type: ignore[attr-defined]
    assert [m for k, m in logged if k.startswith("shortcut")] == [SHORTCUT]


def test_the_next_hops_neighbour_entry_is_written_before_the_shortcut_route(loop) -> None:  # type: ignore[no-untyped-def]
    """The binding's neighbour write is queued for the event loop; the route
    must not wait for it, nor go in before it (the first packet would make
    the kernel resolve the next hop): it is written just before (issue 18)."""
    rt, dp, _ = _runtime(loop)
    rt.open()
    _engine_shortcut(rt)
    assert dp.order == ["neighbours", "route replace"]
    rt._handlers[ShortcutRemoved](ShortcutRemoved(LAN2, T2))
    assert dp.order[2:] == ["route del"]


def test_with_ipsec_a_held_shortcut_is_logged_deferred_then_installed(loop) -> None:  # type: ignore[no-untyped-def]
    rt, _, logged = _runtime(loop, FakeIpsec())
    rt.open()
    _engine_shortcut(rt)
    # Not `shortcut` while the route waits for the SA: deferred, and why.
    assert rt.ipr.routes == []  # type: ignore[attr-defined]
    assert [(k, m) for k, m in logged if k.startswith("shortcut")] == [
        ("shortcut-deferred", f"{SHORTCUT} deferred: waiting for the IPsec SA to 198.51.100.12")
    ]
    logged.clear()
    rt.ipsec_up(SimpleNamespace(local=IPv4Address("198.51.100.11"), remote=S2))  # type: ignore[arg-type]
    assert rt.ipr.routes == [("replace", "192.168.2.0/24")]  # type: ignore[attr-defined]
    assert [(k, m) for k, m in logged if k.startswith("shortcut")] == [("shortcut", SHORTCUT)]
    logged.clear()
    rt.ipsec_down(SimpleNamespace(local=IPv4Address("198.51.100.11"), remote=S2))  # type: ignore[arg-type]
    assert rt.ipr.routes[-1] == ("del", "192.168.2.0/24")  # type: ignore[attr-defined]
    assert [(k, m) for k, m in logged if k.startswith("shortcut")] == [
        ("shortcut-deferred", f"{SHORTCUT} deferred: the IPsec SA to 198.51.100.12 went down")
    ]


def test_a_route_that_cannot_be_installed_is_not_logged_as_a_shortcut(loop) -> None:  # type: ignore[no-untyped-def]
    rt, _, logged = _runtime(loop, FakeIpsec())
    rt.open()
    _engine_shortcut(rt)
    rt.ipr.fail = True  # type: ignore[attr-defined]
    logged.clear()
    rt.ipsec_up(SimpleNamespace(local=IPv4Address("198.51.100.11"), remote=S2))  # type: ignore[arg-type]
    assert [k for k, _ in logged] == ["route-error"]


def test_held_nhrp_goes_again_on_a_timer_after_the_sa_came_up(loop) -> None:  # type: ignore[no-untyped-def]
    """The registration held for the hub's SA goes when it comes up and again
    5, 10 and 30 ms later (the hub's inbound SA may have been late); the
    hub's answer before that would have cancelled it."""
    rt, dp, _ = _runtime(loop, FakeIpsec())
    rt.open()
    rt.start()
    rt.ipsec_up(SimpleNamespace(local=IPv4Address("198.51.100.11"), remote=HUB))  # type: ignore[arg-type]
    assert _types(dp.sent) == [(HUB, PacketType.REGISTRATION_REQUEST)]
    loop.run_until_complete(asyncio.sleep(0.06))
    assert _types(dp.sent) == [(HUB, PacketType.REGISTRATION_REQUEST)] * 4
    assert len(set(dp.sent)) == 1 and rt.ipsec_stats["resent"] == 3
    loop.run_until_complete(asyncio.sleep(0.06))
    assert len(dp.sent) == 4  # no more
