"""A deterministic, virtual-time NBMA network of NHRP engines.

Engines exchange real encoded NHRP packets over simulated links with
latency, loss and NAT. A minimal forwarding model per node (LAN prefix,
routes, the bindings and shortcut routes the engine installs) lets a data
packet be followed hop by hop, so the phase 1/2/3 paths can be observed:
first packets through the hub, then the direct path once it forms.
Nothing reads the wall clock; the same seed gives the same run.

Why one module of this length: the simulated network (nodes, links, NAT,
routing tables, virtual time) is one model; its parts are small and only
make sense together.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from ipaddress import IPv4Address, IPv4Network
from itertools import count
from typing import Any

from dmvpn.wire import Address, IPv4Header

from .config import EngineConfig, NhsConfig
from .engine import Engine
from .outputs import (
    BindingAdded,
    BindingRemoved,
    Event,
    SendPacket,
    ShortcutAdded,
    ShortcutRemoved,
)
from .routing import Network, PrefixTable

VIA_NHS = "via-nhs"  # a route whose next hop is whichever NHS is up


class SimRouting:
    """Routes of a simulated node. A next hop may be VIA_NHS (a routing
    protocol converging on the live hub) or computed by a function (phase 2
    routes to every other spoke without storing N^2 entries)."""

    def __init__(self, node: SimNode) -> None:
        self.node = node
        self.routes = PrefixTable()
        self.local = PrefixTable()
        self.resolver: Callable[[IPv4Address], Address | None] | None = None

    def next_hop(self, destination: Address) -> Address | None:
        if not isinstance(destination, IPv4Address):
            return None
        if self.local.lookup(destination) is not None:
            return None
        if self.resolver is not None:
            nh = self.resolver(destination)
            if nh is not None:
                return nh
        found = self.routes.lookup(destination)
        if found is None:
            return None
        value = found[1]
        if value == VIA_NHS:
            nhs = self.node.engine.current_nhs()
            return nhs.protocol if nhs is not None else None
        return value if isinstance(value, IPv4Address) else None

    def local_prefix(self, destination: Address) -> Network | None:
        if not isinstance(destination, IPv4Address):
            return None
        found = self.local.lookup(destination)
        return found[0] if found is not None else None


@dataclass(eq=False)
class SimNode:
    name: str
    config: EngineConfig
    public: Address  # where others reach it (differs from config.nbma_address behind NAT)
    lan: IPv4Network | None
    is_hub: bool
    routing: SimRouting = field(init=False)
    engine: Engine = field(init=False)
    alive: bool = True
    bindings: dict[Address, Address] = field(default_factory=dict)
    shortcuts: PrefixTable = field(default_factory=PrefixTable)
    shortcut_count: int = 0
    wake: float | None = None

    def __post_init__(self) -> None:
        self.routing = SimRouting(self)
        self.engine = Engine(self.config, self.routing)

    @property
    def tunnel(self) -> Address:
        return self.config.protocol_address


@dataclass(frozen=True, slots=True)
class Trace:
    """The path one data packet took."""

    src: str
    dst: IPv4Address
    path: tuple[str, ...]
    delivered: bool
    via_hub: bool


class SimNetwork:
    def __init__(
        self, *, seed: int = 1, latency: float = 0.005, loss: float = 0.0, events: bool = True
    ) -> None:
        self.rng = random.Random(seed)
        self.latency = latency
        self.loss = loss
        self.link_loss: dict[tuple[str, str], float] = {}
        self.events_enabled = events
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        self.by_public: dict[Address, SimNode] = {}
        self.stats: Counter[str] = Counter()
        self.log: list[tuple[float, str, Event]] = []
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = count()

    # ------------------------------------------------------------ building

    def add_node(
        self,
        name: str,
        config: EngineConfig,
        *,
        lan: str | None = None,
        public: Address | None = None,
        is_hub: bool = False,
    ) -> SimNode:
        node = SimNode(
            name, config, public or config.nbma_address, IPv4Network(lan) if lan else None, is_hub
        )
        node.engine.events_enabled = self.events_enabled
        if node.lan is not None:
            node.routing.local.add(node.lan, True)
        self.nodes[name] = node
        self.by_public[node.public] = node
        return node

    def start(self, names: list[str] | None = None) -> None:
        for name in names or list(self.nodes):
            node = self.nodes[name]
            node.engine.start(self.now)
            self._after(node)

    # ------------------------------------------------------------ the clock

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._seq), action))

    def run_until(self, until: float, stop: Callable[[], bool] | None = None) -> float:
        """Process events up to virtual time ``until`` (or until ``stop()``)."""
        q = self._queue
        while q and q[0][0] <= until:
            when, _, action = heapq.heappop(q)
            self.now = max(self.now, when)
            action()
            if stop is not None and stop():
                return self.now
        self.now = max(self.now, until)
        return self.now

    def _after(self, node: SimNode) -> None:
        """Carry out what an engine asked for, and keep its timer scheduled."""
        for out in node.engine.pop_outputs():
            if isinstance(out, SendPacket):
                self._transmit(node, out)
            elif isinstance(out, BindingAdded):
                node.bindings[out.protocol] = out.nbma
            elif isinstance(out, BindingRemoved):
                if node.bindings.get(out.protocol) == out.nbma:
                    del node.bindings[out.protocol]
            elif isinstance(out, ShortcutAdded):
                node.shortcuts.add(out.prefix, (out.next_hop, out.nbma))
                node.shortcut_count += 1
                self.stats["shortcuts_formed"] += 1
            elif isinstance(out, ShortcutRemoved):
                node.shortcuts.remove(out.prefix)
                node.shortcut_count -= 1
            elif isinstance(out, Event):
                self.log.append((self.now, node.name, out))
        deadline = node.engine.get_timer()
        if deadline is not None and (node.wake is None or deadline < node.wake):
            node.wake = deadline
            self.at(deadline, partial(self._wake, node, deadline))

    def _wake(self, node: SimNode, deadline: float) -> None:
        if node.wake != deadline:
            return  # superseded by an earlier wake-up
        node.wake = None
        if not node.alive:
            return  # a dead node's timers stop; restart() starts a new engine
        node.engine.handle_timer(self.now)
        self._after(node)

    # ------------------------------------------------------------ the underlay

    def _transmit(self, sender: SimNode, out: SendPacket) -> None:
        self.stats["nhrp_sent"] += 1
        self.stats[f"nhrp_sent.{out.packet.type.name.lower()}"] += 1
        dst = self.by_public.get(out.nbma)
        if dst is None:
            self.stats["nhrp_unroutable"] += 1
            return
        loss = self.link_loss.get((sender.name, dst.name), self.loss)
        if loss and self.rng.random() < loss:
            self.stats["nhrp_lost"] += 1
            return
        src_seen = sender.public  # NAT rewrites the source on the way out
        self.at(self.now + self.latency, lambda: self._deliver(dst, out.data, src_seen))

    def _deliver(self, node: SimNode, data: bytes, src: Address) -> None:
        if not node.alive:
            self.stats["nhrp_to_dead_node"] += 1
            return
        node.engine.receive(data, src, self.now)
        self._after(node)

    # ------------------------------------------------------------ events

    def kill(self, name: str) -> None:
        node = self.nodes[name]
        node.alive = False
        node.bindings.clear()

    def restart(self, name: str) -> None:
        """A reboot: the node comes back with an empty cache."""
        node = self.nodes[name]
        node.engine = Engine(node.config, node.routing)
        node.engine.events_enabled = self.events_enabled
        node.bindings.clear()
        node.shortcuts = PrefixTable()
        node.wake = None
        node.alive = True
        node.engine.start(self.now)
        self._after(node)

    def change_nbma(self, name: str, new: Address) -> None:
        """The node's underlay address changes (no NAT in front of it)."""
        node = self.nodes[name]
        self.by_public.pop(node.public, None)
        node.public = new
        self.by_public[new] = node
        node.engine.set_nbma(new, self.now)
        self._after(node)

    # ------------------------------------------------------------ data plane

    def send_data(self, src: str, dst: str | IPv4Address) -> Trace:
        """Follow one packet from the LAN behind ``src`` to ``dst``."""
        dst_ip = IPv4Address(str(dst))
        node = self.nodes[src]
        src_ip = node.lan.network_address + 10 if node.lan else IPv4Address(str(node.tunnel))
        packet = IPv4Header(src=src_ip, dst=dst_ip, protocol=1).encode(bytes(8))
        path = [node.name]
        via_hub = False
        prev: SimNode | None = None
        for _ in range(8):
            if node.lan is not None and dst_ip in node.lan:
                break
            if prev is not None and node.is_hub:
                # Forwarded back out of the DMVPN interface it came in on.
                node.engine.hairpin(packet, prev.public, self.now)
                self._after(node)
            hop = self._next_node(node, dst_ip)
            if hop is None:
                return self._record(Trace(src, dst_ip, tuple(path), False, via_hub))
            prev, node = node, hop
            path.append(node.name)
            via_hub = via_hub or (node.is_hub and not (node.lan and dst_ip in node.lan))
        else:
            return self._record(Trace(src, dst_ip, tuple(path), False, via_hub))
        return self._record(Trace(src, dst_ip, tuple(path), True, via_hub))

    def _next_node(self, node: SimNode, dst: IPv4Address) -> SimNode | None:
        engine = node.engine
        found = node.shortcuts.lookup(dst)
        if found is not None:
            next_hop, nbma = found[1]  # type: ignore[misc]
            engine.binding_used(dst, self.now)
        else:
            next_hop = node.routing.next_hop(dst)
            if next_hop is None:
                return None
            nbma = node.bindings.get(next_hop)
            if nbma is None:
                # No binding: ask NHRP, and send via the hub meanwhile
                # (Cisco's temporary entry).
                engine.next_hop_unbound(next_hop, self.now)
                self._after(node)
                nhs = engine.current_nhs()
                if nhs is None:
                    return None
                nbma = nhs.nbma
            else:
                engine.binding_used(next_hop, self.now)
        hop = self.by_public.get(nbma) if nbma is not None else None
        if hop is None or not hop.alive:
            return None
        return hop

    def _record(self, trace: Trace) -> Trace:
        key = "data_delivered" if trace.delivered else "data_dropped"
        self.stats[key] += 1
        if trace.delivered:
            self.stats["data_via_hub" if trace.via_hub else "data_direct"] += 1
        return trace

    # ------------------------------------------------------------ views

    def registered(self, name: str) -> bool:
        return self.nodes[name].engine.registered

    def events(self, node: str | None = None, kind: str | None = None) -> list[Event]:
        return [
            e
            for _, n, e in self.log
            if (node is None or n == node) and (kind is None or e.kind == kind)
        ]


# ---------------------------------------------------------------- a standard cloud


def hub_tunnel(i: int) -> IPv4Address:
    return IPv4Address("10.0.0.1") + i


def spoke_tunnel(i: int) -> IPv4Address:
    return IPv4Address("10.0.1.0") + i + 1


def spoke_lan(i: int) -> IPv4Network:
    return IPv4Network((int(IPv4Address("10.128.0.0")) + i * 256, 24))


def spoke_nbma(i: int) -> IPv4Address:
    return IPv4Address("198.18.0.0") + i + 1  # RFC 2544 benchmarking range


LANS = IPv4Network("10.128.0.0/9")


def build_cloud(
    *,
    hubs: int = 1,
    spokes: int = 3,
    phase: int = 3,
    loss: float = 0.0,
    seed: int = 1,
    holding_time: int = 7200,
    unique: bool = True,
    events: bool = True,
    nat_spokes: frozenset[int] = frozenset(),
    latency: float = 0.005,
    authentication: bytes | None = None,
    max_nhs: int | None = None,
    hub_max_send: int = 100_000,
) -> SimNetwork:
    """Hubs hub1..hubH, spokes spoke1..spokeN with LAN 10.128.(i).0/24.

    Phase 1: spokes route every LAN via the hub and never resolve.
    Phase 2: spokes route each LAN via the owning spoke's tunnel address
    (OSPF broadcast / EIGRP without next-hop-self) and resolve that next hop.
    Phase 3: spokes route a summary via the hub; hubs redirect, spokes
    install shortcuts.
    """
    if phase not in (1, 2, 3):
        raise ValueError("phase must be 1, 2 or 3")
    net = SimNetwork(seed=seed, loss=loss, events=events, latency=latency)
    hub_nbmas = [IPv4Address("192.0.2.1") + i for i in range(hubs)]
    nhs = tuple(NhsConfig(hub_tunnel(i), hub_nbmas[i], priority=i) for i in range(hubs))

    def owner(dst: IPv4Address) -> Address | None:
        if dst not in LANS:
            return None
        index = (int(dst) - int(LANS.network_address)) >> 8
        return spoke_tunnel(index) if index < spokes else None

    for i in range(hubs):
        cfg = EngineConfig(
            protocol_address=hub_tunnel(i),
            nbma_address=hub_nbmas[i],
            server=True,
            holding_time=holding_time,
            redirect=phase == 3,
            authentication=authentication,
            request_id_start=1 + i * 1_000_000,
            max_send=hub_max_send,
        )
        node = net.add_node(f"hub{i + 1}", cfg, is_hub=True)
        node.routing.resolver = owner  # routes to every spoke LAN via its tunnel address
    for i in range(spokes):
        private = IPv4Address("172.16.0.0") + i + 1
        public = spoke_nbma(i)
        cfg = EngineConfig(
            protocol_address=spoke_tunnel(i),
            nbma_address=private if i in nat_spokes else public,
            nhs=nhs,
            max_nhs=max_nhs,
            holding_time=holding_time,
            registration_unique=unique,
            resolution=phase >= 2,
            shortcut=phase == 3,
            authentication=authentication,
            request_id_start=1 + (hubs + i) * 1_000_000 % 0xFFFFFFF,
        )
        node = net.add_node(f"spoke{i + 1}", cfg, lan=str(spoke_lan(i)), public=public)
        if phase == 2:
            node.routing.resolver = owner
        node.routing.routes.add(LANS, VIA_NHS)
        node.routing.routes.add("10.0.0.0/16", VIA_NHS)
    return net


def run_scenario(
    *,
    hubs: int = 1,
    spokes: int = 3,
    phase: int = 3,
    loss: float = 0.0,
    seed: int = 1,
    kill_hub_at: float | None = None,
    restart_hub_after: float | None = None,
    traffic_seconds: int = 10,
    holding_time: int = 7200,
    deadline: float = 600.0,
    hub_max_send: int = 100_000,
) -> dict[str, Any]:
    """Every spoke registers; spoke pairs (1,2), (3,4)... exchange a packet
    each way every second; optionally hub1 dies (and comes back)."""
    net = build_cloud(
        hubs=hubs,
        spokes=spokes,
        phase=phase,
        loss=loss,
        seed=seed,
        holding_time=holding_time,
        events=False,
        hub_max_send=hub_max_send,
    )
    spoke_names = [f"spoke{i + 1}" for i in range(spokes)]
    net.start()
    if kill_hub_at is not None:
        net.at(kill_hub_at, lambda: net.kill("hub1"))
        if restart_hub_after is not None:
            net.at(kill_hub_at + restart_hub_after, lambda: net.restart("hub1"))
    pending = set(spoke_names)

    def all_registered() -> bool:
        for name in list(pending):
            if net.registered(name):
                pending.discard(name)
        return not pending

    registered_at = None
    t = 0.0
    while t < deadline:
        t = net.run_until(t + 0.01)  # checked every 10 ms of virtual time
        if all_registered():
            registered_at = net.now
            break
    start = net.now + 1.0
    pairs = [(spoke_names[i], spoke_names[i + 1]) for i in range(0, spokes - 1, 2)]
    first_direct: dict[tuple[str, str], float] = {}
    for second in range(traffic_seconds):
        when = start + second
        net.run_until(when)
        for a, b in pairs:
            for x, y in ((a, b), (b, a)):
                y_lan = net.nodes[y].lan
                assert y_lan is not None
                trace = net.send_data(x, y_lan.network_address + 10)
                if trace.delivered and not trace.via_hub and (x, y) not in first_direct:
                    first_direct[(x, y)] = net.now - start
        net.run_until(when + 0.5)
    failure: dict[str, Any] | None = None
    if kill_hub_at is not None:
        failure = {"killed_at": kill_hub_at}
        net.run_until(max(net.now, kill_hub_at + 0.001))
        if restart_hub_after is not None:
            back_at = kill_hub_at + restart_hub_after
            failure["restarted_at"] = back_at

            def on_hub1(name: str) -> bool:
                # The hub's view: is this spoke in its registration table again?
                hub = net.nodes["hub1"].engine
                return hub.bound(net.nodes[name].tunnel) is not None

            # Spokes notice at their next refresh (a third of the holding
            # time) or when a retransmission finally gets through.
            limit = back_at + holding_time + 300
            net.run_until(max(net.now, back_at))
            while net.now < limit and not all(on_hub1(n) for n in spoke_names):
                net.run_until(net.now + 1.0)
            failure["spokes_back_on_hub1"] = sum(1 for n in spoke_names if on_hub1(n))
            failure["seconds_until_all_back"] = (
                round(net.now - back_at, 3) if all(on_hub1(n) for n in spoke_names) else None
            )
        else:
            net.run_until(net.now + 120)
        failure["spokes_registered_somewhere"] = sum(1 for n in spoke_names if net.registered(n))
    registered = sum(1 for n in spoke_names if net.registered(n))
    return {
        "hubs": hubs,
        "spokes": spokes,
        "phase": phase,
        "loss": loss,
        "registered_spokes": registered,
        "seconds_until_all_registered": (
            round(registered_at, 3) if registered_at is not None else None
        ),
        "shortcuts_formed": net.stats["shortcuts_formed"],
        "direct_paths": len(first_direct),
        "seconds_to_direct_path_max": (
            round(max(first_direct.values()), 3) if first_direct else None
        ),
        "packets_via_hub": net.stats["data_via_hub"],
        "packets_direct": net.stats["data_direct"],
        "packets_dropped": net.stats["data_dropped"],
        "nhrp_messages_sent": net.stats["nhrp_sent"],
        "nhrp_messages_lost": net.stats["nhrp_lost"],
        "nhrp_by_type": {
            k.split(".", 1)[1]: v
            for k, v in sorted(net.stats.items())
            if k.startswith("nhrp_sent.")
        },
        "hub_rate_limited": net.nodes["hub1"].engine.stats.get("tx.rate_limited", 0),
        "hub_failure": failure,
        "virtual_seconds": round(net.now, 3),
    }
