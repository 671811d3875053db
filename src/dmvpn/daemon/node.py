"""One process per node: every DMVPN interface of the config file gets a TAP
device, a raw GRE socket, an NHRP engine and a forwarder, driven by asyncio.
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
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, TextIO

from pyroute2 import IPRoute

from dmvpn.api.server import ApiError, ApiServer, default_socket_path
from dmvpn.config import ConfigError, Interface, NodeConfig, load_config
from dmvpn.dataplane.devices import MAX_FRAME, GreSocket, Tap
from dmvpn.dataplane.forwarding import Forwarder, nbma_mac
from dmvpn.nhrp import (
    BindingAdded,
    BindingRemoved,
    Engine,
    Event,
    ProtectPeer,
    SendPacket,
    ShortcutAdded,
    ShortcutRemoved,
    UnprotectPeer,
)
from dmvpn.wire import address_text
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
# Per-peer totals from the C pump: tx packets, tx bytes, rx packets, rx bytes.
_TOTALS = struct.Struct("=4Q")
# Drain at most this many packets per readiness callback, then yield.
BATCH = 64


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
                 loop: asyncio.AbstractEventLoop) -> None:  # fmt: skip
        self.cfg = cfg
        self.ipr = ipr
        self.log = log
        self.loop = loop
        self.tap = Tap(cfg.name)
        self.gre = GreSocket(cfg.tunnel.source)
        self.index: int = ipr.link_lookup(ifname=cfg.name)[0]
        mac = nbma_mac(cfg.tunnel.source)
        ipr.link("set", index=self.index, address=mac_text(mac),
                 mtu=cfg.mtu, state="up")  # fmt: skip
        ipr.addr("replace", index=self.index, address=str(cfg.address.ip),
                 prefixlen=cfg.address.network.prefixlen)  # fmt: skip
        # The overlay is IPv4 for now: keep the kernel's IPv6 chatter (router
        # solicitations, MLD) off the cloud.
        try:
            Path(f"/proc/sys/net/ipv6/conf/{cfg.name}/disable_ipv6").write_text("1")
        except OSError:
            pass  # IPv6 compiled out or sysctl read-only: harmless
        self.engine = Engine(cfg.engine_config(), KernelRouting(ipr, self.index))
        self.forwarder = Forwarder(
            engine=self.engine, tunnel_address=cfg.address.ip, local_mac=mac,
            key=cfg.tunnel.key, send_gre=self.gre.send, write_tap=self.tap.write,
            redirect=cfg.nhrp.redirect,
        )  # fmt: skip
        # The C fast path moves plain unicast IPv4; a hub with redirect must
        # see every forwarded packet (hairpins), so it stays on Python.
        self.fast = _fastpath if (_fastpath is not None and not cfg.nhrp.redirect) else None
        self.key = cfg.tunnel.key if cfg.tunnel.key is not None else -1
        self._pump: threading.Thread | None = None
        self.forwarder.nhs = [n.nbma for n in sorted(cfg.nhrp.nhs, key=lambda n: n.priority)]
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

    def start(self) -> None:
        self._start_io()
        self.engine.start(self.now())
        self.apply()

    def stop(self) -> None:
        self.engine.stop(self.now())
        self.apply()
        self._stop_io()
        if self._timer is not None:
            self._timer.cancel()
        self.tap.close()  # the kernel removes the interface and its routes
        self.gre.close()

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
                    punt_w.fileno(), self._stop_r)  # fmt: skip
            self._pump = threading.Thread(target=self.fast.pump, args=args, daemon=True,
                                          name=f"pump-{self.cfg.name}")  # fmt: skip
            self._pump.start()
            self.loop.add_reader(self._punt_r.fileno(), self._on_punt)
        else:
            self.loop.add_reader(self.tap.fd, self._on_tap)
            self.loop.add_reader(self.gre.fileno(), self._on_gre)

    def _stop_io(self) -> None:
        if self._pump is not None:
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
        self.engine.handle_timer(self.now())
        self.apply()

    def retune(self, cfg: Interface) -> None:
        """New values for the live knobs (SIGHUP); tunnels stay up."""
        self.cfg = cfg
        self.engine.retune(cfg.engine_config(), self.now())
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
        for out in self.engine.pop_outputs():
            handlers[type(out)](out)
        deadline = self.engine.get_timer()
        if deadline is not None and deadline != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _send(self, out: SendPacket) -> None:
        if isinstance(out.nbma, IPv4Address):
            self.forwarder.send_nhrp(out.nbma, out.data)

    def _bind(self, out: BindingAdded) -> None:
        if not isinstance(out.nbma, IPv4Address):
            return
        self.forwarder.bind(out.protocol, out.nbma)
        if isinstance(out.protocol, IPv4Address) and out.protocol in self.cfg.address.network:
            # Mirror the binding into the kernel's neighbour table (as nhrpd
            # does on a GRE device): an ARP reply cannot move an entry the
            # kernel updated less than locktime ago.
            mac = mac_text(nbma_mac(out.nbma))
            try:
                self.ipr.neigh("replace", dst=str(out.protocol), lladdr=mac,
                               ifindex=self.index, state=NUD_PERMANENT)  # fmt: skip
            except Exception as exc:
                self.log("neigh-error", f"could not bind {out.protocol}: {exc}")
        if out.type == "dynamic":
            self.dynamic.add(out.nbma)
            self._update_multicast()

    def _unbind(self, out: BindingRemoved) -> None:
        self.forwarder.unbind(out.protocol)
        if isinstance(out.protocol, IPv4Address) and out.protocol in self.cfg.address.network:
            try:
                self.ipr.neigh("del", dst=str(out.protocol), ifindex=self.index)
            except Exception:
                pass  # not there (never bound in the kernel, or removed)
        if out.nbma in self.dynamic and out.nbma not in self.forwarder.bindings.values():
            self.dynamic.discard(out.nbma)
            self._update_multicast()

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
        try:
            self.ipr.route("replace", dst=str(out.prefix), gateway=address_text(out.next_hop),
                           oif=self.index, proto=RTPROT_DMVPN)  # fmt: skip
        except Exception as exc:
            self.log("route-error", f"could not install shortcut {out.prefix}: {exc}")

    def _unshortcut(self, out: ShortcutRemoved) -> None:
        try:
            self.ipr.route("del", dst=str(out.prefix), gateway=address_text(out.next_hop),
                           oif=self.index, proto=RTPROT_DMVPN)  # fmt: skip
        except Exception:
            pass  # already gone (the interface went down, or an operator)

    def _protect(self, out: ProtectPeer | UnprotectPeer) -> None:
        # IPsec proxy instantiation comes with strongSwan (issue 6).
        kind = "protect" if isinstance(out, ProtectPeer) else "unprotect"
        self.log(kind, f"{kind} NBMA peer {address_text(out.nbma)} (no IPsec configured)",
                 interface=self.cfg.name, nbma=address_text(out.nbma))  # fmt: skip

    def _event(self, out: Event) -> None:
        self.log(out.kind, out.message, interface=self.cfg.name, **out.details)
        for listener in self.listeners:
            listener(self.cfg.name, out)


class Node:
    def __init__(
        self, config: NodeConfig, log: Logger | None = None, path: Path | None = None
    ) -> None:
        self.config = config
        self.path = path  # the file SIGHUP reloads
        self.log = log or Logger(config.node)
        self.interfaces: list[InterfaceRuntime] = []
        self._ipr: IPRoute | None = None

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
        try:
            with IPRoute() as ipr:
                self._ipr = ipr
                try:
                    for itf in self.config.interfaces:
                        rt = InterfaceRuntime(itf, ipr, self.log, loop)
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
            await api.stop()
