"""The kernel's neighbour entries for bindings, written in batches off the
packet path.

A binding on the tunnel network is mirrored into the TAP's neighbour table
as a permanent entry with the peer's NBMA MAC (userspace.py says why), or
into a kernel GRE device's with the NBMA address itself (kernel.py). One
synchronous pyroute2 call per binding was 41% of a hub's time in a
registration storm (issue 20). Here a binding only records what the kernel
should end up with (the last word per address wins: a bind then an unbind
before the write is just a delete); the event loop writes the lot soon
after, many RTM_NEWNEIGH / RTM_DELNEIGH messages per sendmsg on a netlink
socket of its own, without waiting for acknowledgements. The kernel answers
only failures (no NLM_F_ACK); those are read when they come and logged with
the address they were about.

When the interface goes, what is still queued is dropped: the kernel removes
an interface's neighbours with it, so a hub stopping with 50,000 bindings
makes no per-binding netlink call at all.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

from dmvpn.wire import Address, address_text

__all__ = ["NeighbourWriter", "neigh_message"]

RTM_NEWNEIGH = 28
RTM_DELNEIGH = 29
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400
NDA_DST = 1
NDA_LLADDR = 2
NUD_PERMANENT = 0x80
AF_INET, AF_INET6 = 2, 10

# Messages per sendmsg (~50 bytes each), and per event-loop callback: a
# storm's writes go in slices, so packets and the API are served between.
PER_SEND = 1024
PER_CALLBACK = 8192
_SOCKBUF = 8 << 20

_NLMSGHDR = struct.Struct("=IHHII")
_NDMSG = struct.Struct("=BxxxiHBB")
_RTA = struct.Struct("=HH")

Log = Callable[[str, str], None]


def _attr(kind: int, data: bytes) -> bytes:
    raw = _RTA.pack(4 + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def neigh_message(seq: int, index: int, protocol: Address, mac: bytes | None) -> bytes:
    """RTM_NEWNEIGH (replace, permanent, `mac`) or, with `mac` None,
    RTM_DELNEIGH for `protocol` on interface `index` (linux/neighbour.h)."""
    family = AF_INET6 if isinstance(protocol, IPv6Address) else AF_INET
    packed = protocol.packed if isinstance(protocol, IPv4Address | IPv6Address) else protocol
    if mac is None:
        kind, flags, state = RTM_DELNEIGH, NLM_F_REQUEST, 0
        body = _NDMSG.pack(family, index, 0, 0, 0) + _attr(NDA_DST, packed)
    else:
        kind = RTM_NEWNEIGH
        flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE
        state = NUD_PERMANENT
        body = (
            _NDMSG.pack(family, index, state, 0, 0)
            + _attr(NDA_DST, packed)
            + _attr(NDA_LLADDR, mac)
        )
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def _lladdr(msg: bytes) -> bytes:
    """The link-layer address of a neigh_message: its last attribute (an
    Ethernet MAC on a TAP, an NBMA address on a kernel GRE device)."""
    off = _NLMSGHDR.size + _NDMSG.size
    off += (_RTA.unpack_from(msg, off)[0] + 3) & ~3  # NDA_DST
    length = _RTA.unpack_from(msg, off)[0]
    return msg[off + _RTA.size : off + length]


class NeighbourWriter:
    """Queued neighbour entries of one interface, written by the event loop."""

    def __init__(self, index: int, log: Log) -> None:
        self.index = index
        self.log = log
        # Address -> the MAC it should have (None: no entry); insertion order.
        self.pending: dict[Address, bytes | None] = {}
        self._sent: dict[int, Address] = {}  # seq -> address, for errors (bounded)
        self._seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._sock: socket.socket | None = None
        self.stats = {"written": 0, "failed": 0, "batches": 0}

    # ------------------------------------------------------------ life

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        sock.setblocking(False)
        for opt, force in ((socket.SO_SNDBUF, 32), (socket.SO_RCVBUF, 33)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, _SOCKBUF)  # SO_*BUFFORCE
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, opt, _SOCKBUF)
        sock.bind((0, 0))
        self._sock, self._loop = sock, loop
        loop.add_reader(sock.fileno(), self._read_errors)
        if self.pending:
            self._schedule()

    def close(self) -> None:
        """The interface goes (and its neighbours with it): drop the queue."""
        self.pending.clear()
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    # ------------------------------------------------------------ what the kernel should have

    def replace(self, protocol: Address, mac: bytes) -> None:
        self.pending.pop(protocol, None)  # to the back: written in binding order
        self.pending[protocol] = mac
        self._schedule()

    def delete(self, protocol: Address) -> None:
        self.pending.pop(protocol, None)
        self.pending[protocol] = None
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    # ------------------------------------------------------------ writing

    def flush(self, limit: int = PER_CALLBACK) -> None:
        """Write up to `limit` queued entries; the rest on the next callback."""
        self._scheduled = False
        sock = self._sock
        if sock is None:
            return
        pending = self.pending
        done = 0
        while pending and done < limit:
            chunk: list[bytes] = []
            while pending and len(chunk) < PER_SEND:
                protocol = next(iter(pending))
                mac = pending.pop(protocol)
                self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
                self._sent[self._seq] = protocol
                chunk.append(neigh_message(self._seq, self.index, protocol, mac))
            try:
                sock.send(b"".join(chunk))
            except BlockingIOError:
                # The kernel's queue is full: put them back, try again soon.
                self._requeue(chunk)
                break
            except OSError as exc:
                self.stats["failed"] += len(chunk)
                self.log("neigh-error", f"could not write {len(chunk)} neighbours: {exc}")
                break
            done += len(chunk)
            self.stats["written"] += len(chunk)
            self.stats["batches"] += 1
        if len(self._sent) > 4 * PER_CALLBACK:  # old sequence numbers: succeeded
            for seq in list(self._sent)[: len(self._sent) - 2 * PER_CALLBACK]:
                del self._sent[seq]
        if pending:
            self._schedule()

    def _requeue(self, chunk: list[bytes]) -> None:
        for msg in chunk:
            seq = _NLMSGHDR.unpack_from(msg)[3]
            protocol = self._sent.pop(seq, None)
            if protocol is not None and protocol not in self.pending:
                kind = _NLMSGHDR.unpack_from(msg)[1]
                self.pending[protocol] = _lladdr(msg) if kind == RTM_NEWNEIGH else None

    def _read_errors(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # error reports were lost
                    self.log("neigh-error", "some neighbour errors were not reported (ENOBUFS)")
                    continue
                return
            off = 0
            while off + _NLMSGHDR.size <= len(data):
                length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, off)
                if length < _NLMSGHDR.size:
                    break
                if kind == NLMSG_ERROR and length >= _NLMSGHDR.size + 4 + _NLMSGHDR.size:
                    (code,) = struct.unpack_from("=i", data, off + _NLMSGHDR.size)
                    seq = _NLMSGHDR.unpack_from(data, off + _NLMSGHDR.size + 4)[3]
                    protocol = self._sent.pop(seq, None)
                    if code < 0:
                        self._failed(protocol, -code)
                off += (length + 3) & ~3

    def _failed(self, protocol: Address | None, code: int) -> None:
        # A delete of an entry that is not there is no failure (never written,
        # or removed by an operator or with its interface).
        if code == errno.ENOENT:
            return
        self.stats["failed"] += 1
        what = address_text(protocol) if protocol is not None else "?"
        self.log(
            "neigh-error", f"could not write the neighbour entry of {what}: {os.strerror(code)}"
        )
