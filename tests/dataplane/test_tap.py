"""The TAP device with a virtio_net_hdr, as the Python path sees it: a real
TAP in a network namespace of the test's own. Frames read and written
without the header; with offloads on (the pump's mode), a frame the kernel
left unfinished (partial checksum) is dropped and counted, never passed on
as if it were ordinary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

SCRIPT = r"""
import json, select, socket, struct, subprocess, time
from dmvpn.dataplane.devices import Tap
from ipaddress import IPv4Address as A
from dmvpn.wire import IPv4Header

tap = Tap("dmt0", vnet_hdr=True)
open("/proc/sys/net/ipv6/conf/dmt0/disable_ipv6", "w").write("1")
for cmd in ("ip link set dmt0 address 02:00:0a:09:00:01 up", "ip addr add 10.9.0.1/24 dev dmt0",
            "ip neigh add 10.9.0.2 lladdr 02:00:0a:09:00:02 dev dmt0 nud permanent"):
    subprocess.run(cmd.split(), check=True)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

def next_ipv4(proto):
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        select.select([tap.fd], [], [], 0.2)
        frame = tap.read()
        if frame is not None and frame[12:14] == b"\x08\x00" and frame[23] == proto:
            return frame
    return None

out = {}
tap.set_offloads(False)
udp.sendto(b"x" * 100, ("10.9.0.2", 9))
frame = next_ipv4(17)
out["plain"] = frame.hex() if frame else None
# A frame written by Python (header added by write): an echo request the kernel answers.
icmp = b"\x08\x00" + b"\x00\x00" + b"\x12\x34\x00\x01" + b"ping" * 8
s = sum(struct.unpack("!%dH" % (len(icmp) // 2), icmp))
s = (s & 0xFFFF) + (s >> 16)
icmp = icmp[:2] + struct.pack("!H", 0xFFFF - s) + icmp[4:]
tap.write(bytes.fromhex("02000a090001 02000a090002 0800".replace(" ", "")) +
          IPv4Header(src=A("10.9.0.2"), dst=A("10.9.0.1"), protocol=1).encode(icmp))
reply = next_ipv4(1)
out["reply"] = reply.hex() if reply else None
tap.set_offloads(True)
udp.sendto(b"y" * 100, ("10.9.0.2", 9))
out["offloaded"] = next_ipv4(17) is not None
out["dropped"] = tap.offloaded_dropped
print(json.dumps(out))
"""


def test_python_path_reads_and_writes_through_the_vnet_header() -> None:
    ns = f"dmtap{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        res = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", SCRIPT],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=Path(__file__).parent,
        )
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
    plain = bytes.fromhex(out["plain"])
    # An ordinary Ethernet frame, no header in front: to the neighbour's MAC,
    # UDP to port 9 with its 100 bytes.
    assert plain[:12] == bytes.fromhex("02000a090002 02000a090001".replace(" ", ""))
    assert plain[36:38] == b"\x00\x09" and plain[42:] == b"x" * 100
    reply = bytes.fromhex(out["reply"])
    assert reply[26:30] == bytes([10, 9, 0, 1]) and reply[34] == 0  # echo reply from 10.9.0.1
    assert reply[42:] == b"ping" * 8
    # With offloads on, the kernel leaves the UDP checksum to the reader:
    # the Python path drops such a frame and counts it.
    assert out == {**out, "offloaded": False, "dropped": 1}
