"""The lab guest's agent (dmvpn.lab.vm): runs the host's commands, powers off.

It reads JSON lines from the virtio-serial port "dmvpn.agent"; each request
{"id", "op": "run", "script"} runs `sh -c script` in a thread of its own and
is answered {"id", "rc", "out"}; {"id", "op": "halt"} runs /run/out/halt.sh,
answers and powers the guest off. Only what Debian's python3-minimal has (no
ctypes): it runs on whatever root the guest boots.

While no host is connected, the port reads end-of-file at once: the agent
then sleeps until QEMU reports a connection, which the guest kernel signals
with SIGIO (virtio_console, on VIRTIO_CONSOLE_PORT_OPEN), instead of spinning.
"""

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

NAME = "dmvpn.agent"
F_SETOWN = getattr(fcntl, "F_SETOWN", 8)


def port_path() -> Path:
    for entry in Path("/sys/class/virtio-ports").iterdir():
        if (entry / "name").read_text().strip() == NAME:
            return Path("/dev") / entry.name
    sys.exit(f"agent: no virtio-serial port named {NAME}")


class Agent:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def reply(self, message: dict[str, Any]) -> None:
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
        self.reply({"id": request["id"], "rc": rc, "out": out})

    def halt(self, request: dict[str, Any]) -> None:
        if Path("/run/out/halt.sh").exists():
            subprocess.run(["sh", "/run/out/halt.sh"], stdin=subprocess.DEVNULL)
        os.sync()
        self.reply({"id": request["id"], "rc": 0, "out": "halting\n"})
        # No ctypes in a minimal Python (Debian's python3-minimal): sysrq.
        Path("/proc/sysrq-trigger").write_text("o")

    def handle(self, line: bytes) -> None:
        try:
            request = json.loads(line)
            op = request["op"]
        except (ValueError, KeyError, TypeError):
            print(f"agent: bad request {line[:200]!r}", flush=True)
            return
        target = self.halt if op == "halt" else self.run
        threading.Thread(target=target, args=(request,), daemon=True).start()


def main() -> None:
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
