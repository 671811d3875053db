"""The userspace data plane: a TAP device and a raw GRE socket.

Works on any Linux, with or without a GRE module. The DMVPN interface is a
TAP (dataplane/devices.py); the forwarder (dataplane/forwarding.py) turns its
frames into GRE and back. Plain unicast IPv4 takes the C pump
(dataplane/pump.py) when it was built, except on a hub with redirect, which
must see every forwarded packet, and with path MTU discovery (DF and the
path MTU are decided by the forwarder, pmtu.py); the rest, and everything
when there is no pump, is read by asyncio readers. Bindings are mirrored into the kernel's
neighbour table of the TAP as permanent entries with the peer's NBMA MAC.
"""

from __future__ import annotations

import socket
from asyncio import AbstractEventLoop
from collections.abc import Callable, Collection, Mapping
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from pyroute2 import IPRoute

from dmvpn.config import Interface
from dmvpn.nsenter import entered
from dmvpn.wire import Address
from dmvpn.wire.ethernet import mac_text

from .devices import DfGreSocket, GreSocket, IcmpSender, Tap
from .forwarding import Forwarder, PeerCounters
from .greicmp import GreIcmpFilter, ip_gre_loaded
from .mss import MssClamp
from .nbmamac import Nbma, nbma_mac
from .neighbours import NeighbourWriter
from .plane import DataPlane, DataPlaneError, DataPlaneHooks, ipv4_only
from .pmtu import PathMtuCache
from .pump import BATCH, Pump, fastpath
from .xfrmblock import XfrmBlock

__all__ = ["UserspaceDataPlane"]

# ifa_flags: no duplicate address detection for the tunnel address (only we
# own it on the cloud; nothing there would answer a probe anyway).
IFA_F_NODAD = 0x02

Log = Callable[[str, str], None]


class UserspaceDataPlane(DataPlane):
    def __init__(self, cfg: Interface, ipr: IPRoute, log: Log) -> None:
        self.cfg, self.ipr, self.log = cfg, ipr, log
        self.redirect = cfg.nhrp.redirect
        self._tap: Tap | None = None
        self._gre: GreSocket | None = None
        self._forwarder: Forwarder | None = None
        self._hooks: DataPlaneHooks | None = None
        self._index = -1
        self._loop: AbstractEventLoop | None = None
        self._pump: Pump | None = None
        self._neighbours: NeighbourWriter | None = None
        self._mss: MssClamp | None = None
        self._block: XfrmBlock | None = None  # IPsec with the kernel's ESP
        self._quiet: GreIcmpFilter | None = None  # ip_gre's ICMP (greicmp.py)
        # Path MTU discovery (tunnel.path_mtu_discovery, pmtu.py).
        self._df: DfGreSocket | None = None
        self._icmp: IcmpSender | None = None
        self.path_mtu: PathMtuCache | None = None

    # -- life -----------------------------------------------------------------

    def open(self, hooks: DataPlaneHooks) -> None:
        cfg, ipr = self.cfg, self.ipr
        self._hooks = hooks
        # A TAP with a virtio_net_hdr lets the C pump take TSO/checksum
        # offloads (devices.py); only worth it where the pump will run.
        pump = self._pump_fits(self.redirect)
        self._tap = Tap(cfg.name, vnet_hdr=pump)
        # Front-door VRF: the GRE socket lives in the underlay namespace.
        try:
            with entered(cfg.tunnel.namespace):
                self._gre = GreSocket(cfg.tunnel.source)
        except OSError as exc:
            where = f" in namespace {cfg.tunnel.namespace}" if cfg.tunnel.namespace else ""
            raise DataPlaneError(
                f"cannot open GRE on {cfg.tunnel.source}{where}: {exc.strerror}"
            ) from None
        self._index = ipr.link_lookup(ifname=cfg.name)[0]
        self._neighbours = NeighbourWriter(self._index, self.log)
        mac = nbma_mac(cfg.tunnel.source)
        if cfg.ipv6_address is not None:
            self._ipv6_sysctls()  # before the link comes up and starts DAD/RS
        ipr.link("set", index=self._index, address=mac_text(mac), mtu=cfg.mtu, state="up")
        ipr.addr(
            "replace",
            index=self._index,
            address=str(cfg.address.ip),
            prefixlen=cfg.address.network.prefixlen,
        )
        if cfg.ipv6_address is not None:
            ipr.addr(
                "replace",
                index=self._index,
                address=str(cfg.ipv6_address.ip),
                prefixlen=cfg.ipv6_address.network.prefixlen,
                family=socket.AF_INET6,
                flags=IFA_F_NODAD,
            )
        else:
            # An IPv4-only overlay: keep the kernel's IPv6 chatter (router
            # solicitations, MLD) off the cloud.
            try:
                Path(f"/proc/sys/net/ipv6/conf/{cfg.name}/disable_ipv6").write_text("1")
            except OSError:
                pass  # IPv6 compiled out or sysctl read-only: harmless
        if cfg.tcp_adjust_mss is not None:
            try:
                self._mss = MssClamp(cfg.name, cfg.tcp_adjust_mss)
            except OSError as exc:
                self._tap.close()  # the interface goes: nothing half-made stays
                self._gre.close()
                raise DataPlaneError(f"tcp_adjust_mss: {exc}") from None
        if ip_gre_loaded():
            try:
                with entered(cfg.tunnel.namespace):  # beside the GRE socket
                    self._quiet = GreIcmpFilter(cfg.name)
            except OSError as exc:  # not fatal: ICMP leaks, as without the filter
                self.log("dataplane", f"{cfg.name}: cannot filter ip_gre's ICMP: {exc}")
        if cfg.tunnel.path_mtu_discovery:
            with entered(cfg.tunnel.namespace):  # beside the GRE socket
                self._df = DfGreSocket(ipv4_only(cfg.tunnel.source))
            self._icmp = IcmpSender()
            self.path_mtu = PathMtuCache()
        self._forwarder = Forwarder(
            engine=hooks,
            tunnel_address=cfg.address.ip,
            local_mac=mac,
            key=cfg.tunnel.key,
            send_gre=self._gre.send,
            write_tap=self._tap.write,
            redirect=self.redirect,
            tunnel_address6=cfg.ipv6_address.ip if cfg.ipv6_address is not None else None,
            path_mtu=self.path_mtu,
            send_gre_df=self._send_df if self._df is not None else None,
            send_icmp=self._icmp.send if self._icmp is not None else None,
            mtu=cfg.mtu,
        )

    def _ipv6_sysctls(self) -> None:
        """IPv6 on, without the chatter nobody on an NBMA cloud answers:
        no router solicitations, no DAD; link-local addresses from the MAC
        (EUI-64), which nd.link_local_nbma maps back to the NBMA address."""
        base = Path(f"/proc/sys/net/ipv6/conf/{self.cfg.name}")
        settings = (
            ("disable_ipv6", "0"),
            ("accept_dad", "0"),
            ("router_solicitations", "0"),
            ("addr_gen_mode", "0"),
        )
        for name, value in settings:
            try:
                (base / name).write_text(value)
            except OSError as exc:
                self.log("sysctl-error", f"{base / name}: {exc.strerror}")

    def _pump_fits(self, redirect: bool) -> bool:
        """The C pump: built, not a redirecting hub, no path MTU discovery
        (DF decided by the forwarder), and an IPv4 underlay (it speaks GRE
        over IPv4 and 02:00 MACs; over IPv6 the Python path carries all)."""
        cfg = self.cfg
        return (
            fastpath is not None
            and not redirect
            and not cfg.tunnel.path_mtu_discovery
            and not cfg.underlay_ipv6
        )

    @property
    def index(self) -> int:
        return self._index

    @property
    def forwarder(self) -> Forwarder:
        assert self._forwarder is not None, "open() first"
        return self._forwarder

    def start(self, loop: AbstractEventLoop) -> None:
        """The C pump on a thread of its own when built (and not a
        redirecting hub, which must see every forwarded packet); else asyncio
        readers."""
        assert self._tap is not None and self._gre is not None
        if self._loop is None and self._neighbours is not None:
            self._neighbours.start(loop)
        self._loop = loop
        if self._df is not None:
            loop.add_reader(self._df.fileno(), self._on_path_mtu_errors)
        if self._pump_fits(self.redirect):
            self._pump = Pump(self._tap, self._gre, self.cfg.tunnel.key, self.forwarder)
            self._pump.start(self.cfg.name)
            loop.add_reader(self._pump.fileno(), self._on_punt)
        else:
            loop.add_reader(self._tap.fd, self._on_tap)
            loop.add_reader(self._gre.fileno(), self._on_gre)

    def stop(self) -> None:
        assert self._tap is not None and self._gre is not None and self._loop is not None
        if self._df is not None:
            self._loop.remove_reader(self._df.fileno())
        if self._pump is not None:
            self._loop.remove_reader(self._pump.fileno())
            self._pump.stop(self._loop.time())
            self._pump = None
            self._batch_done()
        else:
            self._loop.remove_reader(self._tap.fd)
            self._loop.remove_reader(self._gre.fileno())

    def close(self) -> None:
        if self._block is not None and self._block.placed:
            self._block.remove()
        if self._quiet is not None:
            self._quiet.release()
            self._quiet = None
        if self._neighbours is not None:
            self._neighbours.close()  # what is queued goes with the interface
        if self._mss is not None:
            self._mss.release()
            self._mss = None
        if self._tap is not None:
            self._tap.close()  # the kernel removes the interface and its routes
        if self._gre is not None:
            self._gre.close()
        if self._df is not None:
            self._df.close()
            self._df = None
        if self._icmp is not None:
            self._icmp.close()
            self._icmp = None

    # -- readers ----------------------------------------------------------------

    def _send_df(self, nbma: IPv4Address, gre: bytes) -> int:
        """Send with DF; a local EMSGSIZE is read back (its MTU learned) at once."""
        assert self._df is not None
        err = self._df.send(nbma, gre)
        if err:
            self._on_path_mtu_errors()
        return err

    def _on_path_mtu_errors(self) -> None:
        assert self._df is not None and self._loop is not None
        now = self._loop.time()
        for e in self._df.errors():
            self.forwarder.path_mtu_error(e.nbma, e.mtu, e.quoted, e.local, e.reporter, now)

    def _batch_done(self) -> None:
        assert self._hooks is not None
        self._hooks.batch_done()

    def _on_punt(self) -> None:
        assert self._pump is not None and self._loop is not None
        self._pump.drain(self._loop.time())
        self._batch_done()

    def _on_tap(self) -> None:
        assert self._tap is not None and self._loop is not None
        now = self._loop.time()
        for _ in range(BATCH):
            frame = self._tap.read()
            if frame is None:
                break
            self.forwarder.from_tap(frame, now)
        self._batch_done()

    def _on_gre(self) -> None:
        assert self._gre is not None and self._loop is not None
        now = self._loop.time()
        for _ in range(BATCH):
            got = self._gre.recv()
            if got is None:
                break
            self.forwarder.from_gre(got[0], got[1], now)
        self._batch_done()

    # -- the daemon's decisions -------------------------------------------------

    def bind(self, protocol: Address, nbma: Nbma) -> None:
        self.forwarder.bind(protocol, nbma)
        if self._on_link(protocol) and self._neighbours is not None:
            # Mirror the binding into the kernel's neighbour table (as nhrpd
            # does on a GRE device): an ARP reply cannot move an entry the
            # kernel updated less than locktime ago. Written in batches by
            # the event loop, off the packet path (neighbours.py).
            self._neighbours.replace(protocol, nbma_mac(nbma))

    def flush_neighbours(self) -> None:
        if self._neighbours is not None:
            self._neighbours.flush()

    def unbind(self, protocol: Address) -> None:
        self.forwarder.unbind(protocol)
        if self._on_link(protocol) and self._neighbours is not None:
            self._neighbours.delete(protocol)

    def _on_link(self, protocol: Address) -> bool:
        """In the tunnel network of its family (a neighbour, not a prefix)."""
        if isinstance(protocol, IPv4Address):
            return protocol in self.cfg.address.network
        v6 = self.cfg.ipv6_address
        return isinstance(protocol, IPv6Address) and v6 is not None and protocol in v6.network

    @property
    def bindings(self) -> Mapping[Address, Nbma]:
        return self.forwarder.bindings

    def send_nhrp(self, nbma: Nbma, data: bytes) -> None:
        self.forwarder.send_nhrp(nbma, data)

    def move_source(self, source: Nbma) -> None:
        # A raw socket may be bound again (raw_bind has no "already bound"
        # check): the same fd, so the pump and the loop's reader carry on.
        if self._gre is not None:
            try:
                self._gre.sock.bind((str(source), 0))
            except OSError as exc:
                raise DataPlaneError(f"cannot bind GRE to {source}: {exc.strerror}") from None
            self._gre.source = source
        if self._df is not None:
            try:
                self._df.sock.bind((str(source), 0))
            except OSError as exc:
                raise DataPlaneError(f"cannot bind DF GRE to {source}: {exc.strerror}") from None
            if self.path_mtu is not None:
                self.path_mtu = self.forwarder.path_mtu = PathMtuCache()  # a new path

    def set_nhs(self, nbmas: list[Nbma]) -> None:
        self.forwarder.nhs = list(nbmas)

    def set_multicast(self, nbmas: Collection[Nbma]) -> None:
        self.forwarder.multicast = nbmas  # live: O(1) per binding (plane.py)

    def set_redirect(self, on: bool) -> None:
        self.forwarder.redirect = on
        self.redirect = on
        wants_pump = self._pump_fits(on)
        if self._loop is not None and wants_pump != (self._pump is not None):
            loop = self._loop
            self.stop()  # a hub that starts redirecting must see every packet
            self.start(loop)

    def protect_path(self, device: str | None) -> None:
        """GRE only through kernel-libipsec's TUN device: what we send to a
        peer without an SA dies there (no policy), and cleartext GRE arriving
        on the underlay never reaches this socket. No device: the kernel's
        ESP, where raw GRE leaves through the IP stack and XFRM applies;
        block policies keep it from leaving or arriving in clear."""
        assert self._gre is not None
        if device is None:
            if self._block is None:
                self._block = XfrmBlock(
                    ipv4_only(self.cfg.tunnel.source), self.cfg.tunnel.namespace
                )
            self._block.place()
            return
        try:
            self._gre.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        except OSError as exc:
            raise DataPlaneError(f"cannot bind GRE to {device}: {exc.strerror}") from None

    # -- what happened ------------------------------------------------------------

    @property
    def stats(self) -> Mapping[str, int]:
        if self._mss is None and self._quiet is None:
            return self.forwarder.stats
        out = dict(self.forwarder.stats)
        if self._mss is not None:
            for direction, n in self._mss.clamped().items():
                out[f"tcp.mss_clamped.{direction}"] = n
        if self._quiet is not None and (dropped := self._quiet.dropped()) is not None:
            out["gre.ip_gre_icmp_dropped"] = dropped
        return out

    @property
    def peers(self) -> Mapping[Nbma, PeerCounters]:
        return self.forwarder.peers
