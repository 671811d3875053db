"""The lab guest's agent (dmvpn.lab.vm): runs the host's commands, powers off.

It reads JSON lines from the virtio-serial port "dmvpn.agent". A request
{"id", "op": "run", "script"} is acknowledged at once ({"id", "accepted"}),
then `sh -c script` runs in a thread of its own and its result
{"id", "rc", "out"} is written to /run/out/results/ID.json (the guest's work
directory, shared with the host). {"id", "op": "halt"} runs /run/out/halt.sh,
acknowledges and powers the guest off.

Why results go through the share: QEMU's socket takes one host connection at
a time, so a client holding it until its command ends would hold up every
other client (a `lab exec` of a slow command would stall `lab show`). A
client holds it only for its request and the acknowledgement.

While no host is connected, the port reads end-of-file at once: the agent
then sleeps until QEMU reports a connection, which the guest kernel signals
with SIGIO (virtio_console, on VIRTIO_CONSOLE_PORT_OPEN), instead of spinning.

Only what Debian's python3-minimal has (no ctypes): it runs on whatever root
the guest boots.
"""

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

NAME = "dmvpn.agent"
RESULTS = Path("/run/out/results")
F_SETOWN = getattr(fcntl, "F_SETOWN", 8)
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # it names a file


def port_path() -> Path:
    for entry in Path("/sys/class/virtio-ports").iterdir():
        if (entry / "name").read_text().strip() == NAME:
            return Path("/dev") / entry.name
    sys.exit(f"agent: no virtio-serial port named {NAME}")


class Agent:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\n"
        with self.lock:
            while data:  # blocks while no host is connected: the next one skips it
                data = data[os.write(self.fd, data) :]

    def run(self, request: dict[str, Any]) -> None:
        try:
            res = subprocess.run(
                ["sh", "-c", request["script"]],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            rc, out = res.returncode, res.stdout.decode(errors="replace")
        except Exception as exc:  # the host must get an answer
            rc, out = 255, f"agent: {exc}\n"
        tmp = RESULTS / f".{request['id']}.tmp"
        tmp.write_text(json.dumps({"id": request["id"], "rc": rc, "out": out}))
        tmp.rename(RESULTS / f"{request['id']}.json")  # never seen half-written

    def halt(self, request: dict[str, Any]) -> None:
        if Path("/run/out/halt.sh").exists():
            subprocess.run(["sh", "/run/out/halt.sh"], stdin=subprocess.DEVNULL)
        os.sync()
        self.send({"id": request["id"], "accepted": True})
        Path("/proc/sysrq-trigger").write_text("o")  # power off (no ctypes for reboot(2))

    def handle(self, line: bytes) -> None:
        try:
            request = json.loads(line)
            op, ident = request["op"], request["id"]
            if not _ID.match(ident) or op not in ("run", "halt"):
                raise ValueError(op)
        except (ValueError, KeyError, TypeError):
            print(f"agent: bad request {line[:200]!r}", flush=True)
            return
        if op == "halt":
            threading.Thread(target=self.halt, args=(request,), daemon=True).start()
            return
        self.send({"id": ident, "accepted": True})
        threading.Thread(target=self.run, args=(request,), daemon=True).start()


def main() -> None:
    RESULTS.mkdir(exist_ok=True)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGIO})  # threads inherit it
    fd = os.open(port_path(), os.O_RDWR)
    fcntl.fcntl(fd, F_SETOWN, os.getpid())
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
    agent = Agent(fd)
    print("=== agent listening", flush=True)
    buf = b""
    while True:
        data = os.read(fd, 65536)
        if not data:
            buf = b""  # the host went away mid-line
            # A second's timeout in case a signal is lost: the port is checked anyway.
            signal.sigtimedwait({signal.SIGIO}, 1.0)
            continue
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            agent.handle(line)


if __name__ == "__main__":
    main()
