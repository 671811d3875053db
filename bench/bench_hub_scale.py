"""A hub that holds tens of thousands of spokes: the real `dmvpn run` hub over
real sockets. Needs root (network namespaces).

Two namespaces joined by a veth: the hub (`dmvpn run`, NBMA 192.0.2.1, tunnel
10.0.0.1/16, pinned to one core with taskset) and a load generator (this
process's sockets, pinned to the other core) that emulates N spokes with
spoofed NBMA addresses (198.18.0.0/16, routed to the generator, where they
are local: `ip route add local`). Each spoke sends what a Cisco spoke sends:
a Registration Request with the U flag, one CIE, the responder, forward and
reverse transit, Cisco NAT and authentication extensions (the bytes a spoke
`Engine` with `authentication` encodes), over GRE with key 42. Replies are
read from a raw GRE socket and matched to spokes by destination address.

Measured per spoke count (--spokes, e.g. 1000 10000 50000), plain and with
`map_multicast: [dynamic]` (--multicast both|on|off):

1. Storm: all N spokes send at once (as after a hub reboot); a spoke not
   answered retransmits after 1 s, then 2, 4, 8 s (a spoke's back-off).
   Reported: seconds to all registered, spokes that needed a retransmission,
   requests sent, the hub's answer rate during the first pass, and the
   management API's latency (GET /v1/nhrp/traffic every 50 ms) meanwhile.
2. Refreshes: registered spokes register again at a paced rate, stepped up
   (--rates) for --seconds each; per rate: answered fraction, p50/p99 of the
   request-to-reply time. The highest rate with >= 99% answered is reported.
   Per step and for the storm, the hub's CPU time (user + system, from
   /proc): CPU microseconds per request, which a shared machine's load
   does not change the way it changes rates and latencies.
   Then new registrations (--new-rates, --new-seconds each): spokes the hub
   has not seen register at a paced rate (answered, latency, CPU).
3. RSS of the hub after the refreshes (and how many it answered in total).
4. SIGTERM with N registered: seconds until the process has exited.

Baselines: the tree before a change, run by the same script in the same
session (--src DIR puts another tree's src first on the hub's PYTHONPATH),
for ratios; and each refresh step's achieved send rate, which tells what
the generator (Python, one core) could offer at all.

Run: sudo .venv/bin/python bench/bench_hub_scale.py --spokes 1000 10000 50000
     [--multicast both] [--rates 5000 10000 20000 30000] [--seconds 3]
     [--storm-limit 90] [--src DIR: run the hub from another tree's src]
     [--profile FILE: cProfile the hub; pstats FILE afterwards]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from dmvpn.nhrp import Engine, EngineConfig, NhsConfig, SendPacket
from dmvpn.wire import PacketType

PREFIX = "i20-hs"
HUB_NS, GEN_NS = f"{PREFIX}-hub", f"{PREFIX}-gen"
HUB_NBMA = IPv4Address("192.0.2.1")
GEN_NBMA = IPv4Address("192.0.2.2")
HUB_TUNNEL = IPv4Address("10.0.0.1")
FIRST_SPOKE_TUNNEL = IPv4Address("10.0.0.2")
FIRST_SPOKE_NBMA = IPv4Address("198.18.0.1")  # RFC 2544 benchmarking range
GRE_KEY = 42
SECRET = b"dmvpn42"
REGISTRATION_REPLY = int(PacketType.REGISTRATION_REPLY)
CLONE_NEWNET = 0x40000000
BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)  # a spoke's retransmission schedule

_libc = ctypes.CDLL(None, use_errno=True)


def sh(*argv: str, check: bool = True) -> str:
    return subprocess.run(argv, check=check, capture_output=True, text=True).stdout


def in_ns(ns: str, *argv: str) -> str:
    return sh("ip", "netns", "exec", ns, *argv)


@contextlib.contextmanager
def netns(ns: str) -> Any:
    """This thread in namespace `ns` for the block (sockets keep theirs)."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
        yield
    finally:
        _libc.setns(own, CLONE_NEWNET)
        os.close(own)
        os.close(target)


# ------------------------------------------------------------------ the lab


def lab_down() -> None:
    for ns in (HUB_NS, GEN_NS):
        pids = sh("ip", "netns", "pids", ns, check=False).split()
        for pid in pids:  # only what runs in our own namespaces
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        sh("ip", "netns", "del", ns, check=False)


def lab_up() -> None:
    lab_down()
    for ns in (HUB_NS, GEN_NS):
        sh("ip", "netns", "add", ns)
        in_ns(ns, "ip", "link", "set", "lo", "up")
        in_ns(ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0")
        in_ns(ns, "sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0")
    sh("ip", "link", "add", "i20hs0", "netns", HUB_NS, "type", "veth", "peer", "i20hs1")
    sh("ip", "link", "set", "i20hs1", "netns", GEN_NS)
    in_ns(HUB_NS, "ip", "link", "set", "i20hs0", "name", "nbma0")
    in_ns(GEN_NS, "ip", "link", "set", "i20hs1", "name", "nbma0")
    for ns, addr in ((HUB_NS, HUB_NBMA), (GEN_NS, GEN_NBMA)):
        in_ns(ns, "ip", "addr", "add", f"{addr}/24", "dev", "nbma0")
        in_ns(ns, "ip", "link", "set", "nbma0", "up")
        in_ns(ns, "ip", "link", "set", "nbma0", "txqueuelen", "100000")
    # Replies to every spoke go to the generator, where the spokes' NBMA
    # addresses are local (no 50k ARP entries at the hub, nor at the generator).
    in_ns(HUB_NS, "ip", "route", "add", "198.18.0.0/16", "via", str(GEN_NBMA))
    in_ns(GEN_NS, "ip", "route", "add", "local", "198.18.0.0/16", "dev", "lo")


def hub_config(path: Path, sock: Path, multicast: bool) -> None:
    nhrp: dict[str, Any] = {
        "network_id": 1,
        "holdtime": 600,
        "redirect": True,
        "authentication": SECRET.decode(),
        # 50,000 replies per 10 s: above the rates stepped through, so the
        # refresh steps measure the hub, not its limiter (the default, 100,000
        # per 10 s, is a sustained 10,000/s); tx.rate_limited is reported.
        "max_send": 500_000,
    }
    if multicast:
        nhrp["map_multicast"] = ["dynamic"]
    cfg = {
        "node": f"{PREFIX}-hub",
        "socket": str(sock),
        "interfaces": [
            {
                "name": "dmvpn0",
                "address": f"{HUB_TUNNEL}/16",
                "mtu": 1400,
                "tunnel": {"source": str(HUB_NBMA), "key": GRE_KEY},
                "nhrp": nhrp,
            }
        ],
    }
    path.write_text(json.dumps(cfg))  # YAML is a superset of JSON


# ------------------------------------------------------------------ the spokes


def spoke_request(index: int) -> bytes:
    """The Registration Request a real spoke engine (Cisco layout, auth) sends first."""
    spoke = Engine(
        EngineConfig(
            protocol_address=FIRST_SPOKE_TUNNEL + index,
            nbma_address=FIRST_SPOKE_NBMA + index,
            nhs=(NhsConfig(HUB_TUNNEL, HUB_NBMA),),
            request_id_start=index + 1,
            authentication=SECRET,
        )
    )
    spoke.events_enabled = False
    spoke.start(0.0)
    sent = [o for o in spoke.pop_outputs() if isinstance(o, SendPacket)]
    assert len(sent) == 1 and sent[0].packet.type == PacketType.REGISTRATION_REQUEST
    return sent[0].packet.encode()


# In IPv4 (20) + GRE with key (8) + NHRP: ar$chksum at NHRP offset 12,
# ar$reqid at 24 (RFC 2332 5.2.0.1, 5.2.1).
_CSUM_AT, _RID_AT = 28 + 12, 28 + 24


def _add16(a: int, b: int) -> int:
    s = a + b
    return (s & 0xFFFF) + (s >> 16)


def with_request_id(packet: bytes, rid: int) -> bytes:
    """The packet with another request ID, its NHRP checksum updated
    incrementally (RFC 1624: HC' = ~(~HC + ~m + m'))."""
    old = packet[_RID_AT : _RID_AT + 4]
    new = rid.to_bytes(4, "big")
    hc = int.from_bytes(packet[_CSUM_AT : _CSUM_AT + 2], "big")
    acc = ~hc & 0xFFFF
    for i in (0, 2):
        m = int.from_bytes(old[i : i + 2], "big")
        m2 = int.from_bytes(new[i : i + 2], "big")
        acc = _add16(_add16(acc, ~m & 0xFFFF), m2)
    csum = (~acc & 0xFFFF).to_bytes(2, "big")
    return packet[:_CSUM_AT] + csum + packet[_CSUM_AT + 2 : _RID_AT] + new + packet[_RID_AT + 4 :]


def ip_header(src: IPv4Address, length: int) -> bytes:
    # id 0 and checksum 0: the kernel fills both (IP_HDRINCL).
    return struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0, 64, 47, 0, src.packed, HUB_NBMA.packed
    )


def build_packets(spokes: int, rounds: int) -> list[list[bytes]]:
    """Per round, per spoke: IPv4 + GRE (key) + Registration Request, a new
    request ID each round; refreshes patch the ID per send (with_request_id)."""
    from dmvpn.wire import decode_nhrp

    template = decode_nhrp(spoke_request(0))
    gre = struct.pack("!HHI", 0x2000, 0x2001, GRE_KEY)
    out: list[list[bytes]] = []
    for r in range(rounds):
        row = []
        for i in range(spokes):
            nbma = FIRST_SPOKE_NBMA + i
            pkt = replace(
                template,
                src_nbma=nbma,
                src_proto=FIRST_SPOKE_TUNNEL + i,
                request_id=r * spokes + i + 1,
            ).encode()
            row.append(ip_header(nbma, len(gre) + len(pkt)) + gre + pkt)
        out.append(row)
    assert out[0][0][28:] == spoke_request(0), "template differs from a spoke's request"
    again = replace(template, request_id=123456789).encode()
    assert with_request_id(out[0][0], 123456789)[28:] == again, "checksum update differs"
    return out


class Generator:
    """The spokes' sockets, made in the generator's namespace."""

    def __init__(self, spokes: int) -> None:
        with netns(GEN_NS):
            self.tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            self.rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
        for s, opt in ((self.tx, 32), (self.rx, 33)):  # SO_SNDBUFFORCE, SO_RCVBUFFORCE
            s.setsockopt(socket.SOL_SOCKET, opt, 64 << 20)
        self.rx.setblocking(False)
        self.tx.setblocking(False)
        self.spokes = spokes
        self.base = int(FIRST_SPOKE_NBMA)
        self.sent_at: list[float] = [0.0] * spokes
        self.tx_dropped = 0
        self.rid = 1 << 24  # request IDs of refreshes (above the storm's)

    def send(self, packet: bytes) -> None:
        while True:
            try:
                self.tx.sendto(packet, (str(HUB_NBMA), 0))
                return
            except BlockingIOError:
                self.tx_dropped += 1
                time.sleep(0.0002)  # our own queue: wait, do not lose a request here
            except OSError:
                self.tx_dropped += 1
                return

    def drain(self, on_reply: Any) -> int:
        """Read every reply waiting; on_reply(spoke index, now) each."""
        n = 0
        rx, base = self.rx, self.base
        while True:
            try:
                data = rx.recv(2048)
            except BlockingIOError:
                return n
            ihl = (data[0] & 0x0F) * 4
            # GRE with key: 8 bytes; the NHRP type at offset 17 of its header.
            if len(data) < ihl + 8 + 18 or data[ihl + 8 + 17] != REGISTRATION_REPLY:
                continue
            idx = int.from_bytes(data[16:20], "big") - base
            if 0 <= idx < self.spokes:
                on_reply(idx, time.monotonic())
                n += 1

    def close(self) -> None:
        self.tx.close()
        self.rx.close()


# ------------------------------------------------------------------ the API


def api_get(sock: Path, path: str, timeout: float = 30.0) -> tuple[float, int]:
    """One GET over the management socket: (seconds, bytes of body)."""
    t0 = time.monotonic()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(sock))
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: dmvpn\r\n\r\n".encode())
        chunks = []
        while True:
            b = s.recv(1 << 16)
            if not b:
                break
            chunks.append(b)
    finally:
        s.close()
    body = b"".join(chunks)
    return time.monotonic() - t0, len(body)


class ApiProbe(threading.Thread):
    """GET `path` every `every` seconds until stopped; the latencies."""

    def __init__(self, sock: Path, path: str = "/v1/nhrp/traffic", every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.sock, self.path, self.every = sock, path, every
        self.latencies: list[float] = []
        self.errors = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                self.latencies.append(api_get(self.sock, self.path)[0])
            except OSError:
                self.errors += 1
            self._done.wait(self.every)

    def stop(self) -> dict[str, Any]:
        self._done.set()
        self.join(timeout=60)
        lat = sorted(self.latencies)
        return {
            "requests": len(lat),
            "errors": self.errors,
            "p50_ms": round(pct(lat, 50) * 1000, 1) if lat else None,
            "p99_ms": round(pct(lat, 99) * 1000, 1) if lat else None,
            "max_ms": round(lat[-1] * 1000, 1) if lat else None,
        }


def pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, round(p / 100 * (len(sorted_values) - 1)))
    return sorted_values[k]


# ------------------------------------------------------------------ the hub


class Hub:
    def __init__(
        self, tmp: Path, multicast: bool, src: Path | None, core: int, profile: Path | None
    ) -> None:
        self.sock = tmp / "hub.sock"
        self.cfg = tmp / "hub.yaml"
        self.log = tmp / "hub.log"
        hub_config(self.cfg, self.sock, multicast)
        env = dict(os.environ)
        if src is not None:
            env["PYTHONPATH"] = str(src)
        main = "import sys; from dmvpn.cli import main; sys.exit(main())"
        if profile is not None:  # cProfile of the whole run, written at SIGTERM
            main = (
                "import cProfile, sys; from dmvpn.cli import main; "
                f"cProfile.run('main()', {str(profile)!r})"
            )
        argv = [
            "ip", "netns", "exec", HUB_NS, "taskset", "-c", str(core),
            sys.executable, "-c", main, "run", "-c", str(self.cfg),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=self.log.open("wb"), env=env
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                api_get(self.sock, "/v1")
                return
            time.sleep(0.1)
        raise RuntimeError("hub API never answered")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def cpu_s(self) -> float:
        """CPU seconds the hub has used (user + system): what a step cost it,
        whatever share of its core it got on a shared machine."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def terminate(self, limit: float = 60.0) -> float | None:
        """SIGTERM; seconds to exit (None: killed after `limit`)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None
        return time.monotonic() - t0


def hub_counters(sock: Path) -> dict[str, int]:
    """The hub's drop and limit counters (show nhrp traffic)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(sock))
    s.sendall(b"GET /v1/nhrp/traffic HTTP/1.0\r\nHost: dmvpn\r\n\r\n")
    chunks = []
    while b := s.recv(1 << 16):
        chunks.append(b)
    s.close()
    body = json.loads(b"".join(chunks).split(b"\r\n\r\n", 1)[1])
    found: dict[str, int] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, int) and any(w in k for w in ("limited", "drop", "malformed")):
                    found[k] = found.get(k, 0) + v
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(body)
    return {k: v for k, v in found.items() if v}


def neighbours(ns: str) -> int:
    return len(in_ns(ns, "ip", "-4", "neigh", "show", "dev", "dmvpn0").splitlines())


# ------------------------------------------------------------------ the steps


def storm(gen: Generator, packets: list[bytes], hub: Hub, limit: float) -> dict[str, Any]:
    """All spokes at once; retransmissions on a spoke's back-off."""
    n = len(packets)
    answered = [False] * n
    attempts = [0] * n
    first_pass_answers: list[float] = []
    done = 0

    def on_reply(idx: int, now: float) -> None:
        nonlocal done
        if not answered[idx]:
            answered[idx] = True
            done += 1
            if attempts[idx] == 1:
                first_pass_answers.append(now)

    probe = ApiProbe(hub.sock)
    probe.start()
    time.sleep(0.2)
    cpu0 = hub.cpu_s()
    t0 = time.monotonic()
    sent = 0
    # Retransmission queue: (due, idx); checked in order of the first pass.
    due_at = [0.0] * n
    for i, pkt in enumerate(packets):
        gen.send(pkt)
        attempts[i] = 1
        due_at[i] = time.monotonic() + BACKOFF[0]
        sent += 1
        if i % 256 == 0:
            gen.drain(on_reply)
    end = t0 + limit
    while done < n and time.monotonic() < end:
        gen.drain(on_reply)
        now = time.monotonic()
        for i in range(n):
            if not answered[i] and due_at[i] <= now:
                k = attempts[i]
                gen.send(packets[i])
                sent += 1
                attempts[i] = k + 1
                due_at[i] = now + BACKOFF[min(k, len(BACKOFF) - 1)]
        time.sleep(0.002)
    took = time.monotonic() - t0
    # What the storm left queued at the hub (retransmissions of spokes since
    # answered) is still answered: wait until the hub has been quiet for 1 s.
    late = 0

    def count_late(idx: int, now: float) -> None:
        nonlocal late
        late += 1

    quiet_since = time.monotonic()
    drained_by = quiet_since + 120
    while time.monotonic() - quiet_since < 1.0 and time.monotonic() < drained_by:
        if gen.drain(count_late):
            quiet_since = time.monotonic()
        time.sleep(0.01)
    backlog = max(0.0, quiet_since - t0 - took)
    cpu = hub.cpu_s() - cpu0
    api = probe.stop()
    retransmitted = sum(1 for a in attempts if a > 1)
    first = sorted(first_pass_answers)
    rate = len(first) / (first[-1] - t0) if first and first[-1] > t0 else 0.0
    return {
        "spokes": n,
        "registered": done,
        "seconds_to_all": round(took, 2) if done == n else None,
        "seconds_run": round(took, 2),
        "spokes_retransmitting": retransmitted,
        "requests_sent": sent,
        "first_pass_answered": len(first),
        "first_pass_rate": round(rate),
        "backlog_seconds": round(backlog, 2),
        "late_replies": late,
        "api": api,
        # Hub CPU for the storm and its backlog; per request the hub read
        # (first registrations and the copies, answered from the last reply).
        "hub_cpu_s": round(cpu, 2),
        "hub_cpu_us_per_request": round(cpu / sent * 1e6, 1) if sent else None,
    }


def refresh_step(
    gen: Generator,
    packets: list[bytes],
    rate: float,
    seconds: float,
    start: int,
    hub: Hub,
    kind: str = "refresh",
) -> dict[str, Any]:
    """Registered spokes refresh at `rate`/s for `seconds` (round robin from
    `start`); with kind "new", spokes from `start` on register for the
    first time (the caller gives spokes the hub has not seen)."""
    n = len(packets)
    sent_at = gen.sent_at
    lat: list[float] = []
    pending = [False] * n

    def on_reply(idx: int, now: float) -> None:
        if pending[idx]:
            pending[idx] = False
            lat.append(now - sent_at[idx])

    total = int(rate * seconds)
    cpu0 = hub.cpu_s()
    t0 = time.monotonic()
    k = 0
    while k < total:
        now = time.monotonic()
        want = min(total, int((now - t0) * rate) + 1)
        while k < want:
            idx = (start + k) % n
            sent_at[idx] = time.monotonic()
            pending[idx] = True
            # A refresh is a new request (a new ID), never a copy of one.
            gen.rid += 1
            gen.send(with_request_id(packets[idx], gen.rid))
            k += 1
        gen.drain(on_reply)
        if k >= want:
            time.sleep(0.0005)
    send_time = time.monotonic() - t0
    grace = time.monotonic() + 2.0
    while time.monotonic() < grace and len(lat) < total:
        gen.drain(on_reply)
        time.sleep(0.002)
    cpu = hub.cpu_s() - cpu0
    lat.sort()
    return {
        "rate": rate,
        "achieved_send_rate": round(total / send_time),
        "sent": total,
        "answered": len(lat),
        "answered_pct": round(100 * len(lat) / total, 2),
        "p50_ms": round(pct(lat, 50) * 1000, 2) if lat else None,
        "p99_ms": round(pct(lat, 99) * 1000, 2) if lat else None,
        # Hub CPU per refresh sent (all of them reach it): its cost per
        # refresh, comparable across runs on a shared machine.
        "hub_cpu_s": round(cpu, 2),
        f"hub_cpu_us_per_{kind}": round(cpu / total * 1e6, 1),
    }


def run_one(args: argparse.Namespace, spokes: int, multicast: bool) -> dict[str, Any]:
    rounds = 1
    # Spokes the hub has never seen, for the new-registration steps (the
    # /16 of spoke addresses holds 65,534).
    fresh = sum(int(r * args.new_seconds) for r in args.new_rates)
    if spokes + fresh > 65000:
        raise SystemExit(f"--new-rates: {spokes} + {fresh} spokes do not fit in 198.18.0.0/16")
    everyone = build_packets(spokes + fresh, rounds)
    packets = [row[:spokes] for row in everyone]
    lab_up()
    gen = Generator(spokes + fresh)
    result: dict[str, Any] = {"spokes": spokes, "multicast": multicast}
    with tempfile.TemporaryDirectory(prefix=f"{PREFIX}-") as tmp:
        hub = Hub(Path(tmp), multicast, args.src, args.hub_core, args.profile)
        try:
            result["rss_idle_mb"] = round(hub.rss_mb(), 1)
            result["storm"] = storm(gen, packets[0], hub, args.storm_limit)
            print(json.dumps(result["storm"]), file=sys.stderr, flush=True)
            if result["storm"]["registered"] == spokes:
                # Let the hub finish what the storm left (kernel writes, logs).
                time.sleep(1.0)
                result["neighbours_after_storm"] = neighbours(HUB_NS)
                steps = []
                total_refreshes = 0
                for rate in args.rates:
                    step = refresh_step(gen, packets[0], rate, args.seconds, 0, hub)
                    total_refreshes += step["sent"]
                    steps.append(step)
                    print(json.dumps(step), file=sys.stderr, flush=True)
                    if step["answered_pct"] < 90:
                        break
                if args.soak:
                    # Memory under refresh traffic: RSS before and after
                    # --soak refreshes at --soak-rate (answered fraction too).
                    rss0 = hub.rss_mb()
                    soak = refresh_step(
                        gen, packets[0], args.soak_rate, args.soak / args.soak_rate, 0, hub
                    )
                    total_refreshes += soak["sent"]
                    soak.update(rss_before_mb=round(rss0, 1), rss_after_mb=round(hub.rss_mb(), 1))
                    result["soak"] = soak
                    print(json.dumps(soak), file=sys.stderr, flush=True)
                result["refresh"] = steps
                # New registrations, paced: spokes never seen before register
                # at --new-rates per second for --new-seconds each.
                new_steps = []
                start = spokes
                for rate in args.new_rates:
                    step = refresh_step(
                        gen, everyone[0], rate, args.new_seconds, start, hub, kind="new"
                    )
                    start += step["sent"]
                    new_steps.append(step)
                    print(json.dumps(step), file=sys.stderr, flush=True)
                result["new_registrations"] = new_steps
                ok = [s for s in steps if s["answered_pct"] >= 99]
                result["refresh_max_99"] = max((s["rate"] for s in ok), default=None)
                result["refreshes_sent"] = total_refreshes
                t, body = api_get(hub.sock, "/v1/nhrp")
                result["api_nhrp_all"] = {"ms": round(t * 1000), "bytes": body}
            result["counters"] = hub_counters(hub.sock)
            result["rss_mb"] = round(hub.rss_mb(), 1)
            result["shutdown_s"] = hub.terminate(args.shutdown_limit)
            if result["shutdown_s"] is not None:
                result["shutdown_s"] = round(result["shutdown_s"], 2)
            result["hub_log_lines"] = sum(1 for _ in hub.log.open("rb"))
        finally:
            if hub.proc.poll() is None:
                hub.proc.kill()
                hub.proc.wait()
            gen.close()
            lab_down()
    result["generator_send_waits"] = gen.tx_dropped
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spokes", type=int, nargs="+", default=[1000, 10000, 50000])
    p.add_argument("--multicast", choices=("both", "on", "off"), default="both")
    p.add_argument("--rates", type=float, nargs="+", default=[5000, 10000, 20000, 30000])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--storm-limit", type=float, default=90.0)
    p.add_argument("--shutdown-limit", type=float, default=60.0)
    p.add_argument("--hub-core", type=int, default=0)
    p.add_argument("--gen-core", type=int, default=1)
    p.add_argument("--src", type=Path, help="run the hub from this src tree (PYTHONPATH)")
    p.add_argument("--profile", type=Path, help="cProfile the hub into this file (one run)")
    p.add_argument("--new-rates", type=float, nargs="*", default=[], help="new spokes/s steps")
    p.add_argument("--new-seconds", type=float, default=1.0)
    p.add_argument("--soak", type=int, default=0, help="then N refreshes (RSS before/after)")
    p.add_argument("--soak-rate", type=float, default=8000.0)
    args = p.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {args.gen_core})
    # SIGTERM/SIGINT (even when started in the background, where SIGINT is
    # ignored) end the run through the `finally`s: the namespaces and the hub go.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(128 + 15))
    modes = {"both": [False, True], "on": [True], "off": [False]}[args.multicast]
    results = []
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load = os.getloadavg()
    try:
        for multicast in modes:
            for n in args.spokes:
                r = run_one(args, n, multicast)
                results.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
    finally:
        lab_down()
    out = {
        "started": started,
        "load_before": [round(x, 2) for x in load],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "src": str(args.src) if args.src else "installed",
        "results": results,
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
