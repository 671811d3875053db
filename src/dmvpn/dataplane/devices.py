"""The two file descriptors of the userspace data plane: a TAP device (the
DMVPN interface) and a raw IPv4 protocol-47 socket (GRE on the NBMA side)."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from ipaddress import IPv4Address

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
    """Raw GRE over IPv4. Received data starts with the outer IPv4 header.
    Keeping it open also stops the kernel answering GRE with ICMP
    protocol-unreachable (real-peers.md)."""

    def __init__(self, source: IPv4Address) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
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
        self.source = source

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self) -> tuple[bytes, IPv4Address] | None:
        try:
            data, addr = self.sock.recvfrom(MAX_FRAME)
        except BlockingIOError:
            return None
        ihl = (data[0] & 0x0F) * 4 if data else 0
        return data[ihl:], IPv4Address(addr[0])

    def send(self, nbma: IPv4Address, gre: bytes) -> None:
        try:
            self.sock.sendto(gre, (str(nbma), 0))
        except OSError:
            pass  # unreachable peer: NHRP retransmissions and counters cover it

    def close(self) -> None:
        self.sock.close()
