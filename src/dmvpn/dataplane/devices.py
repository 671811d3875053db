"""The two file descriptors of the userspace data plane: a TAP device (the
DMVPN interface) and a raw IPv4 protocol-47 socket (GRE on the NBMA side)."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from ipaddress import IPv4Address

_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
MAX_FRAME = 65536


class Tap:
    """A non-persistent TAP device: it disappears with the process, so a
    crash leaves no interface (and no route through it) behind."""

    def __init__(self, name: str) -> None:
        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        try:
            fcntl.ioctl(
                self.fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TAP | _IFF_NO_PI)
            )
        except OSError:
            os.close(self.fd)
            raise
        self.name = name

    def read(self) -> bytes | None:
        try:
            return os.read(self.fd, MAX_FRAME)
        except BlockingIOError:
            return None

    def write(self, frame: bytes) -> None:
        try:
            os.write(self.fd, frame)
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
