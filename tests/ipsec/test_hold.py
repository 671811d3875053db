"""The IKE hold (ipsec/hold.py) in a network namespace of its own: what it
drops, that lifting it lets IKE through again, and that it cannot outlive
the process that took it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"),
    reason="needs root for a network namespace (CI runs as root)",
)

# Runs in a fresh network namespace: probes UDP ports on loopback.
SCRIPT = r"""
import json, signal, socket, subprocess, sys, time
from dmvpn.ipsec.hold import IkeHold

subprocess.run(["ip", "link", "set", "lo", "up"], check=True)

def passes(port, family=socket.AF_INET):
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family, socket.SOCK_DGRAM) as r, \
            socket.socket(family, socket.SOCK_DGRAM) as s:
        r.bind((host, port))
        r.settimeout(0.3)
        s.sendto(b"\0\0\0\0ike", (host, port))
        try:
            r.recv(64)
            return True
        except TimeoutError:
            return False

def ports():
    return {"500": passes(500), "4500": passes(4500), "501": passes(501),
            "500v6": passes(500, socket.AF_INET6), "4500v6": passes(4500, socket.AF_INET6)}

out = {"before": ports()}
hold = IkeHold()
out["held"] = ports()
out["dropped"] = hold.dropped()
try:
    IkeHold()
    out["second"] = "taken"
except OSError as exc:
    out["second"] = exc.errno
hold.release()
out["released"] = ports()
# A holder killed with SIGKILL: the kernel removes its table with its socket.
child = subprocess.Popen([sys.executable, "-c",
    "import time; from dmvpn.ipsec.hold import IkeHold; h = IkeHold(); "
    "print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "held"
out["child_held"] = ports()
child.send_signal(signal.SIGKILL)
child.wait()
time.sleep(0.1)
out["child_killed"] = ports()
print(json.dumps(out))
"""


def test_hold_drops_ike_until_released_and_dies_with_its_process() -> None:
    run = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    every = {"500": True, "4500": True, "501": True, "500v6": True, "4500v6": True}
    held = {"500": False, "4500": False, "501": True, "500v6": False, "4500v6": False}
    assert out["before"] == every
    assert out["held"] == held  # IKE only, both families
    assert out["dropped"] == 4  # the counters see what was dropped
    assert out["second"] == 1  # EPERM: the table belongs to the first holder
    assert out["released"] == every
    assert out["child_held"] == held
    assert out["child_killed"] == every  # nothing left behind
