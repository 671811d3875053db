"""One process per node: the management API, IPsec (a private charon) and,
for every DMVPN interface of the config file, an `InterfaceRuntime`
(daemon/interface.py) over a data plane, driven by asyncio. The engines
decide; the runtimes carry their outputs out."""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, TextIO

from pyroute2 import IPRoute

from dmvpn.api.server import ApiError, ApiServer, default_socket_path
from dmvpn.config import ConfigError, Interface, NodeConfig, load_config
from dmvpn.dataplane.ebpf import EbpfDataPlane, ebpf_unavailable
from dmvpn.dataplane.kernel import (
    KernelDataPlane,
    kernel_esp_unavailable,
    kernel_gre_unavailable,
)
from dmvpn.dataplane.plane import DataPlane, DataPlaneError, ipv4_only
from dmvpn.dataplane.userspace import UserspaceDataPlane
from dmvpn.ipsec import IpsecManager, PeerSa
from dmvpn.ipsec.charon import CharonError
from dmvpn.nhrp.client import NhsState
from dmvpn.nsenter import entered

from . import gcpolicy
from .interface import InterfaceRuntime, Log
from .liveness import LivenessProber, Reach
from .reload import plan_reload
from .static_routes import StaticRoutes
from .vrrp import VrrpRouter


def make_dataplane(cfg: Interface, ipr: IPRoute, log: Log, ipsec: bool = False) -> DataPlane:
    """The data plane for an interface (`dataplane:`): the userspace one (TAP
    + raw GRE, any Linux) or the eBPF one (the same with bound peers'
    unicast in the kernel). `auto` takes eBPF unless IPsec is on (its
    redirects would bypass xfrm) or the host cannot; the log says which."""
    if cfg.dataplane == "ebpf":
        return EbpfDataPlane(cfg, ipr, log, required=True)
    if cfg.dataplane == "kernel":
        return KernelDataPlane(cfg, ipr, log)
    if cfg.dataplane == "auto" and cfg.underlay_ipv6:
        # Only the userspace plane carries GRE over IPv6 (config.py refuses the others).
        log("dataplane", f"{cfg.name}: userspace data plane (IPv6 underlay)")
        return UserspaceDataPlane(cfg, ipr, log)
    if cfg.dataplane == "auto" and _kernel_fits(cfg, ipsec):
        log("dataplane", f"{cfg.name}: kernel data plane (ip_gre)")
        return KernelDataPlane(cfg, ipr, log)
    if cfg.dataplane == "auto":
        why = (
            "IPsec is on (bpf_redirect bypasses xfrm)"
            if ipsec
            else "tunnel.path_mtu_discovery is on"
            if cfg.tunnel.path_mtu_discovery
            else ebpf_unavailable()
        )
        if cfg.tunnel.namespace is not None:
            why = "the underlay is in another namespace (front-door VRF)"
        if cfg.namespace is not None:
            why = "the interface is in a VRF of its own (namespace), apart from the underlay"
        if why is None:
            return EbpfDataPlane(cfg, ipr, log, required=False)
        log("dataplane", f"{cfg.name}: userspace data plane ({why})")
    return UserspaceDataPlane(cfg, ipr, log)


def _kernel_lacks(cfg: Interface) -> str | None:
    """What this interface asks that the kernel plane does not do yet
    (dataplane/kernel.py), or None."""
    if cfg.ipv6_address is not None:
        return "ipv6_address"
    if cfg.tunnel.namespace is not None:
        return "tunnel.namespace"
    return None


def _kernel_fits(cfg: Interface, ipsec: bool) -> bool:
    """`auto` without IPsec takes the kernel's mGRE where ip_gre loads and
    nothing the kernel plane lacks yet is asked for. (With IPsec the node
    decides for all its interfaces at once: `decide_ipsec`.)"""
    if ipsec or _kernel_lacks(cfg) is not None:
        return False
    return kernel_gre_unavailable() is None


def decide_ipsec(config: NodeConfig, log: Log) -> tuple[bool, bool]:
    """With IPsec, what the host gives (kernel ESP, kernel plane): the
    kernel's ESP where `ipsec.esp` allows and XFRM and esp4 are there, else
    kernel-libipsec; and interfaces on `dataplane: auto` go on the kernel
    plane where the kernel's ESP is used, ip_gre loads and none of them asks
    what the plane does not do yet. One charon serves the node, so both are
    decided for all interfaces at once; the log says which and why.
    ValueError: the config asks for the kernel's ESP and the host lacks it."""
    sec = config.ipsec
    if sec is None:
        return False, False
    planes = {i.dataplane for i in config.interfaces}
    needs_kernel = sec.esp == "kernel" or planes == {"kernel"}
    external = sec.esp == "auto" and sec.charon == "external" and planes != {"kernel"}
    if sec.esp == "libipsec" or external:
        # An external charon is taken as its operator configured it
        # (kernel-libipsec), but on the kernel plane, which needs XFRM.
        esp_why: str | None = "ipsec.esp: libipsec" if sec.esp == "libipsec" else "external charon"
    else:
        esp_why = kernel_esp_unavailable()
    if esp_why is not None and needs_kernel:
        field = "ipsec.esp: kernel" if sec.esp == "kernel" else "dataplane: kernel with ipsec"
        raise ValueError(f"{field} needs the kernel's ESP: {esp_why}")
    kernel_esp = esp_why is None
    log(
        "ipsec-esp",
        "ESP by the kernel (XFRM, esp4)"
        if kernel_esp
        else f"ESP by kernel-libipsec in charon ({esp_why})",
    )
    if planes != {"auto"}:
        return kernel_esp, False
    why = "no kernel ESP for it" if not kernel_esp else kernel_gre_unavailable()
    for itf in config.interfaces:
        lacks = _kernel_lacks(itf)
        if why is None and lacks is not None:
            why = f"{itf.name} has {lacks}, which the kernel plane does not do yet"
    if why is None:
        log("dataplane", "kernel data plane with the kernel's ESP (ip_gre, esp4, XFRM)")
        return kernel_esp, True
    esp = "the kernel's ESP" if kernel_esp else "kernel-libipsec"
    log("dataplane", f"userspace data plane with {esp} ({why})")
    return kernel_esp, False


class Logger:
    """Structured logs: one JSON object per line."""

    def __init__(self, node: str, out: TextIO = sys.stderr) -> None:
        self.node = node
        self.out = out

    def __call__(self, kind: str, message: str, **details: Any) -> None:
        record = {
            "ts": round(time.time(), 3),
            "node": self.node,
            "kind": kind,
            "message": message,
            **details,
        }
        self.out.write(json.dumps(record, default=str) + "\n")
        self.out.flush()


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
        self.routes: StaticRoutes | None = None
        # Echoes to the next hops of routes with `track` (a hub's route to a
        # dual spoke site), and the LAN gateways (`vrrp:`).
        self.hop_probers: list[LivenessProber] = []
        self.vrrp: list[VrrpRouter] = []
        self._decided = (False, False)  # IPsec: kernel ESP, kernel plane (run)

    def nhs_states(self) -> list[Any]:
        """Every NHS of every interface and family (for tracked routes)."""
        return [s for rt in self.interfaces for e in rt.engines for s in e.nhs_states()]

    def any_nhs_up(self) -> bool:
        """The dual spoke's gateway role: held only while the cloud is reachable."""
        return any(s.state is NhsState.UP for s in self.nhs_states())

    def alive_hops(self) -> set[Any]:
        return {
            addr
            for p in self.hop_probers
            for addr, peer in p.tracker.peers.items()
            if peer.state is Reach.ALIVE
        }

    def _start_hop_probers(self, loop: asyncio.AbstractEventLoop) -> None:
        nhs = {n.address for itf in self.config.interfaces for n in itf.nhrp.nhs}
        for route in self.config.routes:
            if route.track is None or not isinstance(route.via, tuple):
                continue
            # One prober per interface and family (ICMP or ICMPv6).
            by_device: dict[tuple[str, int], list[Any]] = {}
            for hop in route.via:
                itf = self.config.tunnel_of(hop)
                if hop not in nhs and itf is not None:
                    by_device.setdefault((itf.name, hop.version), []).append(hop)
            for (device, _), hops in by_device.items():
                prober = LivenessProber(
                    device,
                    hops,
                    route.track.interval,
                    route.track.multiplier,
                    functools.partial(self._hop_lost, route.prefix),
                    functools.partial(self._hop_alive, route.prefix),
                )
                try:
                    prober.start(loop)
                except OSError as exc:
                    self.log("liveness-error", f"{route.prefix}: next hops not tracked: {exc}")
                    continue
                self.hop_probers.append(prober)

    def _hop_lost(self, prefix: object, hop: object, reason: str) -> None:
        self._hop_changed(f"{prefix}: next hop {hop} lost: {reason}")

    def _hop_alive(self, prefix: object, hop: object) -> None:
        self._hop_changed(f"{prefix}: next hop {hop} answers")

    def _hop_changed(self, message: str) -> None:
        self.log("next-hop", message)
        if self.routes is not None:
            self.routes.update()

    def _vrrp_update(self) -> None:
        for router in self.vrrp:
            router.update()

    def _by_source(self, local: IPv4Address) -> list[InterfaceRuntime]:
        # Several: clouds in VRFs share one underlay address (told apart by
        # GRE key), and so the one SA to each peer (docs/VRF.md).
        return [rt for rt in self.interfaces if rt.cfg.tunnel.source == local]

    def _ipsec_up(self, peer: PeerSa) -> None:
        for rt in self._by_source(peer.local):
            rt.ipsec_up(peer)

    def _ipsec_down(self, peer: PeerSa) -> None:
        for rt in self._by_source(peer.local):
            rt.ipsec_down(peer)

    def _ipsec_restarted(self) -> None:
        for rt in self.interfaces:
            try:
                rt.protect_path()
            except CharonError as exc:
                self.log("ipsec-error", str(exc), interface=rt.cfg.name)

    @staticmethod
    def _vrf_ipr(vrfs: dict[str, IPRoute], namespace: str) -> IPRoute:
        """The netlink socket of an overlay VRF: made inside its namespace
        (a socket stays in the namespace it was made in)."""
        if namespace not in vrfs:
            with entered(namespace):
                vrfs[namespace] = IPRoute()
        return vrfs[namespace]

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
        try:
            new = new.resolved(*self._decided)
        except ValueError as exc:
            self.log("reload-refused", f"{self.path}: {exc}")
            return
        plan = plan_reload(self.config, new)
        if not plan.ok:
            for why in plan.refused:
                self.log("reload-refused", why)
            return
        if self.routes is not None:
            self.routes.remove(plan.remove_routes)
            self.routes.add(plan.add_routes)
        for rt in self.interfaces:
            if rt.cfg.name in plan.retune:
                rt.retune(plan.retune[rt.cfg.name])
        self.config = new
        self.log(
            "reloaded",
            f"{self.path}: applied ({len(plan.retune)} interface(s) retuned, "
            f"+{len(plan.add_routes)}/-{len(plan.remove_routes)} routes)",
        )

    async def run(self) -> None:
        # IPsec's ESP, and `auto` with IPsec, are decided once, here, before
        # charon is set up for one or the other; a reload is held to them.
        try:
            self._decided = decide_ipsec(self.config, self.log)
            self.config = self.config.resolved(*self._decided)
        except ValueError as exc:
            self.log("config-error", str(exc))
            raise SystemExit(1) from None
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        # The management API first: a node name already running here is
        # refused before any interface is touched.
        api = ApiServer(
            self.config.node,
            self.interfaces,
            self.config.socket or default_socket_path(self.config.node),
        )
        try:
            await api.start()
        except ApiError as exc:
            self.log("api-error", str(exc))
            raise SystemExit(1) from None
        self.log("api", f"management API on {api.path}", socket=str(api.path))
        api.vrrp = self.vrrp  # the live list: groups started later are served
        if self.config.ipsec is not None:
            try:
                self.ipsec = IpsecManager(
                    self.config.ipsec,
                    self.config.node,
                    self.config.ipsec_identity(),
                    list(dict.fromkeys(ipv4_only(i.tunnel.source) for i in self.config.interfaces)),
                    self.log,
                    on_up=self._ipsec_up,
                    on_down=self._ipsec_down,
                    on_restart=self._ipsec_restarted,
                    namespace=self.config.interfaces[0].tunnel.namespace,
                    kernel_esp=self.config.kernel_esp,
                )
                api.ipsec = self.ipsec
                await self.ipsec.start()
            except (CharonError, ConfigError) as exc:
                self.log("ipsec-error", f"IPsec unavailable, not starting: {exc}")
                if self.ipsec is not None:
                    await self.ipsec.stop()
                await api.stop()
                raise SystemExit(1) from None
        vrfs: dict[str, IPRoute] = {}  # a netlink socket per overlay VRF (namespace)
        try:
            with IPRoute() as ipr:
                self._ipr = ipr
                try:
                    for itf in self.config.interfaces:
                        local = ipr if itf.namespace is None else self._vrf_ipr(vrfs, itf.namespace)
                        dataplane = make_dataplane(
                            itf, local, self.log, ipsec=self.config.ipsec is not None
                        )
                        rt = InterfaceRuntime(
                            itf, dataplane, local, self.log, loop, self.ipsec, underlay_ipr=ipr
                        )
                        rt.listeners.append(api.publish)
                        self.interfaces.append(rt)
                        try:
                            rt.open()
                        except DataPlaneError as exc:
                            # Not a crash: the config asks what this host cannot.
                            self.interfaces.remove(rt)
                            self.log(
                                "config-error", f"{itf.name}: dataplane {itf.dataplane}: {exc}"
                            )
                            raise SystemExit(1) from None
                    self.routes = StaticRoutes(ipr, self.log, self.nhs_states, self.alive_hops)
                    for rt in self.interfaces:
                        rt.nhs_listeners.append(self.routes.update)
                        rt.nhs_listeners.append(self._vrrp_update)
                    self.routes.add(self.config.routes)
                    for rt in self.interfaces:
                        if rt.cfg.routes:  # `ip route vrf`: in the interface's namespace
                            vrf_routes = StaticRoutes(rt.ipr, self.log, rt.nhs_states)
                            rt.nhs_listeners.append(vrf_routes.update)
                            vrf_routes.add(rt.cfg.routes)
                    for rt in self.interfaces:
                        rt.start()
                    self._start_hop_probers(loop)
                    for v in self.config.vrrp:
                        router = VrrpRouter(v, ipr, self.log, self.any_nhs_up)
                        try:
                            router.start(loop)
                        except OSError as exc:
                            self.log("vrrp-error", f"{v.interface}: no VRRP group {v.vrid}: {exc}")
                            continue
                        self.vrrp.append(router)
                    gc_thresholds = gcpolicy.settle()
                    self.log(
                        "running",
                        f"node {self.config.node} up with {len(self.interfaces)} interface(s)",
                        gc_thresholds=list(gc_thresholds),
                    )
                    await stop.wait()
                    self.log("stopping", "deregistering and removing interfaces")
                finally:
                    for router in self.vrrp:
                        router.stop()  # resign first: the other spoke takes over
                    for prober in self.hop_probers:
                        prober.stop()
                    for rt in self.interfaces:
                        rt.stop()
        finally:
            for vrf in vrfs.values():
                vrf.close()
            if self.ipsec is not None:
                # The purges just sent still have to pass charon's userspace ESP.
                await asyncio.sleep(0.2)
                await self.ipsec.stop()
            await api.stop()
