"""A real Linux router in the lab: a QEMU guest with Debian's own kernel.

The host kernel may lack what a peer needs (GRE, ESP, nf_tables for IPv4),
and User-Mode Linux no longer boots on hosts whose XSAVE area holds AMX state
(real-peers.md). So a router that needs a real kernel is a QEMU guest in
software emulation (TCG: KVM guests hang on these hosts), booting a pinned
Debian kernel. Nothing here is FRR-specific: `GuestSpec` says which root,
which NICs and what to run at boot; `dmvpn.lab.frrnode` uses it for FRR's
nhrpd, and a guest may as well run dmvpn itself.

A guest is one `qemu-system-x86_64` process, started inside the router's
namespace (where the lab made the taps its NICs open by name) and registered
with `Lab.register_pid`, so `Lab.down` stops it by PID like any daemon, also
after a `kill -9` of whoever started it. Its files sit in its work directory
in the lab's run directory, which `Lab.down` removes:

    boot.sh        what the guest runs once up (written by the caller)
    halt.sh        optional: what the guest runs before powering off
    init.sh        the guest's PID 1 after switch_root (written here)
    agent.py       the guest agent (copied here)
    results/       what commands run through the agent gave back (ID.json)
    kernel.log     the guest's serial console (kernel messages, panics)
    console.log    output of init.sh and boot.sh
    ready          boot.sh finished with status 0 (`failed` holds its status otherwise)
    agent.sock     QEMU's end of the agent's virtio-serial port

Booting (measured on a 2-core host: 8-10 s to a running nhrpd for one
guest, 18-19 s each for three at once; bench/RESULTS.md):
- the kernel is the ELF inside Debian's bzImage, booted through its PVH entry
  (dmvpn.lab.guestkernel prepares it): decompressing the bzImage under
  emulation doubles the time to init;
- a small initramfs (busybox-static, the virtio, 9p and overlay modules)
  mounts the root directory read-only over virtio-9p, puts an overlay with a
  tmpfs upper layer on it (the guest may write anywhere; nothing reaches the
  host), binds the guest kernel's modules on /lib/modules, mounts the work
  directory (writable 9p) on /run/out, names the NICs, and switches root;
- `-accel tcg,tb-size=64`: QEMU's default 1 GiB translation cache makes each
  guest about 800 MB of RSS, this about 300 MB;
- `-machine pc`: `microvm` hung at clock calibration in about one boot of ten.

Commands reach the guest through an agent on a virtio-serial port rather than
a polled directory: under emulation every fork+exec costs ~30 ms, so a shell
polling loop burns a quarter of a core per guest; the agent sleeps until QEMU
signals a connection (SIGIO) and answers in tens of milliseconds.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .guestkernel import GuestKernel, ensure_kernel
from .netns import Lab, LabError

__all__ = ["BOOT_TIMEOUT", "GuestResult", "GuestSpec", "Nic", "VirtualMachine"]

QEMU = "qemu-system-x86_64"
# Several guests boot at once on two shared cores.
BOOT_TIMEOUT = 120.0
_HERE = Path(__file__).with_name("guest")


@dataclass(frozen=True, slots=True)
class GuestResult:
    """What a command run in a guest gave back."""

    returncode: int
    output: str  # stdout and stderr, interleaved


@dataclass(frozen=True, slots=True)
class Nic:
    """A guest NIC: the tap (in the node's namespace) it opens, its name inside."""

    tap: str
    name: str


@dataclass(frozen=True, slots=True)
class GuestSpec:
    """Everything that makes one guest: where it runs and what it runs."""

    node: str  # the lab node whose namespace holds the taps
    work: Path  # its work directory (in the lab's run directory)
    root: Path = Path("/")  # the directory booted as its root (read-only)
    nics: tuple[Nic, ...] = ()
    memory_mb: int = 256
    boot: str = "true\n"  # shell script run once up; "ready" when it exits 0
    halt: str = ""  # shell script run before powering off (copy logs out)
    shares: tuple[tuple[str, Path], ...] = field(default=())  # (tag, host dir), mounted ro


# -- one guest -----------------------------------------------------------------


class VirtualMachine:
    """Boots, talks to and stops one guest of a lab."""

    def __init__(self, lab: Lab, spec: GuestSpec, kernel: GuestKernel | None = None) -> None:
        self.lab, self.spec = lab, spec
        self._kernel = kernel
        self.proc: subprocess.Popen[bytes] | None = None
        self._ids = itertools.count(1)

    @property
    def work(self) -> Path:
        return self.spec.work

    @property
    def agent_socket(self) -> Path:
        return self.work / "agent.sock"

    def start(self) -> None:
        """Write the guest's files and start QEMU (no wait: see `wait_ready`)."""
        if shutil.which(QEMU) is None:
            raise LabError(f"lab guests need {QEMU}: apt-get install qemu-system-x86")
        kernel = self._kernel or ensure_kernel()
        spec, work = self.spec, self.work
        work.mkdir(parents=True, exist_ok=True)
        for name in ("ready", "failed", "console.log", "kernel.log", "agent.sock"):
            (work / name).unlink(missing_ok=True)
        (work / "boot.sh").write_text(spec.boot)
        (work / "halt.sh").write_text(spec.halt)
        shutil.copyfile(_HERE / "init.sh", work / "init.sh")
        shutil.copyfile(_HERE / "agent.py", work / "agent.py")
        nics = ",".join(f"{_mac(spec.node, i)}/{nic.name}" for i, nic in enumerate(spec.nics))
        append = f"console=ttyS0 panic=-1 quiet DMVPN_NICS={nics} DMVPN_NODE={spec.node}"
        if spec.shares:  # mounted ro at /run/share/<tag> (initramfs-init.sh)
            append += " DMVPN_SHARES=" + ",".join(tag for tag, _ in spec.shares)
        argv = [
            QEMU,
            "-machine",
            "pc",
            "-accel",
            "tcg,tb-size=64",
            "-m",
            str(spec.memory_mb),
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-kernel",
            str(kernel.image),
            "-initrd",
            str(kernel.initramfs),
            "-append",
            append,
            "-serial",
            f"file:{work / 'kernel.log'}",
            *_virtfs("root", spec.root, readonly=True),
            *_virtfs("modules", kernel.modules, readonly=True),
            *_virtfs("out", work, readonly=False),
            "-device",
            "virtio-serial-pci",
            "-chardev",
            f"socket,id=agent,path={self.agent_socket},server=on,wait=off",
            "-device",
            "virtserialport,chardev=agent,name=dmvpn.agent",
        ]
        for tag, path in spec.shares:
            argv += _virtfs(tag, path, readonly=True)
        for i, nic in enumerate(spec.nics):
            argv += [
                "-netdev",
                f"tap,id=n{i},ifname={nic.tap},script=no,downscript=no",
                "-device",
                f"virtio-net-pci,netdev=n{i},mac={_mac(spec.node, i)}",
            ]
        with (work / "qemu.log").open("wb") as log:
            self.proc = self.lab.popen(
                spec.node,
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def ready(self) -> bool:
        return (self.work / "ready").exists()

    def check_boot(self) -> bool:
        """True once the guest is ready; LabError if its boot failed or QEMU exited."""
        if self.ready():
            return True
        failed = self.work / "failed"
        if failed.exists():
            raise LabError(
                f"the boot script of {self.spec.node} failed "
                f"(status {failed.read_text().strip()})\n{self.tail()}"
            )
        if self.proc is not None and self.proc.poll() is not None:
            raise LabError(
                f"QEMU for {self.spec.node} exited before it was ready "
                f"(status {self.proc.returncode})\n{self.tail()}"
            )
        return False

    def wait_ready(self, timeout: float = BOOT_TIMEOUT) -> float:
        start = time.monotonic()
        while not self.check_boot():
            if time.monotonic() - start > timeout:
                raise LabError(
                    f"timed out after {timeout:g} s booting {self.spec.node}\n{self.tail()}"
                )
            time.sleep(0.1)
        return time.monotonic() - start

    def tail(self, lines: int = 20) -> str:
        out = []
        for name in ("console.log", "kernel.log", "qemu.log"):
            try:
                text = (self.work / name).read_text(errors="replace")
            except FileNotFoundError:
                continue
            if text.strip():
                out.append(
                    f"--- {self.spec.node} {name}:\n" + "\n".join(text.splitlines()[-lines:])
                )
        return "\n".join(out) or f"--- {self.spec.node}: no output"

    # -- the agent ------------------------------------------------------------

    def run(self, script: str, timeout: float = 30.0) -> GuestResult:
        """Run a shell script in the guest (as root); its exit status and output."""
        if not self.ready():
            raise LabError(
                f"the guest of {self.spec.node} is not running (no {self.work / 'ready'})"
            )
        # Unique also across processes and PID reuse: it names the result file.
        ident = f"{os.getpid()}-{next(self._ids)}-{os.urandom(3).hex()}"
        deadline = time.monotonic() + timeout
        self._request({"id": ident, "op": "run", "script": script}, timeout)
        # The agent acknowledged; the result arrives as a file on the share
        # (guest/agent.py says why not over the socket).
        result = self.work / "results" / f"{ident}.json"
        while not result.exists():
            if time.monotonic() > deadline:
                raise LabError(f"`{script}` on {self.spec.node} did not finish in {timeout:g} s")
            if self.proc is not None and self.proc.poll() is not None:
                raise LabError(f"QEMU for {self.spec.node} exited\n{self.tail()}")
            time.sleep(0.01)
        reply = json.loads(result.read_text())
        result.unlink()
        return GuestResult(int(reply["rc"]), str(reply["out"]))

    def _request(self, message: dict[str, Any], timeout: float) -> None:
        """Hand the agent a request and wait for its acknowledgement."""
        deadline = time.monotonic() + timeout
        what = message.get("script", message["op"])
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(max(0.1, timeout))
            try:
                sock.connect(str(self.agent_socket))
                sock.sendall(json.dumps(message).encode() + b"\n")
                buf = b""
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    sock.settimeout(left)
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise LabError(f"the agent of {self.spec.node} hung up\n{self.tail()}")
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        # An acknowledgement for an earlier client that gave up: not ours.
                        if json.loads(line).get("id") == message["id"]:
                            return
            except TimeoutError:
                raise LabError(
                    f"`{what}` on {self.spec.node} did not finish in {timeout:g} s"
                ) from None
            except OSError as exc:
                raise LabError(f"cannot reach the agent of {self.spec.node}: {exc}") from None

    # -- stopping -------------------------------------------------------------

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the guest to run its halt script and power off; kill QEMU by PID if not."""
        if self.ready() and (self.proc is None or self.proc.poll() is None):
            try:
                self._request({"id": f"halt-{os.getpid()}", "op": "halt"}, timeout)
            except LabError:
                pass
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _virtfs(tag: str, path: Path, readonly: bool) -> list[str]:
    # multidevs=remap: the host's / spans several devices (inode clashes otherwise).
    opts = f"local,path={path},mount_tag={tag},security_model=none,multidevs=remap"
    return ["-virtfs", opts + (",readonly=on" if readonly else "")]


def _mac(node: str, index: int) -> str:
    """A stable locally administered MAC per node and NIC (52:54:00 is QEMU's)."""
    h = zlib.crc32(node.encode())
    return f"52:54:{h >> 24 & 255:02x}:{h >> 16 & 255:02x}:{h >> 8 & 255:02x}:{index:02x}"
