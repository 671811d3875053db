"""Measuring a failure in a lab: how long host-to-host traffic stops when a
router dies (tests/e2e/test_hub_redundancy.py, bench/bench_hub_failover.py).

`outage()` pings from one host to another (ping(8) with receive timestamps,
one echo every `interval`), kills what it is told to at a known moment, and
reads the replies: cold (no traffic before the kill, the issue's
measurement) the outage is from the kill to the first reply; with traffic
flowing it is the longest time without a reply from the kill on (0 when no
echo was lost).
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from .netns import Lab, LabError

__all__ = ["Outage", "kill_daemon", "outage"]

_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)", re.M)


@dataclass(frozen=True, slots=True)
class Outage:
    seconds: float  # traffic stopped this long (see the module docstring)
    replies: int  # echo replies seen from the kill on
    recovered: bool  # a reply came back before the deadline


def kill_daemon(lab: Lab, node: str) -> int:
    """SIGKILL the node's registered daemon (by PID, from the lab's state);
    its PID. The namespace and its underlay stay: the host is up, the router
    software is gone."""
    pids = next((s["pids"] for s in lab.status() if s["name"] == node), [])
    if not pids:
        raise LabError(f"no running process registered for {node}")
    os.kill(pids[0], signal.SIGKILL)
    return pids[0]


def outage(
    lab: Lab,
    src: str,
    dst: str,
    kill: Callable[[], object],
    *,
    traffic: bool,
    interval: float = 0.05,
    deadline: float = 20.0,
    settle: float = 2.0,
) -> Outage:
    """Ping dst from src, kill at a known moment, and say how long the
    replies stopped. Gives up `deadline` s after the kill; with replies back,
    watches `settle` s more (a second failure over would show)."""
    # -O: a line for every unanswered echo too, so reads never wait long.
    argv = ["ping", "-n", "-D", "-O", "-i", str(interval), "-W", "1", dst]
    proc: subprocess.Popen[bytes] | None = None

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [lab.ip, "netns", "exec", lab.namespace(src), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    try:
        if traffic:
            proc = start()
            _wait_replies(proc, 5, 15.0)
        killed_at = time.time()
        kill()
        if proc is None:
            proc = start()
        times: list[float] = []
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        end = time.monotonic() + deadline
        buffer = b""
        while time.monotonic() < end:
            if select.select([fd], [], [], 0.1)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break  # ping exited
                buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                m = _REPLY.match(line.decode(errors="replace"))
                if m and float(m.group(1)) >= killed_at:
                    times.append(float(m.group(1)))
            if times and time.time() - times[0] >= settle:
                break
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
    if not times:
        return Outage(deadline, 0, False)
    if not traffic:
        return Outage(times[0] - killed_at, len(times), True)
    gaps = [b - a for a, b in zip([killed_at, *times], times, strict=False)]
    longest = max(gaps)
    # One interval between replies is no outage.
    return Outage(0.0 if longest <= 3 * interval else longest, len(times), True)


def _wait_replies(proc: subprocess.Popen[bytes], count: int, timeout: float) -> None:
    """Read until `count` replies (the pipe is read unbuffered, by os.read,
    so nothing after them is left in a Python buffer)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    end = time.monotonic() + timeout
    text = b""
    while len(_REPLY.findall(text.decode(errors="replace"))) < count:
        if time.monotonic() > end:
            raise LabError(f"no traffic to measure: fewer than {count} replies before the kill")
        if select.select([fd], [], [], 0.1)[0]:
            text += os.read(fd, 65536)
