"""Fast NHS failure detection (`nhrp.nhs_liveness`): an ICMP echo (ICMPv6
for an IPv6 NHS) to each NHS's tunnel address through the tunnel, every
`interval` seconds; one prober per family.

Why echoes and not NHRP: a registration refresh every half second from every
spoke would be the "flood of NHRP" a hub with many spokes cannot afford
(each one is a cache update and a reply built in Python on the hub), while
an echo is answered by the hub's kernel. It is Cisco's IP SLA icmp-echo +
track, applied to the NHS: what a DMVPN engineer configures for static
routes over dual hubs.

An NHS is declared unreachable only after it answered (the tracker is
*armed* by a reply) and then missed `multiplier` echoes in a row; the
tracker then disarms until the next reply. So a hub whose kernel filters
ICMP is never declared down by this check (its registrations still are),
and a hub that the check declared down is not declared down again until it
answered once more: no flapping between this check and registrations.

`NhsLiveness` is the state (no I/O, no clock: `now` is passed in);
`LivenessProber` is its socket and timer on the daemon's loop.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from dmvpn.wire.checksum import internet_checksum

__all__ = [
    "LivenessProber",
    "NhsLiveness",
    "Reach",
    "echo_request",
    "echo_request6",
    "parse_echo_reply",
    "parse_echo_reply6",
]

SOL_RAW = 255
ICMP_FILTER = 1  # linux/icmp.h: a bit set per ICMP type to drop
ECHO_REPLY, ECHO_REQUEST = 0, 8
ICMP6_FILTER = 1  # linux/icmpv6.h, level IPPROTO_ICMPV6: a bit set per type to drop
ECHO6_REQUEST, ECHO6_REPLY = 128, 129
Addr = IPv4Address | IPv6Address
PAYLOAD = b"dmvpn-nhs-liveness"


class Reach(StrEnum):
    """What the check knows of one NHS."""

    UNKNOWN = "unknown"  # never answered (or not since it was declared down)
    ALIVE = "alive"  # answered; `misses` echoes unanswered since
    LOST = "lost"  # was alive, missed `multiplier` echoes: reported once


@dataclass(slots=True)
class _Peer:
    state: Reach = Reach.UNKNOWN
    misses: int = 0  # echoes sent since the last reply
    last_reply: float | None = None


class NhsLiveness:
    """Per NHS: UNKNOWN -(reply)-> ALIVE -(multiplier misses)-> LOST -(reply)->
    ALIVE. `tick` is called once per interval, before the echoes go out; it
    returns the NHSes that have just been lost."""

    def __init__(self, nhs: Sequence[Addr], multiplier: int) -> None:
        self.multiplier = multiplier
        self.peers = {addr: _Peer() for addr in nhs}

    def tick(self, now: float) -> list[Addr]:
        lost = []
        for addr, peer in self.peers.items():
            if peer.state is Reach.ALIVE and peer.misses >= self.multiplier:
                self._move(peer, Reach.LOST)
                lost.append(addr)
            peer.misses += 1  # the echo about to be sent
        return lost

    def reply(self, addr: Addr, now: float) -> bool:
        """An echo reply from ``addr``; True when that NHS was not alive before."""
        peer = self.peers.get(addr)
        if peer is None:
            return False
        peer.misses = 0
        peer.last_reply = now
        was = peer.state
        self._move(peer, Reach.ALIVE)
        return was is not Reach.ALIVE

    @staticmethod
    def _move(peer: _Peer, to: Reach) -> None:
        # The one transition method: LOST and ALIVE both start counting anew.
        peer.state = to
        peer.misses = 0

    def view(self, now: float) -> dict[str, dict[str, object]]:
        return {
            str(addr): {
                "state": peer.state.value,
                "misses": peer.misses,
                "last_reply_ago": None
                if peer.last_reply is None
                else round(now - peer.last_reply, 2),
            }
            for addr, peer in self.peers.items()
        }


def echo_request(ident: int, seq: int) -> bytes:
    body = bytearray(struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident, seq) + PAYLOAD)
    struct.pack_into("!H", body, 2, internet_checksum(bytes(body)))
    return bytes(body)


def parse_echo_reply(packet: bytes, ident: int) -> IPv4Address | None:
    """The source of an IPv4 packet (as a raw socket reads it) holding an
    echo reply with our identifier; None for anything else."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    icmp = packet[ihl : ihl + 8]
    if len(icmp) < 8 or icmp[0] != ECHO_REPLY:
        return None
    if struct.unpack_from("!H", icmp, 4)[0] != ident:
        return None
    return IPv4Address(packet[12:16])


def echo_request6(ident: int, seq: int) -> bytes:
    """An ICMPv6 echo request; the kernel fills the checksum of a raw
    ICMPv6 socket's packets (RFC 3542 3.1), pseudo-header and all."""
    return struct.pack("!BBHHH", ECHO6_REQUEST, 0, 0, ident, seq) + PAYLOAD


def parse_echo_reply6(message: bytes, ident: int) -> bool:
    """True for an ICMPv6 echo reply with our identifier (a raw ICMPv6
    socket reads the message without the IPv6 header)."""
    return (
        len(message) >= 8
        and message[0] == ECHO6_REPLY
        and struct.unpack_from("!H", message, 4)[0] == ident
    )


Lost = Callable[[Any, str], None]


class LivenessProber:
    """One raw ICMP socket bound to the tunnel device; echoes to the NHSes
    every `interval` s; `on_lost(nhs, reason)` when one stops answering.
    The addresses are all of one family: ICMPv6 for IPv6."""

    def __init__(
        self,
        device: str,
        nhs: Sequence[Addr],
        interval: float,
        multiplier: int,
        on_lost: Lost,
        on_alive: Callable[[Any], None] | None = None,
    ) -> None:
        self.device = device
        self.v6 = bool(nhs) and nhs[0].version == 6
        self.interval = interval
        self.tracker = NhsLiveness(nhs, multiplier)
        self.on_lost = on_lost
        self.on_alive = on_alive  # a peer answered for the first time (or again)
        # Our echoes among everyone's in the namespace (a raw socket sees
        # every reply): the PID and the device tell daemons and interfaces apart.
        self.ident = (os.getpid() ^ (hash(device) & 0xFFFF)) & 0xFFFF
        self.seq = 0
        self.sent = 0
        self.replies = 0
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.v6:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        try:
            # Only echo replies wake us (every other ICMP type is filtered
            # in the kernel), and the echoes leave through the tunnel even
            # if a route elsewhere would take the NHS's address.
            if self.v6:
                words = [0xFFFFFFFF] * 8
                words[ECHO6_REPLY >> 5] &= ~(1 << (ECHO6_REPLY & 31))
                sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("=8I", *words))
            else:
                drop_all_but_replies = struct.pack("=I", 0xFFFFFFFF & ~(1 << ECHO_REPLY))
                sock.setsockopt(SOL_RAW, ICMP_FILTER, drop_all_but_replies)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.device.encode())
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._readable)
        except BaseException:
            sock.close()
            raise
        self._sock, self._loop = sock, loop
        self._tick()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _tick(self) -> None:
        assert self._sock is not None and self._loop is not None
        now = self._loop.time()
        for addr in self.tracker.tick(now):
            self.on_lost(
                addr,
                f"no answer to {self.tracker.multiplier} liveness echoes "
                f"({self.interval:g} s apart)",
            )
        self.seq = (self.seq + 1) & 0xFFFF
        packet = (echo_request6 if self.v6 else echo_request)(self.ident, self.seq)
        for addr in self.tracker.peers:
            try:
                self._sock.sendto(packet, (str(addr), 0))
                self.sent += 1
            except OSError:
                pass  # no route or neighbour yet: counted as a miss all the same
        self._timer = self._loop.call_later(self.interval, self._tick)

    def _readable(self) -> None:
        assert self._sock is not None and self._loop is not None
        while True:
            try:
                packet, src = self._sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            addr: Addr | None
            if self.v6:
                ok = parse_echo_reply6(packet, self.ident)
                addr = IPv6Address(src[0].split("%")[0]) if ok else None
            else:
                addr = parse_echo_reply(packet, self.ident)
            if addr is not None:
                self.replies += 1
                if self.tracker.reply(addr, self._loop.time()) and self.on_alive is not None:
                    self.on_alive(addr)
