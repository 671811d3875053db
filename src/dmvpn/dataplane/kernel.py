"""The kernel data plane: the kernel's own multipoint GRE device.

Where the host has `ip_gre` (most servers do; this lab's host does not, its
QEMU guests do), the kernel encapsulates and decapsulates every data packet
and the daemon only does what nhrpd does beside it:

- the interface is `ip link add NAME type gre key K local NBMA ttl 64`, with
  no remote (multipoint): the link-layer address of a peer on it is its
  NBMA address (4 bytes), so a binding is a permanent neighbour entry
  `PROTOCOL lladdr NBMA` (neighbours.py writes them in batches);
- ARP is on but never sent (`ucast_solicit = mcast_solicit = 0`,
  `app_solicit = 1`): a packet to a tunnel address without an entry makes
  the kernel ask userspace (RTM_GETNEIGH on RTNLGRP_NEIGH), which is the
  engine's `next_hop_unbound`; meanwhile the entry points at the NHS (as
  the userspace plane answers ARP with the NHS's MAC), and the binding
  replaces it once the Resolution Reply arrives;
- NHRP (GRE protocol 0x2001) is sent and received on a packet socket bound
  to the device: the kernel's GRE header code fills the outer destination
  from the socket address and reports the outer source on receipt;
- multicast: the kernel sends link multicast out of an mGRE device to the
  group address itself (nowhere useful); a second packet socket (ETH_P_ALL
  with a classic BPF filter) sees it leave and the daemon sends a copy to
  each NBMA address of the `map multicast` set;
- hub hairpins (redirect): the same socket, with the filter also passing
  unicast IPv4 both ways (first bytes only), remembers which peer a source
  sent from and reports a packet leaving towards another peer (what nhrpd
  needs an iptables NFLOG rule for).

Data is counted by the kernel (`ip -s link`), not per peer: `peers` holds
NHRP and multicast only. IPsec: charon with the kernel's XFRM (transport
mode by default, docs/IPSEC.md), block policies keeping GRE in while an SA
is negotiated. Not yet: IPv6 overlays, a front-door VRF (config refuses
them), and use reports of shortcuts (they expire at their
holding time and the next hairpin brings them back).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import time
from asyncio import AbstractEventLoop
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from ipaddress import IPv4Address
from pathlib import Path

from pyroute2 import IPRoute

from dmvpn.config import Interface
from dmvpn.wire import Address

from .forwarding import MAX_PEER_COUNTERS, PeerCounters
from .mss import MssClamp
from .nbmamac import Nbma
from .neighbours import NeighbourWriter
from .plane import DataPlane, DataPlaneError, DataPlaneHooks, ipv4_only
from .xfrmblock import XfrmBlock

_NETLINK_XFRM = 6  # linux/netlink.h

__all__ = [
    "KernelDataPlane",
    "capture_filter",
    "complete_udp_checksum",
    "kernel_esp_unavailable",
    "kernel_gre_unavailable",
    "link_commands",
    "neighbour_misses",
]

Log = Callable[[str, str], None]

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_NHRP = 0x2001
PACKET_OUTGOING = 4
SOL_SOCKET = 1
SO_ATTACH_FILTER = 26
RTMGRP_NEIGH = 0x4
RTM_GETNEIGH = 30
NDA_DST = 1
NUD_INCOMPLETE = 0x01
AF_INET = 2

# Classic BPF (linux/filter.h, linux/bpf_common.h).
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_RET_K = 0x06
SKF_AD_OFF = -0x1000
SKF_AD_PROTOCOL = 0
SKF_AD_PKTTYPE = 4
# How much of a packet the capture socket takes: all of a multicast one (it
# is sent on), the headers of a unicast one (a Traffic Indication quotes the
# start of the packet; the rest would only cost copies).
WHOLE = 0xFFFF
HEADERS = 128
BATCH = 64
# ...or this long (seconds), then yield: during a registration storm every
# wake-up finds the socket full, and the management API, timers and
# neighbour writes run only between batches (issue 20: API p99 in a storm).
BATCH_TIME = 0.002
_INSN = struct.Struct("=HBBI")
_NLMSGHDR = struct.Struct("=IHHII")
_NDMSG = struct.Struct("=BxxxiHBB")
_RTA = struct.Struct("=HH")


def link_commands(cfg: Interface) -> list[list[str]]:
    """The `ip` commands that make the interface (each an argv)."""
    name = cfg.name
    add = ["ip", "link", "add", name, "type", "gre"]
    if cfg.tunnel.key is not None:
        add += ["key", str(cfg.tunnel.key)]
    # No `remote`: multipoint. TTL fixed (64, as Cisco and nhrpd set it),
    # which also keeps path MTU discovery on (DF on the outer header).
    add += ["local", str(cfg.tunnel.source), "ttl", "64"]
    return [
        add,
        ["ip", "link", "set", name, "mtu", str(cfg.mtu), "arp", "on"],
        ["ip", "addr", "replace", str(cfg.address), "dev", name],
        ["ip", "link", "set", name, "up"],
    ]


def sysctls(name: str) -> list[tuple[str, str]]:
    """Neighbour resolution by the daemon only; no ICMP redirects (a hub
    hairpins by design; NHRP redirects, not ICMP)."""
    neigh = f"/proc/sys/net/ipv4/neigh/{name}"
    conf = f"/proc/sys/net/ipv4/conf/{name}"
    return [
        (f"{neigh}/ucast_solicit", "0"),
        (f"{neigh}/mcast_solicit", "0"),
        (f"{neigh}/app_solicit", "1"),
        (f"{conf}/send_redirects", "0"),
        (f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "1"),
    ]


def capture_filter(redirect: bool) -> bytes:
    """The capture socket's classic BPF program (a sock_fprog's filter
    array): outgoing IPv4 multicast and broadcast, whole; with `redirect`,
    also unicast IPv4 in and out, its first HEADERS bytes. Offsets are from
    the inner IP header (a SOCK_DGRAM packet socket)."""
    unicast = HEADERS if redirect else 0
    ad = (SKF_AD_OFF + SKF_AD_PROTOCOL) & 0xFFFFFFFF
    pkttype = (SKF_AD_OFF + SKF_AD_PKTTYPE) & 0xFFFFFFFF
    prog = [
        (BPF_LD_W_ABS, 0, 0, ad),  # 0: A = protocol
        (BPF_JEQ_K, 0, 6, ETH_P_IP),  # 1: not IPv4 -> 8 (drop)
        (BPF_LD_W_ABS, 0, 0, pkttype),  # 2
        (BPF_JEQ_K, 0, 3, PACKET_OUTGOING),  # 3: incoming -> 7
        (BPF_LD_W_ABS, 0, 0, 16),  # 4: A = destination address
        (BPF_JGE_K, 3, 0, 0xE0000000),  # 5: multicast/broadcast -> 9 (whole)
        (BPF_RET_K, 0, 0, unicast),  # 6: outgoing unicast
        (BPF_RET_K, 0, 0, unicast),  # 7: incoming
        (BPF_RET_K, 0, 0, 0),  # 8: drop
        (BPF_RET_K, 0, 0, WHOLE),  # 9
    ]
    return b"".join(_INSN.pack(*insn) for insn in prog)


def neighbour_misses(data: bytes, index: int) -> list[IPv4Address]:
    """The IPv4 addresses the kernel asks userspace to resolve on interface
    `index` (RTM_GETNEIGH, NUD_INCOMPLETE: app_solicit) in netlink `data`."""
    out: list[IPv4Address] = []
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, kind = _NLMSGHDR.unpack_from(data, off)[:2]
        if length < _NLMSGHDR.size or off + length > len(data):
            break
        body = off + _NLMSGHDR.size
        if kind == RTM_GETNEIGH and length >= _NLMSGHDR.size + _NDMSG.size:
            family, ifindex, state = _NDMSG.unpack_from(data, body)[:3]
            if family == AF_INET and ifindex == index and state & NUD_INCOMPLETE:
                attr = body + _NDMSG.size
                end = off + length
                while attr + _RTA.size <= end:
                    alen, atype = _RTA.unpack_from(data, attr)
                    if alen < _RTA.size:
                        break
                    if atype == NDA_DST and alen == _RTA.size + 4:
                        out.append(IPv4Address(data[attr + 4 : attr + 8]))
                    attr += (alen + 3) & ~3
        off += (length + 3) & ~3
    return out


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def complete_udp_checksum(packet: bytes) -> bytes:
    """The packet with its UDP checksum computed. A packet seen leaving the
    GRE device is seen before checksum offload (the device has HW_CSUM): a
    local sender's UDP checksum holds only the pseudo-header sum, which the
    kernel would have finished on its own way out, and a copy sent on as is
    would be dropped by every receiver. Other protocols pass unchanged
    (raw-socket senders such as OSPF and PIM sum their own)."""
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 8 or packet[9] != 17 or packet[6:8] not in (b"\0\0", b"\x40\0"):
        return packet  # not UDP, or a fragment (no header to fix in the rest)
    udp = bytearray(packet[ihl:])
    udp[6:8] = b"\0\0"
    pseudo = packet[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    checksum = ~_sum16(pseudo + bytes(udp)) & 0xFFFF
    udp[6:8] = struct.pack("!H", checksum or 0xFFFF)
    return packet[:ihl] + bytes(udp)


def _module_loads(name: str) -> bool:
    """Whether the kernel module ``name`` is loaded, built in, or loads now."""
    if Path("/sys/module", name).exists():
        return True
    builtin = Path("/lib/modules", os.uname().release, "modules.builtin")
    if builtin.exists() and f"/{name}.ko" in builtin.read_text():
        return True
    modprobe = shutil.which("modprobe")
    if modprobe is None:
        return False
    subprocess.run([modprobe, "-q", name], capture_output=True, check=False, timeout=10)
    return Path("/sys/module", name).exists()


def kernel_gre_unavailable() -> str | None:
    """Why the kernel plane cannot run here (None: ip_gre is loaded or loads)."""
    if os.geteuid() != 0:
        return "not root"
    if Path("/sys/module/ip_gre").exists():
        return None
    if shutil.which("ip") is None:
        return "ip (iproute2) not found"
    if _module_loads("ip_gre"):
        return None
    return "the kernel has no ip_gre module"


def kernel_esp_unavailable() -> str | None:
    """Why charon cannot use the kernel's ESP here (None: XFRM's netlink
    family opens and esp4 is there or loads). A host may have XFRM without
    ESP (this project's CI machines do: real-peers.md)."""
    if os.geteuid() != 0:
        return "not root"
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_XFRM).close()
    except OSError:
        return "the kernel has no XFRM netlink (xfrm_user)"
    if _module_loads("esp4"):
        return None
    return "the kernel has no esp4 module"


class KernelDataPlane(DataPlane):
    def __init__(self, cfg: Interface, ipr: IPRoute, log: Log) -> None:
        self.cfg, self.ipr, self.log = cfg, ipr, log
        self.redirect = cfg.nhrp.redirect
        self._index = -1
        self._created = False  # the device is ours to delete
        self._hooks: DataPlaneHooks | None = None
        self._loop: AbstractEventLoop | None = None
        self._nhrp: socket.socket | None = None
        self._capture: socket.socket | None = None
        self._misses: socket.socket | None = None
        self._neighbours: NeighbourWriter | None = None
        self._bindings: dict[Address, IPv4Address] = {}
        # Tunnel addresses whose neighbour entry points at the NHS until
        # they are bound (a kernel miss before the resolution completed).
        self._via_nhs: set[IPv4Address] = set()
        self._nhs: list[IPv4Address] = []
        self._multicast: Collection[Nbma] = ()
        self._came_from: dict[IPv4Address, IPv4Address] = {}
        # sll_addr bytes -> NBMA address (the NHRP reader's parse cache).
        self._nbma_of: dict[bytes, IPv4Address] = {}
        self._stats: Counter[str] = Counter()
        self._peers: dict[Nbma, PeerCounters] = {}
        self._mss: MssClamp | None = None
        self._block = XfrmBlock(ipv4_only(cfg.tunnel.source))  # IPsec: no cleartext GRE

    # -- life -----------------------------------------------------------------

    def open(self, hooks: DataPlaneHooks) -> None:
        self._hooks = hooks
        name = self.cfg.name
        for i, argv in enumerate(link_commands(self.cfg)):
            res = subprocess.run(argv, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                if i > 0:  # ours, half made (a device that was there stays)
                    self._remove_link()
                raise DataPlaneError(f"`{' '.join(argv)}` failed: {res.stderr.strip()}")
        self._created = True
        for path, value in sysctls(name):
            try:
                Path(path).write_text(value)
            except OSError as exc:
                self.log("sysctl-error", f"{path}: {exc.strerror}")
        try:
            self._index = self.ipr.link_lookup(ifname=name)[0]
            self._nhrp = socket.socket(
                socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_NHRP)
            )
            self._nhrp.bind((name, ETH_P_NHRP))
            self._capture = socket.socket(
                socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL)
            )
            self._attach_filter()
            self._capture.bind((name, ETH_P_ALL))
            self._misses = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            self._misses.bind((0, RTMGRP_NEIGH))
            for sock in (self._nhrp, self._capture, self._misses):
                sock.setblocking(False)
        except OSError as exc:
            self.close()
            raise DataPlaneError(f"cannot open the sockets of {name}: {exc}") from None
        self._neighbours = NeighbourWriter(self._index, self.log)
        if self.cfg.tcp_adjust_mss is not None:
            # The same owned nftables table as on the TAP (mss.py): it
            # matches the interface by name, whatever kind of device it is.
            try:
                self._mss = MssClamp(name, self.cfg.tcp_adjust_mss)
            except OSError as exc:
                self.close()
                raise DataPlaneError(f"tcp_adjust_mss: {exc}") from None

    def _attach_filter(self) -> None:
        assert self._capture is not None
        code = capture_filter(self.redirect)
        import ctypes  # only for the sock_fprog's pointer

        buf = ctypes.create_string_buffer(code)
        fprog = struct.pack("HL", len(code) // _INSN.size, ctypes.addressof(buf))
        self._capture.setsockopt(SOL_SOCKET, SO_ATTACH_FILTER, fprog)

    @property
    def index(self) -> int:
        return self._index

    def start(self, loop: AbstractEventLoop) -> None:
        assert self._nhrp is not None and self._capture is not None and self._misses is not None
        if self._loop is None and self._neighbours is not None:
            self._neighbours.start(loop)
        self._loop = loop
        loop.add_reader(self._nhrp.fileno(), self._on_nhrp)
        loop.add_reader(self._capture.fileno(), self._on_capture)
        loop.add_reader(self._misses.fileno(), self._on_misses)

    def stop(self) -> None:
        if self._loop is None:
            return
        for sock in (self._nhrp, self._capture, self._misses):
            if sock is not None:
                self._loop.remove_reader(sock.fileno())

    def close(self) -> None:
        if self._neighbours is not None:
            self._neighbours.close()
        if self._mss is not None:
            self._mss.release()
            self._mss = None
        for sock in (self._nhrp, self._capture, self._misses):
            if sock is not None:
                sock.close()
        self._nhrp = self._capture = self._misses = None
        if self._block.placed:
            self._block.remove()
        if self._created:
            self._remove_link()

    def _remove_link(self) -> None:
        # A kernel device outlives the process (unlike a TAP): delete it.
        self._created = False
        subprocess.run(["ip", "link", "del", self.cfg.name], capture_output=True, check=False)

    # -- readers ----------------------------------------------------------------

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _on_nhrp(self) -> None:
        assert self._nhrp is not None and self._hooks is not None
        now = self._now()
        clock = time.monotonic
        until = clock() + BATCH_TIME
        addresses = self._nbma_of
        for i in range(BATCH):
            if i & 7 == 7 and clock() > until:
                break  # the rest on the next wake-up, after the loop's other work
            try:
                data, addr = self._nhrp.recvfrom(65535)
            except BlockingIOError:
                break
            if addr[2] == PACKET_OUTGOING:
                continue  # our own, seen leaving
            src = addr[4]
            nbma = addresses.get(src)
            if nbma is None:
                if len(src) != 4:
                    self._stats["rx.bad_source"] += 1
                    continue
                # Parsed once per peer: IPv4Address() is a visible share of
                # a refresh's cost at 20k/s. Bounded like _came_from.
                if len(addresses) > 65536:
                    addresses.clear()
                nbma = addresses[src] = IPv4Address(src)
            self._stats["rx.nhrp"] += 1
            self._count(nbma, rx=len(data))
            self._hooks.receive(data, nbma, now)
        self._hooks.batch_done()

    def _on_capture(self) -> None:
        assert self._capture is not None and self._hooks is not None
        now = self._now()
        for _ in range(BATCH):
            try:
                data, addr = self._capture.recvfrom(65535)
            except BlockingIOError:
                break
            if len(data) < 20:
                continue
            if addr[2] == PACKET_OUTGOING:
                if data[16] >= 224:
                    self._replicate(data)
                elif self.redirect:
                    came = self._came_from.get(IPv4Address(data[12:16]))
                    if came is not None:
                        # Forwarded back into the cloud: the sender should
                        # talk to the destination directly (phase 3).
                        self._stats["hairpin"] += 1
                        self._hooks.hairpin(data, came, now)
            elif self.redirect and len(addr[4]) == 4:
                self._came_from[IPv4Address(data[12:16])] = IPv4Address(addr[4])
                if len(self._came_from) > 65536:  # a flood of sources only resets it
                    self._came_from.clear()
        self._hooks.batch_done()

    def _replicate(self, packet: bytes) -> None:
        assert self._capture is not None
        packet = complete_udp_checksum(packet)
        for nbma in self._multicast:
            try:
                self._capture.sendto(packet, (self.cfg.name, ETH_P_IP, 0, 0, nbma.packed))
            except OSError:
                self._stats["tx.multicast_errors"] += 1
                continue
            self._count(ipv4_only(nbma), tx=len(packet))
        self._stats["tx.multicast"] += 1

    def _on_misses(self) -> None:
        assert self._misses is not None and self._hooks is not None
        now = self._now()
        while True:
            try:
                data = self._misses.recv(65536)
            except BlockingIOError:
                break
            except OSError:  # ENOBUFS: notifications lost; the kernel asks again
                continue
            for addr in neighbour_misses(data, self._index):
                if addr in self._bindings:
                    self._neighbour(addr, self._bindings[addr])
                    continue
                self._stats["neighbour.miss"] += 1
                self._hooks.next_hop_unbound(addr, now)
                if self._nhs and addr not in self._bindings:
                    # Via the hub meanwhile (Cisco's temporary entry).
                    self._via_nhs.add(addr)
                    self._neighbour(addr, self._nhs[0])
        self._hooks.batch_done()

    def flush_neighbours(self) -> None:
        if self._neighbours is not None:
            self._neighbours.flush()

    def _neighbour(self, protocol: Address, nbma: IPv4Address | None) -> None:
        if self._neighbours is not None:
            if nbma is None:
                self._neighbours.delete(protocol)
            else:
                self._neighbours.replace(protocol, nbma.packed)

    def _count(self, nbma: IPv4Address, tx: int = 0, rx: int = 0) -> None:
        peer = self._peers.get(nbma)
        if peer is None:
            if len(self._peers) >= MAX_PEER_COUNTERS:
                self._stats["peers.untracked"] += 1
                return
            peer = self._peers[nbma] = PeerCounters()
        if tx:
            peer.tx_packets += 1
            peer.tx_bytes += tx
        if rx:
            peer.rx_packets += 1
            peer.rx_bytes += rx

    # -- the daemon's decisions -------------------------------------------------

    def bind(self, protocol: Address, nbma: Nbma) -> None:
        nbma = ipv4_only(nbma)
        self._bindings[protocol] = nbma
        if isinstance(protocol, IPv4Address):
            self._via_nhs.discard(protocol)
            if protocol in self.cfg.address.network:
                self._neighbour(protocol, nbma)

    def unbind(self, protocol: Address) -> None:
        was = self._bindings.pop(protocol, None)
        on_link = isinstance(protocol, IPv4Address) and protocol in self.cfg.address.network
        if was is not None and on_link:
            self._neighbour(protocol, None)

    @property
    def bindings(self) -> Mapping[Address, Nbma]:
        return self._bindings

    def send_nhrp(self, nbma: Nbma, data: bytes) -> None:
        if self._nhrp is None:
            return
        nbma = ipv4_only(nbma)
        try:
            self._nhrp.sendto(data, (self.cfg.name, ETH_P_NHRP, 0, 0, nbma.packed))
        except OSError as exc:
            self._stats["tx.nhrp_errors"] += 1
            self.log("nhrp-send-error", f"to {nbma}: {exc.strerror}")
            return
        self._stats["tx.nhrp"] += 1
        self._count(nbma, tx=len(data))

    def set_nhs(self, nbmas: list[Nbma]) -> None:
        self._nhs = [ipv4_only(n) for n in nbmas]
        # Entries waiting on a resolution follow the preferred NHS.
        for addr in self._via_nhs:
            self._neighbour(addr, self._nhs[0] if self._nhs else None)
        if not self._nhs:
            self._via_nhs.clear()

    def set_multicast(self, nbmas: Collection[Nbma]) -> None:
        self._multicast = nbmas  # live (plane.py)

    def set_redirect(self, on: bool) -> None:
        self.redirect = on
        if self._capture is not None:
            self._attach_filter()

    def protect_path(self, device: str | None) -> None:
        """IPsec through the kernel's XFRM (`device`, kernel-libipsec's,
        does not apply here): block policies keep GRE from and to our NBMA
        address in clear text out (dataplane/xfrmblock.py)."""
        self._block.place()

    # -- what happened ------------------------------------------------------------

    @property
    def stats(self) -> Mapping[str, int]:
        if self._mss is None:
            return self._stats
        out = dict(self._stats)
        for direction, n in self._mss.clamped().items():
            out[f"tcp.mss_clamped.{direction}"] = n
        return out

    @property
    def peers(self) -> Mapping[Nbma, PeerCounters]:
        return self._peers
