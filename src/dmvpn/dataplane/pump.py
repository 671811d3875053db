"""The C fast path's thread and what it hands back to Python.

`_fastpath.pump` (the optional C extension built by setup.py) moves plain
unicast IPv4 between the TAP and the GRE socket on a thread of its own,
without the GIL. Everything else it punts, in order, over a SOCK_SEQPACKET
pair, one record per message (as the comment above `pump()` in _fastpath.c
says; `flush_stats()` writes the totals):

    'T' frame                       a frame from the TAP for the Python path
    'G' src(4) gre                  a GRE packet from NBMA address src
    'S' then records of 40 bytes:   per-peer totals since the last 'S'
        nbma(4) tx_packets(8) tx_bytes(8) rx_packets(8) rx_bytes(8) dst(4)
        (native byte order; dst: the last inner destination seen)

`Pump` starts and stops that thread and turns the records back into calls
on the forwarder, so the forwarder's counters and the engine's view of
per-peer use are the same whichever path carried a packet.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from types import ModuleType

from .devices import MAX_FRAME, RCVBUF, GreSocket, Tap
from .forwarding import Forwarder

__all__ = ["BATCH", "Pump", "fastpath"]

fastpath: ModuleType | None
try:  # the optional C fast path (setup.py); pure Python without it
    import dmvpn.dataplane._fastpath as _built  # type: ignore[import-not-found]

    fastpath = _built
except ImportError:  # pragma: no cover - no compiler at install time
    fastpath = None

_SO_SNDBUFFORCE = 32  # linux/socket.h
# Drain at most this many records per readiness callback, then yield.
BATCH = 64
_TOTALS = struct.Struct("=4Q")
_RECORD = 4 + _TOTALS.size + 4


class Pump:
    """One C pump thread for one TAP and GRE socket."""

    def __init__(self, tap: Tap, gre: GreSocket, key: int | None, forwarder: Forwarder) -> None:
        assert fastpath is not None
        self.tap, self.gre, self.forwarder = tap, gre, forwarder
        self.key = key if key is not None else -1  # the C side's "no key"
        self._punt_r, self._punt_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._punt_r.setblocking(False)
        # The C side punts with MSG_DONTWAIT and drops when the pair is full:
        # a registration storm is punted NHRP, so give it the GRE socket's room.
        try:
            self._punt_w.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, RCVBUF)
        except OSError:
            self._punt_w.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RCVBUF)
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None

    def fileno(self) -> int:
        """Readable when records wait (for the event loop)."""
        return self._punt_r.fileno()

    def start(self, name: str) -> None:
        assert fastpath is not None
        args = (
            self.tap.fd,
            self.gre.fileno(),
            self.key,
            self.forwarder.local_mac,
            self._punt_w.fileno(),
            self._stop_r,
            self.tap.vnet_hdr,
            self.forwarder.mtu,
        )
        self._thread = threading.Thread(
            target=fastpath.pump, args=args, daemon=True, name=f"pump-{name}"
        )
        self._thread.start()
        if self.tap.vnet_hdr:
            self.tap.set_offloads(True)

    def stop(self, now: float) -> None:
        """Stop the thread, then read what it handed over last (its final totals)."""
        if self.tap.vnet_hdr:
            self.tap.set_offloads(False)  # the Python path takes ordinary frames only
        os.write(self._stop_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        while self.drain(now):
            pass
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)
        self._punt_r.close()
        self._punt_w.close()

    def drain(self, now: float) -> bool:
        """Hand up to BATCH records to the forwarder; False once none are left."""
        fw = self.forwarder
        for _ in range(BATCH):
            try:
                msg = self._punt_r.recv(MAX_FRAME + 8)
            except (BlockingIOError, OSError):
                return False
            tag = msg[:1]
            if tag == b"T":
                fw.from_tap(msg[1:], now)
            elif tag == b"G":
                fw.from_gre(msg[5:], self.gre.nbma(msg[1:5]), now)
            elif tag == b"S":
                for off in range(1, len(msg) - _RECORD + 1, _RECORD):
                    nbma = msg[off : off + 4]
                    txp, txb, rxp, rxb = _TOTALS.unpack_from(msg, off + 4)
                    dst = msg[off + 36 : off + 40]
                    fw.pump_sent(nbma, txp, txb, dst, now)
                    fw.pump_received(nbma, rxp, rxb)
        return True
