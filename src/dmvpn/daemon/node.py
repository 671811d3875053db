"""One process per node: every DMVPN interface of the config file gets a TAP
device, a raw GRE socket, an NHRP engine (two on a dual-stack interface: one
per protocol family) and a forwarder, driven by asyncio.
The engine decides; this module only carries its outputs out."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any, TextIO

from pyroute2 import IPRoute

from dmvpn.api.server import ApiError, ApiServer, default_socket_path
from dmvpn.config import ConfigError, Interface, NodeConfig, load_config
from dmvpn.dataplane.devices import MAX_FRAME, GreSocket, Tap
from dmvpn.dataplane.forwarding import FamilyDispatch, Forwarder, nbma_mac
from dmvpn.ipsec import IpsecManager, PeerSa
from dmvpn.ipsec.charon import CharonError
from dmvpn.nhrp import (
    BindingAdded,
    BindingRemoved,
    Engine,
    EngineConfig,
    Event,
    ProtectPeer,
    SendPacket,
    ShortcutAdded,
    ShortcutRemoved,
    UnprotectPeer,
)
from dmvpn.wire import Address, address_text
from dmvpn.wire.ethernet import mac_text

from .reload import plan_reload

try:  # the optional C fast path (setup.py); pure Python without it
    from dmvpn.dataplane import _fastpath  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - no compiler at install time
    _fastpath = None
from .routing import KernelRouting

# Route protocol number for shortcut routes, so routing daemons leave them
# alone (nhrpd's routes use zebra's 191; iproute2 shows ours as "177").
RTPROT_DMVPN = 177
NUD_PERMANENT = 0x80
# ifa_flags: no duplicate address detection for the tunnel address (only we
# own it on the cloud; nothing there would answer a probe anyway).
IFA_F_NODAD = 0x02
# Per-peer totals from the C pump: tx packets, tx bytes, rx packets, rx bytes.
_TOTALS = struct.Struct("=4Q")
# Drain at most this many packets per readiness callback, then yield.
BATCH = 64
# NHRP packets held per peer while its SA comes up (oldest dropped beyond).
HELD_PER_PEER = 16


class Logger:
    """Structured logs: one JSON object per line."""

    def __init__(self, node: str, out: TextIO = sys.stderr) -> None:
        self.node = node
        self.out = out

    def __call__(self, kind: str, message: str, **details: Any) -> None:
        record = {"ts": round(time.time(), 3), "node": self.node, "kind": kind,
                  "message": message, **details}  # fmt: skip
        self.out.write(json.dumps(record, default=str) + "\n")
        self.out.flush()


class InterfaceRuntime:
    def __init__(self, cfg: Interface, ipr: IPRoute, log: Logger,
                 loop: asyncio.AbstractEventLoop,
                 ipsec: IpsecManager | None = None) -> None:  # fmt: skip
        self.cfg = cfg
        # IPsec proxy instantiation (docs/IPSEC.md): with a manager, nothing
        # is sent to a peer, and no binding to it is used for data, before
        # its SA is up. What waits is kept here.
        self.ipsec = ipsec
        self.held: dict[IPv4Address, deque[bytes]] = {}
        self.pending_binds: dict[object, BindingAdded] = {}
        self.pending_shortcuts: dict[IPv4Network | IPv6Network, ShortcutAdded] = {}
        self.applied_binds: dict[object, BindingAdded] = {}
        self.applied_shortcuts: dict[IPv4Network | IPv6Network, ShortcutAdded] = {}
        self.ipsec_stats: dict[str, int] = {"held": 0, "held_dropped": 0, "deferred": 0}
        self.ipr = ipr
        self.log = log
        self.loop = loop
        # A TAP with a virtio_net_hdr lets the C pump take TSO/checksum
        # offloads (devices.py); only worth it where the pump will run.
        self.tap = Tap(cfg.name, vnet_hdr=_fastpath is not None and not cfg.nhrp.redirect)
        self.gre = GreSocket(cfg.tunnel.source)
        self.index: int = ipr.link_lookup(ifname=cfg.name)[0]
        mac = nbma_mac(cfg.tunnel.source)
        if cfg.ipv6_address is not None:
            self._ipv6_sysctls()  # before the link comes up and starts DAD/RS
        ipr.link("set", index=self.index, address=mac_text(mac),
                 mtu=cfg.mtu, state="up")  # fmt: skip
        ipr.addr("replace", index=self.index, address=str(cfg.address.ip),
                 prefixlen=cfg.address.network.prefixlen)  # fmt: skip
        if cfg.ipv6_address is not None:
            ipr.addr("replace", index=self.index, address=str(cfg.ipv6_address.ip),
                     prefixlen=cfg.ipv6_address.network.prefixlen, family=socket.AF_INET6,
                     flags=IFA_F_NODAD)  # fmt: skip
        else:
            # An IPv4-only overlay: keep the kernel's IPv6 chatter (router
            # solicitations, MLD) off the cloud.
            try:
                Path(f"/proc/sys/net/ipv6/conf/{cfg.name}/disable_ipv6").write_text("1")
            except OSError:
                pass  # IPv6 compiled out or sysctl read-only: harmless
        self.engine = Engine(self._engine_config(cfg), KernelRouting(ipr, self.index))
        # Dual stack: a second engine for IPv6 (`ipv6 nhrp`), registering and
        # resolving on its own over the same GRE (docs/ARCHITECTURE.md).
        self.engine6: Engine | None = None
        if cfg.ipv6_address is not None:
            self.engine6 = Engine(self._engine_config(cfg, 6),
                                  KernelRouting(ipr, self.index, 6))  # fmt: skip
        self.hooks = FamilyDispatch(self.engine, self.engine6)
        self.forwarder = Forwarder(
            engine=self.hooks, tunnel_address=cfg.address.ip, local_mac=mac,
            key=cfg.tunnel.key, send_gre=self.gre.send, write_tap=self.tap.write,
            redirect=cfg.nhrp.redirect,
            tunnel_address6=cfg.ipv6_address.ip if cfg.ipv6_address is not None else None,
        )  # fmt: skip
        # The C fast path moves plain unicast IPv4; a hub with redirect must
        # see every forwarded packet (hairpins), so it stays on Python.
        self.fast = _fastpath if (_fastpath is not None and not cfg.nhrp.redirect) else None
        self.key = cfg.tunnel.key if cfg.tunnel.key is not None else -1
        self._pump: threading.Thread | None = None
        self.forwarder.nhs = list(
            dict.fromkeys(n.nbma for n in sorted(cfg.nhrp.nhs, key=lambda n: n.priority))
        )
        # NHRP from a peer whose identity is not known yet waits for it
        # (identity binding): the SA exists, the manager just has not read it.
        self.inbound: dict[IPv4Address, deque[tuple[bytes, float]]] = {}
        if ipsec is not None and ipsec.cfg.binding_on:
            self.forwarder.engine = _IdentityGate(self)
        self.dynamic: set[IPv4Address] = set()
        # Called with (interface name, event) for every engine Event: the
        # management API's /v1/events subscribers.
        self.listeners: list[Callable[[str, Event], None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._update_multicast()

    # ------------------------------------------------------------ plumbing

    def now(self) -> float:
        return self.loop.time()

    @property
    def engines(self) -> list[Engine]:
        """The IPv4 engine, then the IPv6 one when the overlay is dual-stack."""
        return [self.engine] if self.engine6 is None else [self.engine, self.engine6]

    def _ipv6_sysctls(self) -> None:
        """IPv6 on, without the chatter nobody on an NBMA cloud answers:
        no router solicitations, no DAD; link-local addresses from the MAC
        (EUI-64), which nd.link_local_nbma maps back to the NBMA address."""
        base = Path(f"/proc/sys/net/ipv6/conf/{self.cfg.name}")
        for name, value in (("disable_ipv6", "0"), ("accept_dad", "0"),
                            ("router_solicitations", "0"), ("addr_gen_mode", "0")):  # fmt: skip
            try:
                (base / name).write_text(value)
            except OSError as exc:
                self.log("sysctl-error", f"{base / name}: {exc.strerror}")

    def start(self) -> None:
        if self.ipsec is not None:
            self.bind_device()
        self._start_io()
        for engine in self.engines:
            engine.start(self.now())
        self.apply()

    def stop(self) -> None:
        for engine in self.engines:
            engine.stop(self.now())
        self.apply()
        self._stop_io()
        if self._timer is not None:
            self._timer.cancel()
        self.tap.close()  # the kernel removes the interface and its routes
        self.gre.close()

    # ------------------------------------------------------------ IPsec

    def _engine_config(self, cfg: Interface, family: int = 4) -> EngineConfig:
        ec = cfg.engine_config(family)
        if self.ipsec is not None and self.ipsec.cfg.binding_on:
            ec = replace(ec, identity_binding=True)
        return ec

    def bind_device(self) -> None:
        """GRE only through kernel-libipsec's TUN device: what we send to a
        peer without an SA dies there (no policy), and cleartext GRE arriving
        on the underlay never reaches this socket."""
        assert self.ipsec is not None
        device = self.ipsec.cfg.device
        try:
            self.gre.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                                     device.encode())  # fmt: skip
        except OSError as exc:
            raise CharonError(f"cannot bind GRE to {device} (kernel-libipsec's device): "
                              f"{exc.strerror}") from None  # fmt: skip

    def _sa_up(self, nbma: IPv4Address) -> bool:
        return self.ipsec is None or self.ipsec.is_up(self.cfg.tunnel.source, nbma)

    def ipsec_up(self, peer: PeerSa) -> None:
        """The SA to peer.remote is up: send what waited, use its bindings."""
        nbma = peer.remote
        assert self.ipsec is not None
        for engine in self.engines:
            engine.set_claims(nbma, self.ipsec.claims(peer))
        now = self.now()
        for data, _ in self.inbound.pop(nbma, ()):
            self.hooks.receive(data, nbma, now)
        for data in self.held.pop(nbma, ()):
            self.forwarder.send_nhrp(nbma, data)
        for key, out in list(self.pending_binds.items()):
            if out.nbma == nbma:
                del self.pending_binds[key]
                self._bind(out)
        for prefix, sc in list(self.pending_shortcuts.items()):
            if sc.nbma == nbma:
                del self.pending_shortcuts[prefix]
                self._shortcut(sc)
        self.apply()

    def ipsec_down(self, peer: PeerSa) -> None:
        """The SA went: its bindings wait again (data goes via the hub)."""
        nbma = peer.remote
        for engine in self.engines:
            engine.set_claims(nbma, None)
        for prefix, sc in list(self.applied_shortcuts.items()):
            if sc.nbma == nbma:
                self._unshortcut(ShortcutRemoved(sc.prefix, sc.next_hop))
                self.pending_shortcuts[prefix] = sc
        for key, out in list(self.applied_binds.items()):
            if out.nbma == nbma:
                self._unbind(BindingRemoved(out.protocol, out.nbma))
                self.pending_binds[key] = out
        self.apply()

    # ------------------------------------------------------------ packet I/O

    def _start_io(self) -> None:
        """The C pump on a thread of its own when built (and not a redirecting
        hub, which must see every forwarded packet); else asyncio readers."""
        if self.fast is not None:
            self._punt_r, punt_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self._punt_w = punt_w
            self._punt_r.setblocking(False)
            self._stop_r, self._stop_w = os.pipe()
            args = (self.tap.fd, self.gre.fileno(), self.key, self.forwarder.local_mac,
                    punt_w.fileno(), self._stop_r, self.tap.vnet_hdr)  # fmt: skip
            self._pump = threading.Thread(target=self.fast.pump, args=args, daemon=True,
                                          name=f"pump-{self.cfg.name}")  # fmt: skip
            self._pump.start()
            if self.tap.vnet_hdr:
                self.tap.set_offloads(True)
            self.loop.add_reader(self._punt_r.fileno(), self._on_punt)
        else:
            self.loop.add_reader(self.tap.fd, self._on_tap)
            self.loop.add_reader(self.gre.fileno(), self._on_gre)

    def _stop_io(self) -> None:
        if self._pump is not None:
            if self.tap.vnet_hdr:
                self.tap.set_offloads(False)  # the Python path takes ordinary frames only
            os.write(self._stop_w, b"x")
            self._pump.join(timeout=5)
            self.loop.remove_reader(self._punt_r.fileno())
            self._on_punt()  # what the pump handed over last (its final totals)
            for fd in (self._stop_r, self._stop_w):
                os.close(fd)
            self._punt_r.close()
            self._punt_w.close()
            self._pump = None
        else:
            self.loop.remove_reader(self.tap.fd)
            self.loop.remove_reader(self.gre.fileno())

    def _on_punt(self) -> None:
        """What the C pump leaves to Python: 'T' frames from the TAP, 'G'
        GRE packets (with their source), 'S' per-peer totals."""
        now = self.now()
        fw = self.forwarder
        for _ in range(BATCH):
            try:
                msg = self._punt_r.recv(MAX_FRAME + 8)
            except (BlockingIOError, OSError):
                break
            tag = msg[:1]
            if tag == b"T":
                fw.from_tap(msg[1:], now)
            elif tag == b"G":
                fw.from_gre(msg[5:], IPv4Address(msg[1:5]), now)
            elif tag == b"S":
                for off in range(1, len(msg) - 39, 40):
                    nbma = msg[off : off + 4]
                    txp, txb, rxp, rxb = _TOTALS.unpack_from(msg, off + 4)
                    dst = msg[off + 36 : off + 40]
                    fw.fast_tap_result([(nbma, txp, txb, dst)], [], now)
                    fw.fast_gre_result([(nbma, rxp, rxb, dst)], [], now)
        self.apply()

    def _on_tap(self) -> None:
        now = self.now()
        for _ in range(BATCH):
            frame = self.tap.read()
            if frame is None:
                break
            self.forwarder.from_tap(frame, now)
        self.apply()

    def _on_gre(self) -> None:
        now = self.now()
        for _ in range(BATCH):
            got = self.gre.recv()
            if got is None:
                break
            self.forwarder.from_gre(got[0], got[1], now)
        self.apply()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        for engine in self.engines:
            engine.handle_timer(self.now())
        self.apply()

    def retune(self, cfg: Interface) -> None:
        """New values for the live knobs (SIGHUP); tunnels stay up."""
        self.cfg = cfg
        self.engine.retune(self._engine_config(cfg), self.now())
        if self.engine6 is not None:
            self.engine6.retune(self._engine_config(cfg, 6), self.now())
        self.forwarder.redirect = cfg.nhrp.redirect
        fast = _fastpath if (_fastpath is not None and not cfg.nhrp.redirect) else None
        if (fast is None) != (self.fast is None):
            self._stop_io()  # a hub that starts redirecting must see every packet
            self.fast = fast
            self._start_io()
        self._update_multicast()
        self.apply()

    # ------------------------------------------------------------ outputs

    def apply(self) -> None:
        handlers: dict[type, Callable[[Any], None]] = {
            SendPacket: self._send, BindingAdded: self._bind, BindingRemoved: self._unbind,
            ShortcutAdded: self._shortcut, ShortcutRemoved: self._unshortcut,
            ProtectPeer: self._protect, UnprotectPeer: self._protect, Event: self._event,
        }  # fmt: skip
        for engine in self.engines:
            for out in engine.pop_outputs():
                handlers[type(out)](out)
        deadlines = [d for d in (e.get_timer() for e in self.engines) if d is not None]
        deadline = min(deadlines) if deadlines else None
        if deadline is not None and deadline != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _send(self, out: SendPacket) -> None:
        if not isinstance(out.nbma, IPv4Address):
            return
        if not self._sa_up(out.nbma):
            assert self.ipsec is not None
            self.ipsec.touch(self.cfg.tunnel.source, out.nbma)
            queue = self.held.setdefault(out.nbma, deque(maxlen=HELD_PER_PEER))
            if len(queue) == HELD_PER_PEER:
                self.ipsec_stats["held_dropped"] += 1
            queue.append(out.data)
            self.ipsec_stats["held"] += 1
            return
        self.forwarder.send_nhrp(out.nbma, out.data)

    def _bind(self, out: BindingAdded) -> None:
        if not isinstance(out.nbma, IPv4Address):
            return
        if not self._sa_up(out.nbma):
            # Proxy instantiation: the binding is used for data only once
            # the SA is up; until then traffic keeps going via the hub.
            self.pending_binds[out.protocol] = out
            self.ipsec_stats["deferred"] += 1
            return
        if self.ipsec is not None:
            self.applied_binds[out.protocol] = out
        self.forwarder.bind(out.protocol, out.nbma)
        if self._on_link(out.protocol):
            # Mirror the binding into the kernel's neighbour table (as nhrpd
            # does on a GRE device): an ARP reply cannot move an entry the
            # kernel updated less than locktime ago.
            mac = mac_text(nbma_mac(out.nbma))
            try:
                self.ipr.neigh("replace", dst=address_text(out.protocol), lladdr=mac,
                               ifindex=self.index, state=NUD_PERMANENT,
                               family=_family(out.protocol))  # fmt: skip
            except Exception as exc:
                self.log("neigh-error", f"could not bind {address_text(out.protocol)}: {exc}")
        if out.type == "dynamic":
            self.dynamic.add(out.nbma)
            self._update_multicast()

    def _unbind(self, out: BindingRemoved) -> None:
        if self.pending_binds.pop(out.protocol, None) is not None:
            return  # never used for data
        self.applied_binds.pop(out.protocol, None)
        self.forwarder.unbind(out.protocol)
        if self._on_link(out.protocol):
            try:
                self.ipr.neigh("del", dst=address_text(out.protocol), ifindex=self.index,
                               family=_family(out.protocol))  # fmt: skip
            except Exception:
                pass  # not there (never bound in the kernel, or removed)
        if out.nbma in self.dynamic and out.nbma not in self.forwarder.bindings.values():
            self.dynamic.discard(out.nbma)
            self._update_multicast()

    def _on_link(self, protocol: Address) -> bool:
        """In the tunnel network of its family (a neighbour, not a prefix)."""
        if isinstance(protocol, IPv4Address):
            return protocol in self.cfg.address.network
        v6 = self.cfg.ipv6_address
        return isinstance(protocol, IPv6Address) and v6 is not None and protocol in v6.network

    def _update_multicast(self) -> None:
        targets: list[IPv4Address] = []
        for item in self.cfg.nhrp.map_multicast:
            if item == "dynamic":
                targets += sorted(self.dynamic)
            elif item == "nhs":
                targets += self.forwarder.nhs
            elif isinstance(item, IPv4Address):
                targets.append(item)
        self.forwarder.multicast = list(dict.fromkeys(targets))

    def _shortcut(self, out: ShortcutAdded) -> None:
        if isinstance(out.nbma, IPv4Address) and not self._sa_up(out.nbma):
            self.pending_shortcuts[out.prefix] = out
            self.ipsec_stats["deferred"] += 1
            return
        if self.ipsec is not None:
            self.applied_shortcuts[out.prefix] = out
        try:
            self.ipr.route("replace", dst=str(out.prefix), gateway=address_text(out.next_hop),
                           oif=self.index, proto=RTPROT_DMVPN)  # fmt: skip
        except Exception as exc:
            self.log("route-error", f"could not install shortcut {out.prefix}: {exc}")

    def _unshortcut(self, out: ShortcutRemoved) -> None:
        if self.pending_shortcuts.pop(out.prefix, None) is not None:
            return
        self.applied_shortcuts.pop(out.prefix, None)
        try:
            self.ipr.route("del", dst=str(out.prefix), gateway=address_text(out.next_hop),
                           oif=self.index, proto=RTPROT_DMVPN)  # fmt: skip
        except Exception:
            pass  # already gone (the interface went down, or an operator)

    def _protect(self, out: ProtectPeer | UnprotectPeer) -> None:
        if self.ipsec is None or not isinstance(out.nbma, IPv4Address):
            return  # no IPsec: bindings are used at once
        if isinstance(out, ProtectPeer):
            self.ipsec.want(self.cfg.tunnel.source, out.nbma)
        else:
            self.ipsec.release(self.cfg.tunnel.source, out.nbma)

    def _event(self, out: Event) -> None:
        self.log(out.kind, out.message, interface=self.cfg.name, **out.details)
        for listener in self.listeners:
            listener(self.cfg.name, out)


def _family(addr: Address) -> int:
    return socket.AF_INET6 if isinstance(addr, IPv6Address) else socket.AF_INET


class _IdentityGate:
    """Between the forwarder and the engine under identity binding: NHRP
    from a peer whose IPsec identity the daemon has not read yet waits
    (briefly: the packet came through the SA, so it exists) instead of being
    refused for want of an identity."""

    def __init__(self, rt: InterfaceRuntime) -> None:
        self.rt = rt
        self.engine = rt.hooks

    def receive(self, data: bytes, src_nbma: Address, now: float) -> None:
        rt = self.rt
        if isinstance(src_nbma, IPv4Address) and not rt._sa_up(src_nbma):
            assert rt.ipsec is not None
            rt.ipsec.touch(rt.cfg.tunnel.source, src_nbma)
            queue = rt.inbound.setdefault(src_nbma, deque(maxlen=HELD_PER_PEER))
            queue.append((data, now))
            return
        self.engine.receive(data, src_nbma, now)

    def next_hop_unbound(self, next_hop: Address, now: float) -> None:
        self.engine.next_hop_unbound(next_hop, now)

    def hairpin(self, packet: bytes, from_nbma: Address, now: float) -> None:
        self.engine.hairpin(packet, from_nbma, now)

    def binding_used(self, addr: Address, now: float) -> None:
        self.engine.binding_used(addr, now)


class Node:
    def __init__(
        self, config: NodeConfig, log: Logger | None = None, path: Path | None = None
    ) -> None:
        self.config = config
        self.path = path  # the file SIGHUP reloads
        self.log = log or Logger(config.node)
        self.interfaces: list[InterfaceRuntime] = []
        self._ipr: IPRoute | None = None
        self.ipsec: IpsecManager | None = None

    def _by_source(self, local: IPv4Address) -> InterfaceRuntime | None:
        return next((rt for rt in self.interfaces if rt.cfg.tunnel.source == local), None)

    def _ipsec_up(self, peer: PeerSa) -> None:
        rt = self._by_source(peer.local)
        if rt is not None:
            rt.ipsec_up(peer)

    def _ipsec_down(self, peer: PeerSa) -> None:
        rt = self._by_source(peer.local)
        if rt is not None:
            rt.ipsec_down(peer)

    def _ipsec_restarted(self) -> None:
        for rt in self.interfaces:
            try:
                rt.bind_device()
            except CharonError as exc:
                self.log("ipsec-error", str(exc), interface=rt.cfg.name)

    def reload(self) -> None:
        """SIGHUP: apply what can change without dropping tunnels, or say
        why not and keep running as before."""
        if self.path is None or self._ipr is None:
            return
        try:
            new = load_config(self.path)
        except ConfigError as exc:
            for problem in exc.problems:
                self.log("reload-refused", f"{self.path}: {problem}")
            return
        plan = plan_reload(self.config, new)
        if not plan.ok:
            for why in plan.refused:
                self.log("reload-refused", why)
            return
        for route in plan.remove_routes:
            try:
                self._ipr.route("del", dst=str(route.prefix), gateway=str(route.via))
            except Exception as exc:
                self.log("route-error", f"could not remove {route.prefix}: {exc}")
        for route in plan.add_routes:
            try:
                self._ipr.route("replace", dst=str(route.prefix), gateway=str(route.via))
            except Exception as exc:
                self.log("route-error", f"could not add {route.prefix}: {exc}")
        for rt in self.interfaces:
            if rt.cfg.name in plan.retune:
                rt.retune(plan.retune[rt.cfg.name])
        self.config = new
        self.log("reloaded", f"{self.path}: applied ({len(plan.retune)} interface(s) retuned, "
                 f"+{len(plan.add_routes)}/-{len(plan.remove_routes)} routes)")  # fmt: skip

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        # The management API first: a node name already running here is
        # refused before any interface is touched.
        api = ApiServer(self.config.node, self.interfaces,
                        self.config.socket or default_socket_path(self.config.node))  # fmt: skip
        try:
            await api.start()
        except ApiError as exc:
            self.log("api-error", str(exc))
            raise SystemExit(1) from None
        self.log("api", f"management API on {api.path}", socket=str(api.path))
        if self.config.ipsec is not None:
            try:
                self.ipsec = IpsecManager(
                    self.config.ipsec, self.config.node, self.config.ipsec_identity(),
                    [i.tunnel.source for i in self.config.interfaces], self.log,
                    on_up=self._ipsec_up, on_down=self._ipsec_down,
                    on_restart=self._ipsec_restarted,
                )  # fmt: skip
                api.ipsec = self.ipsec
                await self.ipsec.start()
            except (CharonError, ConfigError) as exc:
                self.log("ipsec-error", f"IPsec unavailable, not starting: {exc}")
                if self.ipsec is not None:
                    await self.ipsec.stop()
                await api.stop()
                raise SystemExit(1) from None
        try:
            with IPRoute() as ipr:
                self._ipr = ipr
                try:
                    for itf in self.config.interfaces:
                        rt = InterfaceRuntime(itf, ipr, self.log, loop, self.ipsec)
                        rt.listeners.append(api.publish)
                        self.interfaces.append(rt)
                    for route in self.config.routes:
                        ipr.route("replace", dst=str(route.prefix), gateway=str(route.via))
                    for rt in self.interfaces:
                        rt.start()
                    self.log("running", f"node {self.config.node} up with "
                             f"{len(self.interfaces)} interface(s)")  # fmt: skip
                    await stop.wait()
                    self.log("stopping", "deregistering and removing interfaces")
                finally:
                    for rt in self.interfaces:
                        rt.stop()
        finally:
            if self.ipsec is not None:
                # The purges just sent still have to pass charon's userspace ESP.
                await asyncio.sleep(0.2)
                await self.ipsec.stop()
            await api.stop()
