"""Flushing a live capture on the lab's underlay bridge before it is read.

dumpcap and tshark read the kernel's packet ring in blocks (TPACKET_V3) that
are handed over when full or when their timeout expires; stopped with
SIGTERM, they write what they were handed and drop the rest. A packet sent
in the last fraction of a second before the stop can be lost: CI once missed
the only Error Indication nhrpd sent, about 100 ms before the stop. So a
capture is stopped only after a marker frame, sent after everything the
test waits for, has reached the file: the ring is in order, and every frame
before the marker is then in the file too.

The marker is an IPv4 packet (so that an `ip proto N` capture filter keeps
it) between documentation addresses (RFC 5737), GRE with EtherType 0x88B5
(IEEE local experimental), sent to an unused unicast MAC address: every
endpoint on the bridge drops it, NHRP dissectors skip it. With ``ipv6=True``
(an IPv6 underlay, an `ip6 proto 47` filter) it is the same GRE in IPv6
between documentation addresses (RFC 3849).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MARKER_SRC = "192.0.2.1"
MARKER_SRC6 = "2001:db8::1"
_SEND = r"""
import socket, struct, sys
ifname, proto, ident = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
payload = struct.pack("!HH", 0, 0x88B5) + b"dmvpn capture marker"
header = struct.pack(
    "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0, 64, proto, 0,
    socket.inet_aton("192.0.2.1"), socket.inet_aton("192.0.2.2"),
)
total = sum(struct.unpack("!10H", header))
while total > 0xFFFF:
    total = (total & 0xFFFF) + (total >> 16)
header = header[:10] + struct.pack("!H", total ^ 0xFFFF) + header[12:]
frame = bytes.fromhex("02dd00000002" "02dd00000001" "0800") + header + payload
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
    s.bind((ifname, 0))
    s.send(frame)
"""


_SEND6 = r"""
import socket, struct, sys
ifname, proto, ident = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# The identifier in the flow label, as ip.id for IPv4.
payload = struct.pack("!HH", 0, 0x88B5) + b"dmvpn capture marker"
src, dst = (socket.inet_pton(socket.AF_INET6, a) for a in ("2001:db8::1", "2001:db8::2"))
header = struct.pack(
    "!IHBB16s16s", (6 << 28) | (ident & 0xFFFFF), len(payload), proto, 64, src, dst
)
frame = bytes.fromhex("02dd00000002" "02dd00000001" "86dd") + header + payload
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
    s.bind((ifname, 0))
    s.send(frame)
"""


def _markers(pcap: Path, ipv6: bool = False) -> int:
    """How many marker frames the file holds so far (a file still being
    written may end in a cut-short frame: tshark then reads what it can)."""
    which = f"ipv6.src == {MARKER_SRC6}" if ipv6 else f"ip.src == {MARKER_SRC}"
    field = "ipv6.flow" if ipv6 else "ip.id"
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", which, "-T", "fields", "-e", field],
        capture_output=True,
        text=True,
    ).stdout
    return len(out.split())


def flush(
    lab: Any,
    pcap: Path,
    *,
    node: str = "inet",
    ifname: str = "br0",
    proto: int = 47,
    timeout: float = 10.0,
    ipv6: bool = False,
) -> None:
    """Send a marker on ``ifname`` in ``node`` and wait until the capture
    writing ``pcap`` has written it (and so everything sent before it)."""
    before = _markers(pcap, ipv6)
    deadline = time.monotonic() + timeout
    ident = before + 1
    while True:
        sent = lab.exec(
            node,
            [sys.executable, "-c", _SEND6 if ipv6 else _SEND, ifname, str(proto), str(ident)],
            capture_output=True,
            text=True,
        )
        assert sent.returncode == 0, f"could not send the capture marker: {sent.stderr}"
        poll_until = min(deadline, time.monotonic() + 1.0)
        while time.monotonic() < poll_until:
            if _markers(pcap, ipv6) > before:
                return
            time.sleep(0.1)
        assert time.monotonic() < deadline, f"the capture {pcap} never wrote its marker"
        ident += 1  # a marker sent before the capture was ready: send another
