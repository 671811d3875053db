"""The eBPF data plane: the userspace plane, with bound peers' unicast in the kernel.

Everything the userspace plane does, it still does (dataplane/userspace.py:
the TAP, the raw GRE socket, ARP/ND from NHRP, NHRP itself, multicast,
traffic to unbound peers via the NHS). Two tc programs (bpf/mgre.c), built
by clang on first use and cached, take the rest off that path:

- tcx egress of the TAP: IPv4 (and IPv6 but ICMPv6) to a bound peer's MAC is
  encapsulated in GRE and leaves on the underlay (bpf_redirect_neigh);
- tcx ingress of the underlay: GRE with our key from a bound peer is
  decapsulated and redirected into the TAP's ingress.

The `peers` map holds exactly the NBMA addresses with a binding, and their
counters, which `stats`/`peers` add to the userspace ones and which a
timer reads each second to tell the engines which bindings are in use
(shortcut refresh). The programs are attached by tcx links whose only
references are this process's descriptors (bpfsys.py): on any exit, kill -9
included, the kernel detaches them; the TAP goes with its descriptor too.

Not fast-pathed, by design: a hub with redirect (it must see every packet
it hairpins back into the cloud to send Traffic Indications: the programs
pass everything there), and IPsec (bpf_redirect bypasses xfrm: protect_path
turns the programs off, and config refuses `dataplane: ebpf` with ipsec).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import struct
import subprocess
import time
from asyncio import AbstractEventLoop, TimerHandle
from collections.abc import Mapping
from importlib import resources
from ipaddress import IPv4Address
from pathlib import Path

from pyroute2 import IPRoute

from dmvpn.config import Interface
from dmvpn.wire import Address

from . import bpfsys
from .forwarding import USE_REPORT_INTERVAL, PeerCounters
from .nbmamac import Nbma, nbma_mac
from .plane import DataPlaneError, DataPlaneHooks, ipv4_only
from .userspace import Log, UserspaceDataPlane

__all__ = [
    "CFG_IPV6",
    "CFG_KEY",
    "CFG_ON",
    "EbpfDataPlane",
    "FastCounters",
    "build_object",
    "ebpf_unavailable",
    "pack_config",
    "unpack_peer",
]

# struct config's flags (bpf/mgre.c)
CFG_ON = 1
CFG_KEY = 2
CFG_IPV6 = 4
PROGRAMS = ["dmvpn_egress", "dmvpn_ingress"]
MAPS = ["config", "peers"]
PEER_VALUE = struct.Struct("=QQQQQ4s4x")  # struct peer
CONFIG_VALUE = struct.Struct("=4s4sIIII6s2x")  # struct config
CLANG_FLAGS = ["-O2", "-g", "-target", "bpf", "-Wall"]
# IPv4 header + GRE header with a key: what encapsulation adds.
OVERHEAD = 28
# A peer proven (bpf/mgre.c, capable_ns) is probed again when its proof is
# older than this; an unproven one after PROBE_INTERVAL, then twice as long
# each time up to PROBE_MAX (a userspace or non-dmvpn peer never answers
# the right way: it gets a ping every 5 minutes, not every 5 s) (seconds).
REPROVE_AFTER = 20.0
PROBE_INTERVAL = 5.0
PROBE_MAX = 300.0
PROBE_PAYLOAD = b"dmvpn-ebpf-probe"
SOL_RAW = 255
ICMP_FILTER = 1


class FastCounters:
    """What the programs counted for one peer (a `struct peer`)."""

    __slots__ = ("capable_ns", "last_dst", "rx_bytes", "rx_packets", "tx_bytes", "tx_packets")

    def __init__(
        self,
        tx_packets: int = 0,
        tx_bytes: int = 0,
        rx_packets: int = 0,
        rx_bytes: int = 0,
        capable_ns: int = 0,
        last_dst: bytes = bytes(4),
    ) -> None:
        self.tx_packets, self.tx_bytes = tx_packets, tx_bytes
        self.rx_packets, self.rx_bytes = rx_packets, rx_bytes
        # CLOCK_MONOTONIC ns of the peer's last probe reply from its kernel.
        self.capable_ns = capable_ns
        # The inner IPv4 destination last sent fast (zeros: none yet): the
        # shortcut that carried it is the one in use, as the userspace path
        # reports per packet.
        self.last_dst = last_dst

    def add(self, other: FastCounters) -> None:
        self.tx_packets += other.tx_packets
        self.tx_bytes += other.tx_bytes
        self.rx_packets += other.rx_packets
        self.rx_bytes += other.rx_bytes


def unpack_peer(value: bytes) -> FastCounters:
    return FastCounters(*PEER_VALUE.unpack(value))


def pack_config(
    *,
    local: IPv4Address,
    key: int | None,
    flags: int,
    tap_ifindex: int,
    underlay_ifindex: int,
    max_inner: int,
) -> bytes:
    """A `struct config`: addresses and the key in network order, as on the wire."""
    if key is not None:
        flags |= CFG_KEY
    return CONFIG_VALUE.pack(
        local.packed,
        (key or 0).to_bytes(4, "big"),
        flags,
        tap_ifindex,
        underlay_ifindex,
        max_inner,
        nbma_mac(local),
    )


def echo_request(ident: int, seq: int) -> bytes:
    """An ICMP echo request carrying PROBE_PAYLOAD (the probe of a peer)."""
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + PROBE_PAYLOAD
    total = sum(struct.unpack(f"!{len(body) // 2}H", body))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return body[:2] + struct.pack("!H", ~total & 0xFFFF) + body[4:]


def _source() -> bytes:
    return resources.files("dmvpn.dataplane").joinpath("bpf/mgre.c").read_bytes()


def cache_dir() -> Path:
    return Path(os.environ.get("DMVPN_BPF_CACHE", "/var/cache/dmvpn"))


def build_object() -> Path:
    """bpf/mgre.c compiled by clang, cached by the hash of source and flags."""
    src = _source()
    digest = hashlib.sha256(src + " ".join(CLANG_FLAGS).encode()).hexdigest()[:16]
    obj = cache_dir() / f"mgre-{digest}.o"
    if obj.exists():
        return obj
    clang = shutil.which("clang")
    if clang is None:
        raise DataPlaneError("clang not found (Debian package clang) to build the eBPF programs")
    obj.parent.mkdir(parents=True, exist_ok=True)
    multiarch = Path(f"/usr/include/{os.uname().machine}-linux-gnu")
    tmp_src = obj.with_suffix(f".{os.getpid()}.c")
    tmp_obj = obj.with_suffix(f".{os.getpid()}.o")
    try:
        tmp_src.write_bytes(src)
        res = subprocess.run(
            [clang, *CLANG_FLAGS, f"-I{multiarch}", "-c", str(tmp_src), "-o", str(tmp_obj)],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            raise DataPlaneError(f"clang could not build the eBPF programs: {res.stderr[-800:]}")
        tmp_obj.replace(obj)  # atomic: a concurrent daemon sees all or nothing
    finally:
        tmp_src.unlink(missing_ok=True)
        tmp_obj.unlink(missing_ok=True)
    return obj


def ebpf_unavailable() -> str | None:
    """Why the eBPF plane cannot run here (None: it can, as far as one can
    tell without loading it; open() still falls back when `auto`)."""
    if os.geteuid() != 0:
        return "not root"
    for tool, package in (("clang", "clang"), ("bpftool", "bpftool")):
        if shutil.which(tool) is None:
            return f"{tool} not found (Debian package {package})"
    if not Path("/usr/include/bpf/bpf_helpers.h").exists():
        return "bpf/bpf_helpers.h not found (Debian package libbpf-dev)"
    release = os.uname().release.split(".")
    try:
        if (int(release[0]), int(release[1].split("-")[0])) < (6, 6):
            return f"kernel {os.uname().release} has no tcx links (6.6+)"
    except (ValueError, IndexError):
        pass
    return None


class EbpfDataPlane(UserspaceDataPlane):
    def __init__(self, cfg: Interface, ipr: IPRoute, log: Log, required: bool = True) -> None:
        super().__init__(cfg, ipr, log)
        # `dataplane: ebpf` (required): failing to load is an error; `auto`:
        # the interface runs on the userspace path and the log says why.
        self.required = required
        self._loaded: bpfsys.Loaded | None = None
        self._links: list[int] = []
        self._peers_map: bpfsys.BpfMap | None = None
        self._config_map: bpfsys.BpfMap | None = None
        self._config: dict[str, int] = {}
        self._protected = False
        # NBMA -> what the programs counted (last read), and what peers no
        # longer in the map had counted before they left it.
        self._fast: dict[Nbma, FastCounters] = {}
        self._retired: dict[Nbma, FastCounters] = {}
        # NBMA -> the transmit count last reported as use (binding_used).
        self._reported: dict[Nbma, int] = {}
        self._poll: TimerHandle | None = None
        self._probe: socket.socket | None = None
        self._probed: dict[Nbma, float] = {}  # NBMA -> when last probed
        self._backoff: dict[Nbma, float] = {}  # NBMA -> seconds to the next probe
        self._seq = 0

    @property
    def active(self) -> bool:
        return self._loaded is not None

    # -- life -----------------------------------------------------------------

    def open(self, hooks: DataPlaneHooks) -> None:
        super().open(hooks)
        try:
            self._attach()
        except (DataPlaneError, OSError) as exc:
            self._detach()
            if self.required:
                self.log("dataplane-error", f"{self.cfg.name}: eBPF data plane: {exc}")
                super().close()  # the interface goes: nothing half-made stays
                raise DataPlaneError(f"eBPF data plane: {exc}") from None
            self.log("dataplane", f"{self.cfg.name}: userspace data plane (eBPF: {exc})")
            return
        self.log("dataplane", f"{self.cfg.name}: eBPF fast path attached")

    def _attach(self) -> None:
        source = ipv4_only(self.cfg.tunnel.source)
        underlay = self._underlay(source)
        mtu = self.ipr.get_links(underlay)[0].get_attr("IFLA_MTU")
        obj = build_object()
        self._loaded = loaded = bpfsys.load_object(obj, PROGRAMS, MAPS)
        self._config_map = bpfsys.BpfMap(loaded.maps["config"], 4, CONFIG_VALUE.size)
        self._peers_map = bpfsys.BpfMap(loaded.maps["peers"], 4, PEER_VALUE.size)
        self._config = {
            "tap_ifindex": self.index,
            "underlay_ifindex": underlay,
            "max_inner": mtu - OVERHEAD,
        }
        self._write_config()
        self._links.append(
            bpfsys.link_create(loaded.progs["dmvpn_egress"], self.index, bpfsys.BPF_TCX_EGRESS)
        )
        self._links.append(
            bpfsys.link_create(loaded.progs["dmvpn_ingress"], underlay, bpfsys.BPF_TCX_INGRESS)
        )
        # Echo requests that prove peers (bpf/mgre.c); the replies are the
        # program's to see, so this socket takes none (ICMP_FILTER: all types).
        probe = self._probe = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        probe.setsockopt(SOL_RAW, ICMP_FILTER, b"\xff\xff\xff\xff")
        probe.setblocking(False)

    def _underlay(self, source: IPv4Address) -> int:
        """The device holding the tunnel source: GRE leaves and arrives there."""
        for msg in self.ipr.get_addr(family=socket.AF_INET):
            if msg.get_attr("IFA_LOCAL") == str(source) or msg.get_attr("IFA_ADDRESS") == str(
                source
            ):
                return int(msg["index"])
        raise DataPlaneError(f"no device holds the tunnel source {source}")

    def _write_config(self) -> None:
        if self._config_map is None:
            return
        on = not (self.redirect or self._protected)
        flags = (CFG_ON if on else 0) | (CFG_IPV6 if self.cfg.ipv6_address is not None else 0)
        value = pack_config(
            local=ipv4_only(self.cfg.tunnel.source),
            key=self.cfg.tunnel.key,
            flags=flags,
            **self._config,
        )
        self._config_map.update(b"\x00\x00\x00\x00", value)

    def _detach(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        for fd in self._links:
            os.close(fd)
        self._links = []
        if self._loaded is not None:
            self._read_counters()  # the last counts, before the maps go
            self._loaded.close()
            self._loaded = None
        self._peers_map = self._config_map = None

    def move_source(self, source: Nbma) -> None:
        # The tc programs hold the source in their config map, and sit on
        # the device that held it: not followed yet.
        raise DataPlaneError("the eBPF data plane cannot change its tunnel source yet")

    def start(self, loop: AbstractEventLoop) -> None:
        super().start(loop)
        if self.active and self._poll is None:
            self._poll = loop.call_later(USE_REPORT_INTERVAL, self._on_poll)

    def stop(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None
        if self._loop is not None:  # never started (open failed): nothing runs
            super().stop()

    def close(self) -> None:
        self._detach()
        if self._tap is not None:
            super().close()
            self._tap = self._gre = None  # closed once, whoever asks again

    # -- counters -------------------------------------------------------------

    def _read_counters(self) -> None:
        """The programs' counters as they are now (show reads them fresh)."""
        if self._peers_map is not None:
            self._fast = {IPv4Address(k): unpack_peer(v) for k, v in self._peers_map.items()}

    def _used(self) -> set[Nbma]:
        """The peers the programs sent to since the last call."""
        used = set()
        for nbma, c in self._fast.items():
            if c.tx_packets > self._reported.get(nbma, 0):
                used.add(nbma)
                self._reported[nbma] = c.tx_packets
        return used

    def _on_poll(self) -> None:
        assert self._loop is not None and self._hooks is not None
        self._poll = self._loop.call_later(USE_REPORT_INTERVAL, self._on_poll)
        self._read_counters()
        used = self._used()
        self._prove()
        if not used:
            return
        now = self._loop.time()
        # The programs count per peer, not per destination: every binding to
        # a peer that carried data is in use (shortcut refresh, idle expiry),
        # and so is the entry covering the last destination sent to it (a
        # phase 3 shortcut to a LAN prefix, as the userspace path reports).
        for protocol, nbma in list(self.bindings.items()):
            if nbma in used:
                self._hooks.binding_used(protocol, now)
        for nbma in used:
            dst = self._fast[nbma].last_dst
            if dst != bytes(4):
                self._hooks.binding_used(IPv4Address(dst), now)
        self._hooks.batch_done()

    def _prove(self) -> None:
        """Ping peers not (or no longer recently) proven to decapsulate in
        their kernel, by a tunnel address bound to them."""
        if self._probe is None or self._loop is None:
            return
        now, mono = self._loop.time(), time.monotonic_ns()
        for protocol, nbma in list(self.bindings.items()):
            c = self._fast.get(nbma)
            if not isinstance(protocol, IPv4Address) or protocol not in self.cfg.address.network:
                continue
            if c is not None and c.capable_ns and mono - c.capable_ns < REPROVE_AFTER * 1e9:
                self._backoff.pop(nbma, None)  # proven: the next failure starts over
                continue
            last = self._probed.get(nbma)
            interval = self._backoff.get(nbma, PROBE_INTERVAL)
            if last is not None and now - last < interval:
                continue
            if last is not None:
                self._backoff[nbma] = min(interval * 2, PROBE_MAX)
            self._probed[nbma] = now
            self._seq = (self._seq + 1) & 0xFFFF
            try:
                probe = echo_request(os.getpid() & 0xFFFF, self._seq)
                self._probe.sendto(probe, (str(protocol), 0))
            except OSError:
                pass  # no route yet: the next round tries again

    def fast_peers(self) -> dict[Nbma, FastCounters]:
        """Per NBMA peer, what the programs carried (current and retired)."""
        self._read_counters()
        out: dict[Nbma, FastCounters] = {}
        for table in (self._retired, self._fast):
            for nbma, c in table.items():
                out.setdefault(nbma, FastCounters()).add(c)
        return out

    @property
    def stats(self) -> Mapping[str, int]:
        out = dict(super().stats)
        total = FastCounters()
        for c in self.fast_peers().values():
            total.add(c)
        out["fast.attached"] = int(self.active and not (self.redirect or self._protected))
        out["fast.tx.packets"] = total.tx_packets
        out["fast.tx.bytes"] = total.tx_bytes
        out["fast.rx.packets"] = total.rx_packets
        out["fast.rx.bytes"] = total.rx_bytes
        return out

    @property
    def peers(self) -> Mapping[Nbma, PeerCounters]:
        """The userspace counters plus the programs' (what the peer exchanged)."""
        fast = self.fast_peers()
        out: dict[Nbma, PeerCounters] = {}
        for nbma in {*super().peers, *fast}:
            merged = out[nbma] = PeerCounters()
            slow = super().peers.get(nbma)
            if slow is not None:
                merged.tx_packets, merged.tx_bytes = slow.tx_packets, slow.tx_bytes
                merged.rx_packets, merged.rx_bytes = slow.rx_packets, slow.rx_bytes
                merged.last_use = slow.last_use
            extra = fast.get(nbma)
            if extra is not None:
                merged.tx_packets += extra.tx_packets
                merged.tx_bytes += extra.tx_bytes
                merged.rx_packets += extra.rx_packets
                merged.rx_bytes += extra.rx_bytes
        return out

    # -- the daemon's decisions ------------------------------------------------

    def bind(self, protocol: Address, nbma: Nbma) -> None:
        nbma = ipv4_only(nbma)
        old = self.bindings.get(protocol)
        super().bind(protocol, nbma)
        if old is not None and old != nbma:
            self._forget(old)
        if self._peers_map is not None:
            # NOEXIST: a second binding to the same peer keeps its counters.
            self._peers_map.update(nbma.packed, bytes(PEER_VALUE.size), bpfsys.BPF_NOEXIST)

    def unbind(self, protocol: Address) -> None:
        nbma = self.bindings.get(protocol)
        super().unbind(protocol)
        if nbma is not None:
            self._forget(nbma)

    def _forget(self, nbma: Nbma) -> None:
        """Out of the fast path once no binding names it; keep its counts."""
        if self._peers_map is None or self.forwarder.nbma_bound(nbma):
            return
        value = self._peers_map.lookup(nbma.packed)
        self._peers_map.delete(nbma.packed)
        self._fast.pop(nbma, None)
        self._probed.pop(nbma, None)
        self._backoff.pop(nbma, None)
        self._reported.pop(nbma, None)
        if value is not None:
            self._retired.setdefault(nbma, FastCounters()).add(unpack_peer(value))

    def set_redirect(self, on: bool) -> None:
        super().set_redirect(on)
        self._write_config()

    def protect_path(self, device: str | None) -> None:
        """IPsec: bpf_redirect would bypass xfrm, so the programs pass
        everything from now on (config refuses `ebpf` with ipsec; `auto`
        picks userspace: this is the belt to those braces)."""
        self._protected = True
        self._write_config()
        super().protect_path(device)
