"""One DMVPN interface of a running node: its NHRP engines (two on a
dual-stack interface, one per protocol family), its IPsec gate and its data
plane. The engines decide; the gate decides what waits for a peer's SA; this
module carries their outputs out to the data plane, the routing table and
the listeners, and the data plane's inputs (and SA events) in.

The constructor touches nothing; `open()` creates the devices (root), then
`start()`, `stop()`, `close()`.

An interface in a VRF of its own (`namespace:`, docs/VRF.md) is opened,
started and stopped inside that namespace (nsenter.entered): every device
and socket made then (the TAP, the route monitor, neighbour writes, the
liveness and NAT probes, nftables) belongs to it, while the GRE socket is
made in the underlay's (`tunnel.namespace`, default the daemon's own).
`ipr` must then be a netlink socket of the VRF; `underlay_ipr` one of the
daemon's own namespace (the underlay watch, QoS's device lookup).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address, ip_network
from typing import Any, Protocol, TypeVar

from pyroute2 import IPRoute

from dmvpn.config import Interface
from dmvpn.dataplane.forwarding import FamilyDispatch
from dmvpn.dataplane.nbmamac import Nbma, nbma_mac
from dmvpn.dataplane.plane import DataPlane, DataPlaneError, ipv4_only
from dmvpn.ipsec import IpsecManager, PeerSa
from dmvpn.ipsec.charon import CharonError
from dmvpn.ipsec.gate import (
    Action,
    Bind,
    Defer,
    Deliver,
    IpsecGate,
    Route,
    Touch,
    Transmit,
    Unbind,
    Unroute,
)
from dmvpn.nhrp import (
    BindingAdded,
    BindingRemoved,
    Engine,
    EngineConfig,
    Event,
    EventKind,
    PeerGroup,
    ProtectPeer,
    SendPacket,
    ShortcutAdded,
    ShortcutRemoved,
    UnprotectPeer,
)
from dmvpn.nhrp.client import NhsState
from dmvpn.nhrp.outputs import shortcut_event
from dmvpn.nhrp.routing import RoutingView
from dmvpn.nsenter import entered
from dmvpn.wire import Address, address_text

from .liveness import LivenessProber
from .multicast import Item, MulticastTargets
from .natprobe import send_probe
from .qos import QosShaper, run_tc, tc_class_stats
from .routing import RTPROT_DMVPN, KernelRouting
from .underlay import UnderlayWatch

__all__ = ["InterfaceRuntime", "Log"]

NUD_PERMANENT = 0x80  # linux/neighbour.h: a binding's entry


class Log(Protocol):
    def __call__(self, kind: str, message: str, **details: Any) -> None: ...


_T = TypeVar("_T")

# (interface index, family) -> the engine's view of routing.
RoutingFactory = Callable[[int, int], RoutingView]


class InterfaceRuntime:
    def __init__(
        self,
        cfg: Interface,
        dataplane: DataPlane,
        ipr: IPRoute,
        log: Log,
        loop: asyncio.AbstractEventLoop,
        ipsec: IpsecManager | None = None,
        routing: RoutingFactory | None = None,
        follow_underlay: bool | None = None,
        underlay_ipr: IPRoute | None = None,
    ) -> None:
        self.cfg = cfg
        self.dataplane = dataplane
        self.ipr = ipr
        self.underlay_ipr = underlay_ipr if underlay_ipr is not None else ipr
        self.log = log
        self.loop = loop
        self.ipsec = ipsec
        self._routing = routing or MonitoredRouting(ipr, loop, log)
        # Follow underlay address changes (UnderlayWatch): by default where
        # the kernel is the routing view, that is, not under a test's fakes.
        self.follow_underlay = routing is None if follow_underlay is None else follow_underlay
        # IPsec proxy instantiation (docs/IPSEC.md): nothing goes to a peer,
        # and no binding to it is used for data, before its SA is up.
        binding = ipsec is not None and ipsec.cfg.binding_on
        self.gate = IpsecGate(protected=ipsec is not None, hold_inbound=binding)
        self.engines: list[Engine] = []
        self.hooks: FamilyDispatch  # the engines by family, once open()
        # The `map multicast` set, kept current binding by binding; the data
        # plane holds a reference to it (daemon/multicast.py).
        self.multicast = MulticastTargets(multicast_items(cfg))
        # Called with (interface name, event) for every engine Event: the
        # management API's /v1/events subscribers.
        self.listeners: list[Callable[[str, Event], None]] = []
        # Called when an NHS changes state, before the event is logged (so
        # that whoever reads the log finds the routes already moved): the
        # node's tracked static routes (daemon/static_routes.py).
        self.nhs_listeners: list[Callable[[], None]] = []
        self.liveness: LivenessProber | None = None  # nhrp.nhs_liveness
        self.liveness6: LivenessProber | None = None  # the same for IPv6 NHSes
        self._nhs_order: list[Nbma] = []  # NBMA addresses, the via-the-hub one first
        # Per-tunnel QoS (hub with `qos:`): made in open(), fed PeerGroup
        # and BindingRemoved.
        self.qos: QosShaper | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._underlay: UnderlayWatch | None = None
        self._probes = 0  # NAT probes sent (natprobe), their sequence numbers
        self._timer_at: float | None = None
        self._handlers: dict[type, Callable[[Any], None]] = {
            SendPacket: self._send,
            BindingAdded: self._bind,
            BindingRemoved: self._unbind,
            PeerGroup: self._peer_group,
            ShortcutAdded: lambda o: self._perform(self.gate.shortcut(o)),
            ShortcutRemoved: lambda o: self._perform(self.gate.unshortcut(o)),
            ProtectPeer: self._protect,
            UnprotectPeer: self._protect,
            Event: self._event,
        }
        self._actions: dict[type, Callable[[Any], None]] = {
            Transmit: lambda a: self.dataplane.send_nhrp(a.nbma, a.data),
            Deliver: lambda a: self.hooks.receive(a.data, a.src_nbma, a.now),
            Touch: lambda a: self._ipsec().touch(ipv4_only(self.cfg.tunnel.source), a.nbma),
            Bind: lambda a: self._use_binding(a.binding),
            Unbind: lambda a: self._drop_binding(a.binding),
            Route: lambda a: self._route("replace", a.shortcut, a.announce),
            Defer: lambda a: self._publish(shortcut_event(a.shortcut, a.why)),
            Unroute: lambda a: self._route("del", a.shortcut),
        }

    # ------------------------------------------------------------ life

    def _vrf(self) -> contextlib.AbstractContextManager[None]:
        """Inside the interface's VRF (its namespace), or nothing to do."""
        if self.cfg.namespace is None:
            return contextlib.nullcontext()
        return entered(self.cfg.namespace)

    def open(self) -> None:
        """Create the interface, then the engines that route through it."""
        with self._vrf():
            self._open()

    def _open(self) -> None:
        self.dataplane.open(self)
        index = self.dataplane.index
        self.engines = [Engine(self._engine_config(self.cfg, 4), self._routing(index, 4))]
        # Dual stack: a second engine for IPv6 (`ipv6 nhrp`), registering and
        # resolving on its own over the same GRE (docs/ARCHITECTURE.md).
        if self.cfg.ipv6_address is not None:
            self.engines.append(Engine(self._engine_config(self.cfg, 6), self._routing(index, 6)))
        self.hooks = FamilyDispatch(*self.engines)
        if self.cfg.qos is not None:
            # The shaper is on the underlay: with a front-door VRF, tc runs there.
            ns = self.cfg.tunnel.namespace
            self.qos = QosShaper(
                self.cfg.qos,
                gre_key=self.cfg.tunnel.key is not None,
                log=self.log,
                interface=self.cfg.name,
                device_of=self._underlay_device,
                run=lambda lines: on_underlay(run_tc, lines, ns),
                stats=lambda device: on_underlay(tc_class_stats, device, ns),
            )
        nhs = sorted(self.cfg.nhrp.nhs, key=lambda n: n.priority)
        self._nhs_order = list(dict.fromkeys(n.nbma for n in nhs))
        self.dataplane.set_nhs(self._nhs_order)
        self.dataplane.set_multicast(self.multicast)

    def nhs_states(self) -> list[Any]:
        """This interface's NHSes, every family (its own tracked routes)."""
        return [s for e in self.engines for s in e.nhs_states()]

    @property
    def engine(self) -> Engine:
        return self.engines[0]

    @property
    def engine6(self) -> Engine | None:
        return self.engines[1] if len(self.engines) > 1 else None

    @property
    def forwarder(self) -> DataPlane:  # the data plane's counters, as the API names them
        return self.dataplane

    @property
    def ipsec_stats(self) -> dict[str, int]:
        return self.gate.stats

    def now(self) -> float:
        return self.loop.time()

    def start(self) -> None:
        with self._vrf():
            self._start()
        if not self.follow_underlay:
            return
        source = self.cfg.tunnel.source
        # The underlay is the daemon's own namespace (or tunnel.namespace's
        # socket): watched from home, not from the VRF.
        self._underlay = UnderlayWatch(self.underlay_ipr, self.loop, source, self.move)
        try:
            self._underlay.attach()
        except OSError as exc:
            self._underlay.close()
            self._underlay = None
            self.log("underlay", f"not following underlay address changes: {exc.strerror}")

    def _start(self) -> None:
        if self.ipsec is not None:
            self.protect_path()
        self.dataplane.start(self.loop)
        for engine in self.engines:
            engine.start(self.now())
        self.apply()
        self._start_liveness()

    def move(self, source: IPv4Address | IPv6Address) -> None:
        """Our underlay address changed (UnderlayWatch): GRE from the new
        one, register anew at once, and purge the direct peers that still
        send to the old one (Engine.set_nbma)."""
        old = self.cfg.tunnel.source
        try:
            self.dataplane.move_source(source)
        except DataPlaneError as exc:
            self.log("underlay-moved", f"underlay address {old} -> {source}: {exc}; restart")
            return
        tunnel = self.cfg.tunnel.model_copy(update={"source": source})
        self.cfg = self.cfg.model_copy(update={"tunnel": tunnel})
        self.log(
            "underlay-moved",
            f"underlay address {old} -> {source}: registering anew",
            interface=self.cfg.name,
            old=str(old),
            new=str(source),
        )
        if self.ipsec is not None:
            self.log("underlay-moved", "IPsec SAs do not follow an address change yet")
        for engine in self.engines:
            engine.set_nbma(source, self.now())
        self.apply()

    def _start_liveness(self) -> None:
        live = self.cfg.nhrp.nhs_liveness
        if live is None:
            return
        for version in (4, 6):
            nhs = [n.address for n in self.cfg.nhrp.nhs if n.address.version == version]
            if not nhs:
                continue
            prober = LivenessProber(
                self.cfg.name, nhs, live.interval, live.multiplier, self._nhs_lost, self._nhs_echo
            )
            try:
                prober.start(self.loop)
            except OSError as exc:
                self.log(
                    "liveness-error", f"{self.cfg.name}: no IPv{version} NHS liveness check: {exc}"
                )
                continue
            if version == 4:
                self.liveness = prober
            else:
                self.liveness6 = prober

    def _nhs_echo(self, nhs: IPv4Address | IPv6Address) -> None:
        # Once per arming (first reply, or first after a loss): not per echo.
        self.log(
            "nhs-echo",
            f"NHS {nhs} answers liveness echoes",
            interface=self.cfg.name,
            nhs=str(nhs),
        )

    def _nhs_lost(self, nhs: IPv4Address | IPv6Address, reason: str) -> None:
        engine = self.engine6 if nhs.version == 6 else self.engine
        if engine is not None and engine.nhs_unreachable(nhs, self.now(), reason):
            self.apply()

    def stop(self) -> None:
        with self._vrf():
            self._stop()

    def _stop(self) -> None:
        for prober in (self.liveness, self.liveness6):
            if prober is not None:
                prober.stop()
        if self._underlay is not None:
            self._underlay.close()
        for engine in self.engines:
            engine.stop(self.now())
        self.apply()
        self.dataplane.stop()
        if self._timer is not None:
            self._timer.cancel()
        if isinstance(self._routing, MonitoredRouting):  # before the interface goes
            self._routing.close()
        if self.qos is not None:
            self.qos.close()
        self.dataplane.close()

    def retune(self, cfg: Interface) -> None:
        """New values for the live knobs (SIGHUP); tunnels stay up."""
        self.cfg = cfg
        for family, engine in zip((4, 6), self.engines, strict=False):
            engine.retune(self._engine_config(cfg, family), self.now())
        self.dataplane.set_redirect(cfg.nhrp.redirect)
        self.multicast.configure(multicast_items(cfg))
        self.apply()

    # ------------------------------------------------------------ IPsec

    def _ipsec(self) -> IpsecManager:
        assert self.ipsec is not None  # the gate only holds when protected
        return self.ipsec

    def _engine_config(self, cfg: Interface, family: int) -> EngineConfig:
        ec = cfg.engine_config(family)
        if self.ipsec is not None and self.ipsec.cfg.binding_on:
            ec = replace(ec, identity_binding=True)
        return ec

    def protect_path(self) -> None:
        """GRE only where the SAs apply: kernel-libipsec's device, or past
        XFRM block policies with the kernel's ESP."""
        ipsec = self._ipsec()
        device = None if ipsec.kernel_esp else ipsec.cfg.device
        try:
            self.dataplane.protect_path(device)
        except DataPlaneError as exc:
            raise CharonError(f"{exc} (where GRE meets the SAs)") from None

    def ipsec_up(self, peer: PeerSa) -> None:
        """The SA to peer.remote is up: what waited goes, its bindings are used."""
        for engine in self.engines:
            engine.set_claims(peer.remote, self._ipsec().claims(peer))
        self._perform(self.gate.sa_up(peer.remote, self.now()))
        self.apply()

    def ipsec_down(self, peer: PeerSa) -> None:
        """The SA went: its bindings wait again (data goes via the hub)."""
        for engine in self.engines:
            engine.set_claims(peer.remote, None)
        self._perform(self.gate.sa_down(peer.remote))
        self.apply()

    # ------------------------------------------------------------ data plane hooks

    def receive(self, data: bytes, src_nbma: Address, now: float) -> None:
        if self.gate.passthrough:  # what gate.receive would say, without the list
            self.hooks.receive(data, src_nbma, now)
        else:
            self._perform(self.gate.receive(data, src_nbma, now))

    def next_hop_unbound(self, next_hop: Address, now: float) -> None:
        self.hooks.next_hop_unbound(next_hop, now)

    def hairpin(self, packet: bytes, from_nbma: Address, now: float) -> None:
        self.hooks.hairpin(packet, from_nbma, now)

    def binding_used(self, addr: Address, now: float) -> None:
        self.hooks.binding_used(addr, now)

    def batch_done(self) -> None:
        self.apply()

    # ------------------------------------------------------------ outputs

    def apply(self) -> None:
        """Carry out what the engines asked for, and re-arm the timer."""
        for engine in self.engines:
            for out in engine.pop_outputs():
                self._handlers[type(out)](out)
        timers = [*(e.get_timer() for e in self.engines), self.gate.deadline()]
        deadlines = [d for d in timers if d is not None]
        deadline = min(deadlines) if deadlines else None
        if deadline is not None and deadline != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        for engine in self.engines:
            engine.handle_timer(self.now())
        self._perform(self.gate.on_timer(self.now()))
        self.apply()

    def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            self._actions[type(action)](action)

    # An output naming no address (raw bytes) has nowhere to go; the engine
    # drops packets of the other NBMA family (nhrp/family.py).
    def _send(self, out: SendPacket) -> None:
        if isinstance(out.nbma, IPv4Address | IPv6Address):
            if self.gate.passthrough:  # gate.send's [Transmit], without the list
                self.dataplane.send_nhrp(out.nbma, out.data)
            else:
                self._perform(self.gate.send(out.nbma, out.data))

    def _bind(self, out: BindingAdded) -> None:
        if isinstance(out.nbma, IPv4Address | IPv6Address):
            self._perform(self.gate.bind(out))

    def _unbind(self, out: BindingRemoved) -> None:
        if self.qos is not None:
            self.qos.unbind(out.protocol, out.nbma)
        self._perform(self.gate.unbind(out))

    def _peer_group(self, out: PeerGroup) -> None:
        if self.qos is not None:
            self.qos.peer_group(out.protocol, out.nbma, out.group)
        elif out.group is not None:
            self.log(
                "qos-unknown-group",
                f"{address_text(out.nbma)} registered in NHRP group {out.group!r}, but "
                f"{self.cfg.name} has no qos policies; served unshaped",
                interface=self.cfg.name,
                nbma=address_text(out.nbma),
                group=out.group,
            )

    def _underlay_device(self, nbma: Nbma) -> str | None:
        """The device the kernel routes ``nbma`` through (the underlay egress),
        asked in the underlay namespace with a front-door VRF."""
        if self.cfg.tunnel.namespace is not None:
            out = subprocess.run(
                ["ip", "-n", self.cfg.tunnel.namespace, "-o", "route", "get", str(nbma)],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()
            return out[out.index("dev") + 1] if "dev" in out[:-1] else None
        try:
            routes = self.underlay_ipr.route("get", dst=str(nbma))
            index = routes[0].get_attr("RTA_OIF")
            links = self.underlay_ipr.get_links(index)
        except Exception:
            return None
        return links[0].get_attr("IFLA_IFNAME") if links else None

    def _protect(self, out: ProtectPeer | UnprotectPeer) -> None:
        if self.ipsec is None or not isinstance(out.nbma, IPv4Address):
            return  # no IPsec: bindings are used at once
        if isinstance(out, ProtectPeer):
            self.ipsec.want(ipv4_only(self.cfg.tunnel.source), out.nbma)
        else:
            self.ipsec.release(ipv4_only(self.cfg.tunnel.source), out.nbma)

    def _event(self, out: Event) -> None:
        if out.kind in (EventKind.NHS_UP, EventKind.NHS_DOWN, EventKind.NHS_STANDBY):
            self._reorder_nhs()
            for listener in self.nhs_listeners:
                listener()
        # A shortcut the gate holds was reported as deferred (Defer); `shortcut`
        # follows when the route is installed.
        if out.kind is not EventKind.SHORTCUT or not self.gate.holds(
            ip_network(out.details["prefix"])
        ):
            self._publish(out)

    def _reorder_nhs(self) -> None:
        """While a next hop is unbound, ARP and ND for it are answered with
        the first NHS's MAC (via the hub): that must be an NHS that is up.
        When the first one changes, the kernel's entries still naming the
        old one (not bindings: those are permanent) are deleted, so the next
        packet asks again and goes via the new NHS. Without this, a dual hub
        cloud whose routes name another spoke (BGP, OSPF broadcast) sent
        such traffic to a dead hub until the entry aged out (issue 12)."""
        states = [s for e in self.engines for s in e.nhs_states()]
        order = sorted(states, key=lambda s: (s.state is not NhsState.UP, s.priority))
        nbmas: list[Nbma] = list(
            dict.fromkeys(s.nbma for s in order if isinstance(s.nbma, IPv4Address | IPv6Address))
        )
        old = self._nhs_order
        if not nbmas or nbmas == old:
            return
        self._nhs_order = nbmas
        self.dataplane.set_nhs(nbmas)
        if old and old[0] != nbmas[0]:
            self._flush_via(old[0])

    def _flush_via(self, nbma: Nbma) -> None:
        mac = ":".join(f"{b:02x}" for b in nbma_mac(nbma))
        try:
            for msg in self.ipr.get_neighbours(ifindex=self.dataplane.index):
                if msg.get_attr("NDA_LLADDR") != mac or msg["state"] & NUD_PERMANENT:
                    continue
                self.ipr.neigh(
                    "del",
                    dst=msg.get_attr("NDA_DST"),
                    ifindex=self.dataplane.index,
                    family=msg["family"],
                )
        except Exception as exc:  # the entries then age out, as before
            self.log("neighbour-error", f"{self.cfg.name}: via {nbma}: {exc}")

    def _publish(self, out: Event) -> None:
        self.log(out.kind, out.message, interface=self.cfg.name, **out.details)
        for listener in self.listeners:
            listener(self.cfg.name, out)

    def _use_binding(self, out: BindingAdded) -> None:
        assert isinstance(out.nbma, IPv4Address | IPv6Address)
        self.dataplane.bind(out.protocol, out.nbma)
        if out.type == "cached" and self.engine.public_nbma is not None:
            # After the data plane's neighbour write (queued with call_soon,
            # dataplane/neighbours.py): sent now, the probe would follow the
            # kernel's old entry (the hub) and open nothing.
            self.loop.call_soon(self._nat_probe, out.protocol)
        if out.type == "dynamic":
            self.multicast.bind(out.protocol, out.nbma)
        else:  # a dynamic binding replaced by another type
            self.multicast.unbind(out.protocol)

    def _nat_probe(self, peer: Address) -> None:
        """Behind NAT, open our NAT towards a new direct peer (natprobe)."""
        if not isinstance(peer, IPv4Address) or peer not in self.cfg.address.network:
            return  # a LAN prefix's entry: its next hop's own binding is probed
        self._probes += 1
        with self._vrf():  # the probe's socket is bound to our TAP
            sent = send_probe(self.cfg.name, peer, self._probes)
        self.log(
            "nat-probe",
            f"{'sent' if sent else 'could not send'} a probe to {peer} to open our NAT",
            interface=self.cfg.name,
            peer=str(peer),
            sent=sent,
        )

    def _drop_binding(self, out: BindingRemoved) -> None:
        self.dataplane.unbind(out.protocol)
        self.multicast.unbind(out.protocol)

    def _route(self, op: str, out: ShortcutAdded | ShortcutRemoved, announce: bool = False) -> None:
        if op == "replace":
            # The next hop's neighbour entry first (queued by its binding just
            # before): the first packet the route takes then finds it, rather
            # than making the kernel resolve it (issue 18).
            self.dataplane.flush_neighbours()
        error = shortcut_route(self.ipr, self.dataplane.index, op, out)
        if error is not None and op == "replace":
            self.log("route-error", f"could not install shortcut {out.prefix}: {error}")
        elif announce and isinstance(out, ShortcutAdded):
            self._publish(shortcut_event(out))
        # A failed delete: already gone (the interface went down, or an operator).


def on_underlay(func: Callable[[Any, str | None], _T], arg: Any, namespace: str | None) -> _T:
    """``func(arg, namespace)`` from the daemon's own namespace: tc without
    `-n` must not run in the VRF an interface is opened or stopped in."""
    with entered(None):
        return func(arg, namespace)


def shortcut_route(
    ipr: IPRoute, index: int, op: str, out: ShortcutAdded | ShortcutRemoved
) -> Exception | None:
    """A shortcut route through the interface, marked as ours (RTPROT_DMVPN);
    what went wrong, if anything."""
    try:
        ipr.route(
            op,
            dst=str(out.prefix),
            gateway=address_text(out.next_hop),
            oif=index,
            proto=RTPROT_DMVPN,
        )
    except Exception as exc:
        return exc
    return None


def multicast_items(cfg: Interface) -> list[Item]:
    """`map multicast` resolved but for the dynamic peers: `nhs` is the NHSes
    by priority, static NBMA addresses as given, `dynamic` stays a marker."""
    items: list[Item] = []
    for item in cfg.nhrp.map_multicast:
        if item == "dynamic":
            items.append("dynamic")
        elif item == "nhs":
            items.append(tuple(n.nbma for n in sorted(cfg.nhrp.nhs, key=lambda n: n.priority)))
        elif isinstance(item, IPv4Address | IPv6Address):
            items.append((item,))
    return items


class MonitoredRouting:
    """Makes the engines' routing views: the kernel's routes through the
    interface, kept current by a route monitor (netlink events) so that a
    lookup is a table read, not a syscall on the engine's path."""

    def __init__(self, ipr: IPRoute, loop: asyncio.AbstractEventLoop, log: Log) -> None:
        self.ipr, self.loop, self.log = ipr, loop, log
        self.views: list[KernelRouting] = []

    def __call__(self, index: int, family: int) -> RoutingView:
        view = KernelRouting(self.ipr, index, family)
        try:
            view.attach(self.loop, log=self.log)
        except OSError as exc:  # lookups then ask the kernel, as before
            self.log("route-monitor", f"no route monitor for IPv{family}: {exc.strerror}")
        self.views.append(view)
        return view

    def close(self) -> None:
        for view in self.views:
            view.close()
