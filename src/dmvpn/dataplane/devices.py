"""The file descriptors of the userspace data plane: a TAP device (the
DMVPN interface) and a raw IPv4 or IPv6 protocol-47 socket (GRE on the NBMA side);
with path MTU discovery (pmtu.py) a second GRE socket that sends with DF and
reads back path MTU errors, and raw ICMP sockets that answer inner senders."""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from .nbma import NbmaAddresses

_TUNSETIFF = 0x400454CA
_TUNSETOFFLOAD = 0x400454D0
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000
# What the C pump takes from the kernel (linux/if_tun.h): partial checksums
# and TCP/IPv4 super-segments (TSO), with or without ECN. It cuts them itself.
_TUN_F_CSUM = 0x01
_TUN_F_TSO4 = 0x02
_TUN_F_TSO_ECN = 0x08
PUMP_OFFLOADS = _TUN_F_CSUM | _TUN_F_TSO4 | _TUN_F_TSO_ECN
# struct virtio_net_hdr (10 bytes, TUNSETVNETHDRSZ's default) in front of
# every frame on a TAP opened with IFF_VNET_HDR; all zero = an ordinary frame.
VNET_HDR_LEN = 10
_PLAIN_VNET_HDR = bytes(VNET_HDR_LEN)
MAX_FRAME = 65536
_SO_RCVBUFFORCE = 33
# A registration storm is absorbed, not retransmitted: 50,000 Registration
# Requests at once (a hub reboot) are about 50 MB of skbs (truesize ~1 KB
# each); with 4 MB, 47k of them were dropped and the spokes' 1-2-4 s
# back-off set the storm's length (issue 20). The kernel doubles the value;
# the memory is used only while a backlog waits.
RCVBUF = 48 << 20
# linux/in.h, linux/errqueue.h, linux/filter.h, linux/icmp.h, linux/icmpv6.h
_IP_MTU_DISCOVER, _IP_RECVERR = 10, 11
_IPV6_MTU_DISCOVER = 23  # linux/in6.h; IPV6_PMTUDISC_DONT is 0 as for IPv4
_IP_PMTUDISC_DONT, _IP_PMTUDISC_PROBE = 0, 3
_SO_EE_ORIGIN_LOCAL, _SO_EE_ORIGIN_ICMP = 1, 2
_EXTENDED_ERR = struct.Struct("=IBBBBII")
_SO_ATTACH_FILTER = 26
_SOL_RAW, _ICMP_FILTER, _ICMP6_FILTER = 255, 1, 1
_EMSGSIZE = 90
_PEER_CACHE = 65536


class Tap:
    """A non-persistent TAP device: it disappears with the process, so a
    crash leaves no interface (and no route through it) behind.

    With ``vnet_hdr`` every frame crossing the file descriptor carries a
    virtio_net_hdr, which lets the C pump take offloads (`set_offloads`):
    64 KB TCP super-segments out, merged ones in. `read` and `write` hide
    the header, for the Python path."""

    def __init__(self, name: str, *, vnet_hdr: bool = False) -> None:
        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        flags = _IFF_TAP | _IFF_NO_PI | (_IFF_VNET_HDR if vnet_hdr else 0)
        try:
            fcntl.ioctl(self.fd, _TUNSETIFF, struct.pack("16sH", name.encode(), flags))
        except OSError:
            os.close(self.fd)
            raise
        self.name = name
        self.vnet_hdr = vnet_hdr
        # Super-segments read by the Python path (only queued just before the
        # pump stopped and offloads went off): dropped, as a queue flush would.
        self.offloaded_dropped = 0

    def set_offloads(self, on: bool) -> None:
        """Offloads on only while the C pump reads the TAP: Python handles
        ordinary frames only."""
        if not self.vnet_hdr:
            raise ValueError(f"{self.name}: offloads need a TAP opened with vnet_hdr")
        fcntl.ioctl(self.fd, _TUNSETOFFLOAD, PUMP_OFFLOADS if on else 0)

    def read(self) -> bytes | None:
        while True:
            try:
                frame = os.read(self.fd, MAX_FRAME + VNET_HDR_LEN)
            except BlockingIOError:
                return None
            if not self.vnet_hdr:
                return frame
            # flags bit 0 needs-checksum, gso_type non-zero: not an ordinary frame.
            if frame[0] & 1 or frame[1]:
                self.offloaded_dropped += 1
                continue
            return frame[VNET_HDR_LEN:]

    def write(self, frame: bytes) -> None:
        try:
            os.write(self.fd, _PLAIN_VNET_HDR + frame if self.vnet_hdr else frame)
        except (BlockingIOError, OSError):
            pass  # the interface is down or its queue is full: dropped, like a wire

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class GreSocket:
    """Raw GRE over IPv4, or over IPv6 when ``source`` is IPv6 (an AF_INET6
    raw socket of protocol 47: no ip6_gre module needed). `recv` hands out
    the GRE packet (the IPv4 header is stripped here; an IPv6 raw socket
    never shows its header) and the sender. Keeping it open also stops the
    kernel answering GRE with ICMP protocol-unreachable (real-peers.md)."""

    def __init__(self, source: IPv4Address | IPv6Address) -> None:
        self.v6 = isinstance(source, IPv6Address)
        self.sock = socket.socket(
            socket.AF_INET6 if self.v6 else socket.AF_INET, socket.SOCK_RAW, 47
        )
        self.sock.setblocking(False)
        self.sock.bind((str(source), 0))
        try:
            # Room for the bursts a 64 KB super-segment becomes at the sending
            # pump (~45 packets, ~2 KB of buffer each) while this side's pump
            # is off the CPU (the 208 KB default drops them: TCP then backs
            # off), and for a registration storm (RCVBUF).
            self.sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, RCVBUF)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        if self.v6:
            # IPv6 routers never fragment: what exceeds the path MTU is
            # fragmented here, by the sender (the kernel), rather than
            # refused (Cisco's default without path MTU discovery).
            self.sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, _IP_PMTUDISC_DONT)
        else:
            # No DF on the outer header, ever (Cisco's default without `tunnel
            # path-mtu-discovery`): a smaller link on the way fragments GRE
            # instead of dropping it, even where its ICMP would be filtered.
            self.sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DONT)
        self.source = source
        # A peer's address is parsed once, not per packet: IPv4 as an
        # NbmaAddress caching its hash and text (nbma.py); IPv6 here, with
        # the text each send needs (str() of an IPv6Address costs ~10 us,
        # parsing ~5 us). Bounded: a flood of spoofed sources only empties them.
        self.nbma = NbmaAddresses()
        self._sockaddr: dict[IPv4Address | IPv6Address, tuple[str, int]] = {}
        self._peer: dict[str, IPv6Address] = {}

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self) -> tuple[bytes, IPv4Address | IPv6Address] | None:
        try:
            data, addr = self.sock.recvfrom(MAX_FRAME)
        except BlockingIOError:
            return None
        text = addr[0]
        if self.v6:
            peer = self._peer.get(text)
            if peer is None:
                if len(self._peer) >= _PEER_CACHE:
                    self._peer.clear()
                peer = self._peer[text] = IPv6Address(text.split("%", 1)[0])
            return data, peer
        ihl = (data[0] & 0x0F) * 4 if data else 0
        return data[ihl:], self.nbma(text)

    def send(self, nbma: IPv4Address | IPv6Address, gre: bytes) -> None:
        to = self._sockaddr.get(nbma)
        if to is None:
            if len(self._sockaddr) >= _PEER_CACHE:
                self._sockaddr.clear()
            to = self._sockaddr[nbma] = (str(nbma), 0)
        try:
            self.sock.sendto(gre, to)
        except OSError:
            pass  # unreachable peer: NHRP retransmissions and counters cover it

    def close(self) -> None:
        self.sock.close()


@dataclass(frozen=True, slots=True)
class PathMtuError:
    """One report from a DF GRE socket's error queue."""

    nbma: IPv4Address  # where the packet was going
    mtu: int
    local: bool  # our own link (EMSGSIZE), else ICMP from `reporter`
    reporter: IPv4Address | None
    quoted: bytes  # the quoted packet from its GRE header on


def _drop_everything(sock: socket.socket) -> None:
    """A classic BPF filter that accepts nothing: a raw socket kept only for
    sending (and its error queue) must not queue a copy of every packet."""
    insn = ctypes.create_string_buffer(struct.pack("=HBBI", 0x06, 0, 0, 0))  # ret #0
    prog = struct.pack("=HxxxxxxQ", 1, ctypes.addressof(insn))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, prog)


class DfGreSocket:
    """Raw GRE sent with DF, for path MTU discovery (pmtu.py).

    IP_PMTUDISC_PROBE: DF set, and the kernel's own path MTU estimate not
    applied, so the daemon decides (and validates every report) itself; only
    packets above the underlay link's MTU fail, with EMSGSIZE. With
    IP_RECVERR, ICMP Fragmentation Needed for our GRE (and local EMSGSIZE)
    is queued on the socket's error queue with the quoted packet; `errors()`
    reads it. Readable (for the event loop) when errors wait."""

    def __init__(self, source: IPv4Address) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
        self.sock.setblocking(False)
        self.sock.bind((str(source), 0))
        _drop_everything(self.sock)
        self.sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_PROBE)
        self.sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, nbma: IPv4Address, gre: bytes) -> int:
        """0, or the errno the kernel refused the packet with."""
        try:
            self.sock.sendto(gre, (str(nbma), 0))
        except OSError as exc:
            return exc.errno or -1
        return 0

    def errors(self) -> list[PathMtuError]:
        """Path MTU reports waiting on the error queue (others are dropped)."""
        out: list[PathMtuError] = []
        while True:
            try:
                data, ancillary, _flags, addr = self.sock.recvmsg(
                    MAX_FRAME, 512, socket.MSG_ERRQUEUE
                )
            except OSError:
                # Queue empty. Clear the socket error an ICMP report also
                # sets, or the descriptor would poll as failed forever.
                self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                return out
            for level, kind, cmsg in ancillary:
                if level != socket.IPPROTO_IP or kind != _IP_RECVERR:
                    continue
                if len(cmsg) < _EXTENDED_ERR.size:
                    continue
                errno, origin, _type, _code, _pad, info, _data = _EXTENDED_ERR.unpack_from(cmsg)
                if errno != _EMSGSIZE or origin not in (_SO_EE_ORIGIN_LOCAL, _SO_EE_ORIGIN_ICMP):
                    continue
                local = origin == _SO_EE_ORIGIN_LOCAL
                offender = cmsg[_EXTENDED_ERR.size + 4 : _EXTENDED_ERR.size + 8]
                reporter = None if local or len(offender) < 4 else IPv4Address(offender)
                out.append(PathMtuError(IPv4Address(addr[0]), info, local, reporter, data))

    def close(self) -> None:
        self.sock.close()


class IcmpSender:
    """Raw ICMP and ICMPv6 sockets that only send (their filters block every
    type in): errors from this router to a LAN host, sourced by the kernel
    from the address it routes back to the host with."""

    def __init__(self) -> None:
        self.v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.v4.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("=I", 0xFFFFFFFF))
        self.v4.setblocking(False)
        self.v6: socket.socket | None
        try:
            self.v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            self.v6.setsockopt(socket.IPPROTO_ICMPV6, _ICMP6_FILTER, b"\xff" * 32)
            self.v6.setblocking(False)
        except OSError:
            self.v6 = None  # IPv6 disabled on this host

    def send(self, dst: IPv4Address | IPv6Address, message: bytes) -> None:
        sock = self.v4 if isinstance(dst, IPv4Address) else self.v6
        if sock is None:
            return
        try:
            sock.sendto(message, (str(dst), 0))
        except OSError:
            pass  # no route back to the sender: nothing to tell

    def close(self) -> None:
        self.v4.close()
        if self.v6 is not None:
            self.v6.close()
