"""The userspace mGRE forwarding logic, free of sockets and devices.

The DMVPN interface is a TAP device: to the kernel a broadcast Ethernet
segment. Every peer appears on it with a link-layer address derived from its
NBMA address (02:00 + the four IPv4 bytes; for an IPv6 underlay 06:00 + a
digest, nbma.py), so a frame's destination MAC names the NBMA address to
send it to, with no per-packet table lookup beyond a dict. ARP for a tunnel
address is answered from NHRP: the peer's MAC when the address is bound;
the NHS's MAC while it is not (Cisco's temporary entry: traffic goes via
the hub), and a gratuitous ARP moves the kernel's neighbour entry once the
binding arrives. IPv6 (a dual-stack overlay) is
carried the same way, GRE protocol type 0x86DD, with Neighbor Discovery in
place of ARP (nd.py). The I/O (TAP, raw GRE socket) is injected, so this
runs the same in tests and in the daemon.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from ipaddress import IPv4Address, IPv6Address
from typing import Protocol

from dmvpn.wire import Address, ArpOp, ArpPacket, DecodeError, GrePacket, decode_arp, decode_gre

from . import nd
from .nbmamac import Nbma, mac_nbma, nbma_mac
from .nd import ETH_IPV6
from .pmtu import IPV4_MIN, IPV6_MIN, PathMtuCache, frag_needed, packet_too_big, wants_df
from .segment import split_tcp4

ETH_IPV4 = b"\x08\x00"
ETH_ARP = b"\x08\x06"
BROADCAST = b"\xff" * 6
GRE_NHRP = 0x2001
GRE_IPV4 = 0x0800
GRE_IPV6 = 0x86DD
# Report a peer's use to the engine at most this often (seconds).
USE_REPORT_INTERVAL = 1.0
# Per-peer counters kept for at most this many NBMA addresses (a flood of
# spoofed sources must not grow memory without bound); the rest are counted
# in stats["peers.untracked"].
MAX_PEER_COUNTERS = 65536
# ICMP errors (Fragmentation Needed, Packet Too Big) sent to inner senders:
# at most this many a second, as Linux's icmp_ratelimit/icmp_msgs_per_sec
# keep a router from becoming an ICMP flood.
ICMP_PER_SECOND = 100
EMSGSIZE = 90


class PeerCounters:
    """GRE packets and bytes (GRE header + payload, as sent to or received
    from the raw socket) exchanged with one NBMA peer: data and NHRP alike."""

    __slots__ = ("last_use", "rx_bytes", "rx_packets", "tx_bytes", "tx_packets")

    def __init__(self) -> None:
        self.rx_packets = 0
        self.rx_bytes = 0
        self.tx_packets = 0
        self.tx_bytes = 0
        # When data to this peer was last reported to the engine (binding_used).
        self.last_use: float | None = None


class EngineHooks(Protocol):
    """What the forwarder tells the NHRP engine (all take ``now``)."""

    def receive(self, data: bytes, src_nbma: Address, now: float) -> None: ...
    def next_hop_unbound(self, next_hop: Address, now: float) -> None: ...
    def hairpin(self, packet: bytes, from_nbma: Address, now: float) -> None: ...
    def binding_used(self, addr: Address, now: float) -> None: ...


class FamilyDispatch:
    """One NHRP engine per protocol family on an interface (Cisco's `ip nhrp`
    and `ipv6 nhrp`, nhrpd's afi instances): NHRP packets go to the engine
    of their ar$pro.type, data-plane events to the engine of the address's
    family. Without an IPv6 engine everything goes to the IPv4 one, as before."""

    def __init__(self, engine4: EngineHooks, engine6: EngineHooks | None = None) -> None:
        self.engine4 = engine4
        self.engine6 = engine6

    def _of(self, addr: Address) -> EngineHooks:
        if self.engine6 is not None and isinstance(addr, IPv6Address):
            return self.engine6
        return self.engine4

    def receive(self, data: bytes, src_nbma: Address, now: float) -> None:
        # ar$pro.type is bytes 2-3 of the fixed header (RFC 2332 5.2.0.1).
        if self.engine6 is not None and data[2:4] == ETH_IPV6:
            self.engine6.receive(data, src_nbma, now)
        else:
            self.engine4.receive(data, src_nbma, now)

    def next_hop_unbound(self, next_hop: Address, now: float) -> None:
        self._of(next_hop).next_hop_unbound(next_hop, now)

    def hairpin(self, packet: bytes, from_nbma: Address, now: float) -> None:
        if self.engine6 is not None and packet[:1] and packet[0] >> 4 == 6:
            self.engine6.hairpin(packet, from_nbma, now)
        else:
            self.engine4.hairpin(packet, from_nbma, now)

    def binding_used(self, addr: Address, now: float) -> None:
        self._of(addr).binding_used(addr, now)


class Forwarder:
    def __init__(
        self,
        *,
        engine: EngineHooks,
        tunnel_address: IPv4Address,
        local_mac: bytes,
        key: int | None,
        send_gre: Callable[[Nbma, bytes], None],
        write_tap: Callable[[bytes], None],
        redirect: bool = False,
        tunnel_address6: IPv6Address | None = None,
        path_mtu: PathMtuCache | None = None,
        send_gre_df: Callable[[IPv4Address, bytes], int] | None = None,
        send_icmp: Callable[[IPv4Address | IPv6Address, bytes], None] | None = None,
        mtu: int = 1400,
    ) -> None:
        self.engine = engine
        # The TAP's MTU: a TCP packet from the cloud longer than it is an
        # underlay GRO super-packet, cut to fit (segment.py).
        self.mtu = mtu
        self.tunnel_address = tunnel_address
        # None: IPv4-only overlay, every IPv6 frame from the kernel is dropped.
        self.tunnel_address6 = tunnel_address6
        self.local_mac = local_mac
        self.key = key
        self.send_gre = send_gre
        self.write_tap = write_tap
        self.redirect = redirect
        # protocol address -> NBMA, mirrored from the engine's bindings.
        self.bindings: dict[Address, Nbma] = {}
        # NBMA -> bindings naming it: "is this peer still bound?" in O(1)
        # (a hub unbinding 50,000 spokes must not scan the others each time).
        self._bound_nbma: Counter[Nbma] = Counter()
        self.nhs: list[Nbma] = []  # NHS NBMA addresses, preferred first
        # The `map multicast` set, resolved: a live collection (plane.py).
        self.multicast: Collection[Nbma] = []
        # Inner source address -> the peer it last came from (hub hairpin).
        self._came_from: dict[IPv4Address | IPv6Address, Nbma] = {}
        self._last_use: dict[Nbma, float] = {}  # peers beyond MAX_PEER_COUNTERS
        self.stats: Counter[str] = Counter()
        self.peers: dict[Nbma, PeerCounters] = {}
        self._gre_header = GrePacket(GRE_IPV4, b"", key=key).encode()
        self._gre_nhrp_header = GrePacket(GRE_NHRP, b"", key=key).encode()
        self._gre6_header = GrePacket(GRE_IPV6, b"", key=key).encode()
        # Path MTU discovery (pmtu.py): None = off, DF never set on the outer
        # header (Cisco's default) and the kernel fragments what is too big.
        self.path_mtu = path_mtu
        self._send_gre_df = send_gre_df
        self._send_icmp = send_icmp
        self._icmp_budget = (0.0, 0)  # (second, ICMP errors sent in it)

    # ------------------------------------------------------------ NHRP out

    def send_nhrp(self, nbma: Nbma, data: bytes) -> None:
        gre = self._gre_nhrp_header + data
        self.send_gre(nbma, gre)
        self.stats["tx.nhrp"] += 1
        peer = self.peers.get(nbma) or self._new_peer(nbma)
        if peer is not None:
            peer.tx_packets += 1
            peer.tx_bytes += len(gre)

    def _new_peer(self, nbma: Nbma) -> PeerCounters | None:
        if len(self.peers) >= MAX_PEER_COUNTERS:
            self.stats["peers.untracked"] += 1
            return None
        peer = self.peers[nbma] = PeerCounters()
        return peer

    # ------------------------------------------------------------ bindings

    def bind(self, protocol: Address, nbma: Nbma) -> None:
        old = self.bindings.get(protocol)
        if old != nbma:
            if old is not None:
                self._release_nbma(old)
            self._bound_nbma[nbma] += 1
        self.bindings[protocol] = nbma
        if isinstance(protocol, IPv4Address):
            # Move the kernel's neighbour entry to the new link-layer address.
            self.write_tap(
                self._arp_frame(
                    ArpOp.REPLY, protocol, nbma_mac(nbma), self.tunnel_address, BROADCAST
                )
            )
        elif isinstance(protocol, IPv6Address) and self.tunnel_address6 is not None:
            # The same for IPv6: an unsolicited NA with Override (RFC 4861 7.2.6).
            na = nd.advertisement(protocol, nbma_mac(nbma), nd.ALL_NODES, solicited=False)
            self.write_tap(nd.multicast_mac(nd.ALL_NODES.packed) + nbma_mac(nbma) + ETH_IPV6 + na)

    def unbind(self, protocol: Address) -> None:
        old = self.bindings.pop(protocol, None)
        if old is not None:
            self._release_nbma(old)

    def _release_nbma(self, nbma: Nbma) -> None:
        n = self._bound_nbma[nbma]
        if n <= 1:
            del self._bound_nbma[nbma]
        else:
            self._bound_nbma[nbma] = n - 1

    def nbma_bound(self, nbma: Nbma) -> bool:
        """Whether any binding names the peer at `nbma`."""
        return nbma in self._bound_nbma

    # ------------------------------------------------------------ TAP -> GRE

    def from_tap(self, frame: bytes, now: float) -> None:
        if len(frame) < 14:
            self.stats["tap.runt"] += 1
            return
        dst = frame[:6]
        etype = frame[12:14]
        if etype == ETH_ARP:
            self._arp_from_kernel(frame[14:], now)
            return
        if etype == ETH_IPV6:
            self._ipv6_from_tap(frame, now)
            return
        if etype != ETH_IPV4:
            self.stats["tap.unsupported_ethertype"] += 1
            return
        payload = frame[14:]
        if dst[0] & 1:
            # Broadcast/multicast (OSPF hellos, RIP): to the `map multicast` set.
            self._to_multicast(self._gre_header + payload)
            return
        source = IPv4Address(payload[12:16]) if self.redirect and len(payload) >= 20 else None
        self._to_peer(dst, self._gre_header, payload, source, payload[16:20], now)

    def _to_multicast(self, data: bytes) -> None:
        size = len(data)
        for target in self.multicast:
            self.send_gre(target, data)
            peer = self.peers.get(target) or self._new_peer(target)
            if peer is not None:
                peer.tx_packets += 1
                peer.tx_bytes += size
        self.stats["tx.multicast"] += 1

    def _to_peer(
        self,
        dst_mac: bytes,
        header: bytes,
        payload: bytes,
        source: IPv4Address | IPv6Address | None,
        destination: bytes,
        now: float,
    ) -> None:
        """Unicast to the peer whose NBMA address the destination MAC holds.
        ``source`` (given only on a redirecting hub) detects hairpins."""
        nbma = mac_nbma(dst_mac)
        if nbma is None:
            self.stats["tap.unknown_mac"] += 1
            return
        if source is not None:
            came = self._came_from.get(source)
            if came is not None and came != nbma:
                # Forwarded back out of the interface it came in on: the
                # sender should talk to the destination directly (phase 3).
                self.engine.hairpin(payload, came, now)
        data = header + payload
        if self.path_mtu is not None and isinstance(nbma, IPv4Address) and wants_df(payload):
            # (IPv4 underlay only: config refuses path MTU discovery over IPv6.)
            if not self._send_df(nbma, header, payload, now):
                return
        else:
            self.send_gre(nbma, data)
        self._sent_data(nbma, 1, len(data), destination, now)

    # ------------------------------------------------------------ path MTU

    def _send_df(self, nbma: IPv4Address, header: bytes, payload: bytes, now: float) -> bool:
        """Send with DF unless the packet is known not to fit; False (and the
        inner sender told) when it does not."""
        assert self.path_mtu is not None and self._send_gre_df is not None
        outer = 20 + len(header)  # outer IPv4 header + GRE
        mtu = self.path_mtu.get(nbma, now)
        if mtu is None or outer + len(payload) <= mtu:
            if self._send_gre_df(nbma, header + payload) != EMSGSIZE:
                return True
            # Our own underlay link is smaller: the data plane has read the
            # local error (path_mtu_error) by now.
            mtu = self.path_mtu.get(nbma, now)
            if mtu is None:
                self.stats["pmtu.emsgsize_unlearned"] += 1
                return False
        self._too_big(payload, mtu - outer, now)
        return False

    def _too_big(self, inner: bytes, mtu: int, now: float) -> None:
        """Tell the inner packet's sender the largest packet that fits."""
        second, sent = self._icmp_budget
        if int(now) != second:
            second, sent = int(now), 0
        if sent >= ICMP_PER_SECOND or self._send_icmp is None:
            self.stats["pmtu.icmp_rate_limited"] += 1
            return
        self._icmp_budget = (second, sent + 1)
        if inner[0] >> 4 == 4:
            message = frag_needed(inner, max(mtu, IPV4_MIN - 28))
            self._send_icmp(IPv4Address(inner[12:16]), message)
            self.stats["pmtu.frag_needed_sent"] += 1
        else:
            self._send_icmp(IPv6Address(inner[8:24]), packet_too_big(inner, max(mtu, IPV6_MIN)))
            self.stats["pmtu.packet_too_big_sent"] += 1

    def path_mtu_error(
        self,
        nbma: IPv4Address,
        mtu: int,
        quoted: bytes,
        local: bool,
        reporter: IPv4Address | None,
        now: float,
    ) -> None:
        """A path MTU report for GRE we sent to ``nbma``: a local EMSGSIZE,
        or ICMP Fragmentation Needed from ``reporter`` quoting ``quoted``
        (the GRE header on). Believed only if it could be about our packet."""
        if self.path_mtu is None:
            return
        if local:
            if self.path_mtu.learn(nbma, mtu, now, "local"):
                self.stats["pmtu.learned.local"] += 1
            return
        if nbma not in self.peers:
            # We never sent anything there: not about our packets.
            self.stats["pmtu.rejected.unknown_peer"] += 1
            return
        try:
            gre = decode_gre(quoted, verify_checksum=False)
        except DecodeError:
            self.stats["pmtu.rejected.bad_quote"] += 1
            return
        if gre.key != self.key or gre.protocol not in (GRE_IPV4, GRE_IPV6):
            self.stats["pmtu.rejected.bad_quote"] += 1
            return
        known = self.path_mtu.get(nbma, now)
        # RFC 1191 6.3: a report never raises the estimate (only ageing does);
        # below 576 is the forged-ICMP attack pmtu.py describes.
        if (known is not None and mtu >= known) or not self.path_mtu.learn(
            nbma, mtu, now, "icmp", reporter
        ):
            self.stats["pmtu.rejected.mtu"] += 1
            return
        self.stats["pmtu.learned.icmp"] += 1

    def _sent_data(self, nbma: Nbma, packets: int, size: int, dst: bytes, now: float) -> None:
        """Count data sent to a peer and, at most once a second per peer,
        tell the engine the binding is in use (shortcut refresh)."""
        self.stats["tx.data"] += packets
        # One dict lookup for the counters and the use report (hashing an
        # IPv4Address is the dearest step here).
        peer = self.peers.get(nbma) or self._new_peer(nbma)
        if peer is not None:
            peer.tx_packets += packets
            peer.tx_bytes += size
            last = peer.last_use
        else:
            last = self._last_use.get(nbma)
        if last is None or now - last >= USE_REPORT_INTERVAL:
            if peer is not None:
                peer.last_use = now
            else:
                self._last_use[nbma] = now
            if len(dst) == 4:
                self.engine.binding_used(IPv4Address(dst), now)
            elif len(dst) == 16:
                self.engine.binding_used(IPv6Address(dst), now)

    def _ipv6_from_tap(self, frame: bytes, now: float) -> None:
        """IPv6 from the kernel: ND answered here, link-local chatter dropped,
        multicast to the `map multicast` set, unicast to the MAC's NBMA."""
        if self.tunnel_address6 is None:
            self.stats["tap.unsupported_ethertype"] += 1  # IPv4-only overlay
            return
        payload = frame[14:]
        if len(payload) < 40 or payload[0] >> 4 != 6:
            self.stats["tap.bad_ipv6"] += 1
            return
        icmp = nd.icmpv6_type(payload)
        if icmp == nd.NEIGHBOR_SOLICITATION:
            self._ns_from_kernel(frame, payload, now)
            return
        if icmp in nd.DROPPED and (frame[0] & 1 or icmp != nd.NEIGHBOR_ADVERTISEMENT):
            # Unicast NAs are answers a peer asked for; the rest never leaves.
            self.stats[f"nd.dropped.{nd.DROPPED[icmp]}"] += 1
            return
        dst = frame[:6]
        if dst[0] & 1:
            # OSPFv3 (ff02::5/6) and other link multicast: the `map multicast` set.
            self._to_multicast(self._gre6_header + payload)
            return
        source = IPv6Address(payload[8:24]) if self.redirect else None
        self._to_peer(dst, self._gre6_header, payload, source, payload[24:40], now)

    def _ns_from_kernel(self, frame: bytes, payload: bytes, now: float) -> None:
        ns = nd.parse_solicitation(payload)
        if ns is None:
            self.stats["nd.bad_solicitation"] += 1
            return
        if ns.is_dad:
            # Nothing on the cloud owns our addresses but us: no answer, so
            # DAD succeeds, and the probe does not flood the cloud.
            self.stats["nd.dropped.dad"] += 1
            return
        target = ns.target
        if target == self.tunnel_address6:
            return
        nbma: Nbma | None = nd.link_local_nbma(target)
        if nbma is not None:
            self.stats["nd.link_local"] += 1
        elif target.is_link_local or target.is_multicast:
            self.stats["nd.unanswered"] += 1
            return
        else:
            nbma = self.bindings.get(target)
            if nbma is None:
                # Unbound: resolve, and send via the NHS meanwhile (as ARP).
                self.engine.next_hop_unbound(target, now)
                if not self.nhs:
                    self.stats["nd.unanswered"] += 1
                    return
                nbma = self.nhs[0]
                self.stats["nd.via_nhs"] += 1
            else:
                self.stats["nd.answered"] += 1
        mac = nbma_mac(nbma)
        self.write_tap(frame[6:12] + mac + ETH_IPV6 + nd.advertisement(target, mac, ns.src))

    # ------------------------------------------------------------ C fast path

    def pump_sent(self, nbma: bytes, packets: int, size: int, dst: bytes, now: float) -> None:
        """Account for data the C pump sent to a peer (its 'S' totals,
        dataplane/pump.py), as if this path had sent it: counters, and use
        reports to the engine for the last destination."""
        if packets:
            self._sent_data(IPv4Address(nbma), packets, size, dst, now)

    def pump_received(self, nbma: bytes, packets: int, size: int) -> None:
        """The same for data the C pump received from a peer."""
        self.stats["rx.data"] += packets
        src = IPv4Address(nbma)
        peer = self.peers.get(src) or self._new_peer(src)
        if peer is not None:
            peer.rx_packets += packets
            peer.rx_bytes += size

    def _arp_from_kernel(self, data: bytes, now: float) -> None:
        try:
            arp = decode_arp(data)
        except DecodeError:
            self.stats["tap.bad_arp"] += 1
            return
        if arp.op != ArpOp.REQUEST or arp.target_ip == self.tunnel_address:
            return
        nbma = self.bindings.get(arp.target_ip)
        if nbma is None:
            # Unbound: resolve, and send via the hub meanwhile.
            self.engine.next_hop_unbound(arp.target_ip, now)
            if not self.nhs:
                self.stats["arp.unanswered"] += 1
                return
            nbma = self.nhs[0]
            self.stats["arp.via_nhs"] += 1
        else:
            self.stats["arp.answered"] += 1
        self.write_tap(
            self._arp_frame(
                ArpOp.REPLY, arp.target_ip, nbma_mac(nbma), arp.sender_ip, arp.sender_mac
            )
        )

    def _arp_frame(
        self,
        op: int,
        sender_ip: IPv4Address,
        sender_mac: bytes,
        target_ip: IPv4Address,
        target_mac: bytes,
    ) -> bytes:
        arp = ArpPacket(op, sender_mac, sender_ip, target_mac, target_ip).encode()
        eth_dst = self.local_mac if target_mac == BROADCAST else target_mac
        return eth_dst + sender_mac + ETH_ARP + arp

    # ------------------------------------------------------------ GRE -> TAP

    def from_gre(self, data: bytes, src: Nbma, now: float) -> None:
        """``data`` is the GRE packet (outer IP header already removed)."""
        nhrp_header = self._gre_nhrp_header
        if data[: len(nhrp_header)] == nhrp_header:
            # The header we send ourselves (our key, no checksum or
            # sequence): what decode_gre would make of it, without a
            # GrePacket per packet (a hub's refreshes, issue 20).
            protocol, payload = GRE_NHRP, data[len(nhrp_header) :]
        else:
            try:
                gre = decode_gre(data)
            except DecodeError:
                self.stats["rx.bad_gre"] += 1
                return
            if gre.key != self.key:
                # Another cloud on the same NBMA address: not ours.
                self.stats["rx.foreign_key"] += 1
                return
            protocol, payload = gre.protocol, gre.payload
        peer = self.peers.get(src) or self._new_peer(src)
        if peer is not None:
            peer.rx_packets += 1
            peer.rx_bytes += len(data)
        if protocol == GRE_NHRP:
            self.stats["rx.nhrp"] += 1
            self.engine.receive(payload, src, now)
            return
        if protocol == GRE_IPV6 and self.tunnel_address6 is not None:
            self._ipv6_from_gre(payload, src)
            return
        if protocol != GRE_IPV4 or len(payload) < 20:
            self.stats["rx.unsupported"] += 1
            return
        inner = payload
        dst = inner[16:20]
        if self.redirect:
            self._remember_source(IPv4Address(inner[12:16]), src)
        first = dst[0]
        if first >= 224 or dst == b"\xff\xff\xff\xff":
            # IPv4 multicast -> 01:00:5e + low 23 bits (RFC 1112); broadcast.
            eth_dst = (
                BROADCAST if first >= 240 else b"\x01\x00\x5e" + bytes([dst[1] & 0x7F]) + dst[2:]
            )
        else:
            eth_dst = self.local_mac
        head = eth_dst + nbma_mac(src) + ETH_IPV4
        if len(inner) > self.mtu and (pieces := split_tcp4(inner, self.mtu)) is not None:
            # A GRO super-packet from the underlay's kernel (segment.py).
            self.stats["rx.gro_split"] += 1
            for piece in pieces:
                self.write_tap(head + piece)
        else:
            self.write_tap(head + inner)
        self.stats["rx.data"] += 1

    def _remember_source(self, source: IPv4Address | IPv6Address, nbma: Nbma) -> None:
        """Which peer a source's traffic arrives from (hairpin detection on a
        redirecting hub); bounded, a flood of sources only resets it."""
        self._came_from[source] = nbma
        if len(self._came_from) > 65536:
            self._came_from.clear()

    def _ipv6_from_gre(self, inner: bytes, src: Nbma) -> None:
        if len(inner) < 40 or inner[0] >> 4 != 6:
            self.stats["rx.unsupported"] += 1
            return
        if nd.icmpv6_type(inner) in (nd.NEIGHBOR_SOLICITATION, nd.ROUTER_SOLICITATION):
            # Peers answer ND themselves; a solicitation from the cloud
            # (another implementation's) would only make our kernel answer
            # into it.
            self.stats["nd.dropped.from_cloud"] += 1
            return
        if self.redirect:
            self._remember_source(IPv6Address(inner[8:24]), src)
        dst = inner[24:40]
        eth_dst = nd.multicast_mac(dst) if dst[0] == 0xFF else self.local_mac
        self.write_tap(eth_dst + nbma_mac(src) + ETH_IPV6 + inner)
        self.stats["rx.data"] += 1
