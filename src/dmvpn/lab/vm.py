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

Booting (measured on a 2-core host: about 7 s to a running nhrpd for one
guest, 10-12 s each for three at once):
- the kernel is the ELF inside Debian's bzImage, booted through its PVH entry:
  decompressing the bzImage under emulation doubles the time to init;
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

import fcntl
import itertools
import json
import lzma
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .netns import Lab, LabError

__all__ = [
    "BOOT_TIMEOUT",
    "CACHE",
    "KERNEL_ABI",
    "GuestKernel",
    "GuestResult",
    "GuestSpec",
    "Nic",
    "VirtualMachine",
    "ensure_kernel",
]

CACHE = Path(os.environ.get("DMVPN_LAB_CACHE", "/var/cache/dmvpn-lab"))
# Debian 12's kernel, pinned: the ABI the guests are tested with. Debian
# replaces old ABIs at point releases; then the current one (what
# linux-image-amd64 depends on) is used, and the fallback is said on stderr.
KERNEL_ABI = "6.1.0-50"
QEMU = "qemu-system-x86_64"
# Several guests boot at once on two shared cores.
BOOT_TIMEOUT = 120.0
_HERE = Path(__file__).with_name("guest")
# Loaded in the initramfs, with their dependencies (modules.dep).
_INITRAMFS_MODULES = ["virtio_pci", "virtio_net", "virtio_console", "9pnet_virtio", "9p", "overlay"]
_STAMP = ".dmvpn-kernel"


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


@dataclass(frozen=True, slots=True)
class GuestKernel:
    """An unpacked Debian kernel with its modules and the initramfs built for it."""

    version: str  # uname -r
    image: Path  # the ELF kernel (PVH entry), or the bzImage if none was found
    modules: Path  # lib/modules/<version>
    initramfs: Path


# -- the kernel ----------------------------------------------------------------


def ensure_kernel(cache: Path | str = CACHE, abi: str = KERNEL_ABI) -> GuestKernel:
    """The guest kernel, downloaded and prepared first if the cache has none.

    Fetches Debian's package with `apt-get download` (no install: nothing on
    the host changes), unpacks it, runs depmod, extracts the ELF kernel and
    builds the initramfs. About 10 s; then cached. LabError if that fails.
    """
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / ".kernel.lock"):
        for candidate in (abi, None):
            version = f"{candidate}-amd64" if candidate else None
            if version is not None:
                kernel = _cached_kernel(cache / f"kernel-{version}", version)
                if kernel is not None:
                    return kernel
            package = _kernel_package(candidate)
            if package is None:
                continue
            version = package.removeprefix("linux-image-").removesuffix("-unsigned")
            if candidate is None:
                kernel = _cached_kernel(cache / f"kernel-{version}", version)
                if kernel is not None:
                    return kernel
                print(
                    f"dmvpn lab: kernel {abi}-amd64 is no longer in the archive; using {version}",
                    file=sys.stderr,
                )
            return _prepare_kernel(cache / f"kernel-{version}", package, version)
    raise LabError(f"no Debian kernel package for the lab's guests (wanted {abi}-amd64)")


def _cached_kernel(directory: Path, version: str) -> GuestKernel | None:
    if not (directory / _STAMP).exists():
        return None
    return _kernel_at(directory, version)


def _kernel_at(directory: Path, version: str) -> GuestKernel:
    elf = directory / "vmlinux"
    image = elf if elf.exists() else directory / "boot" / f"vmlinuz-{version}"
    return GuestKernel(
        version, image, directory / "lib/modules" / version, directory / "initramfs.cpio"
    )


def _kernel_package(abi: str | None) -> str | None:
    """The package name for an ABI, or for the current kernel (abi None)."""
    if abi is None:
        res = subprocess.run(
            ["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True
        )
        for line in res.stdout.splitlines():
            word = line.split(":")[-1].strip()
            if line.strip().startswith("Depends:") and word.startswith("linux-image-"):
                return f"{word}-unsigned"
        return None
    return f"linux-image-{abi}-amd64-unsigned"


def _prepare_kernel(directory: Path, package: str, version: str) -> GuestKernel:
    for tool in ("apt-get", "dpkg-deb", "depmod", "busybox"):
        if shutil.which(tool) is None and not Path("/usr/bin", tool).exists():
            raise LabError(
                f"preparing the guest kernel needs {tool} (apt-get install kmod busybox-static)"
            )
    _static_busybox()
    work = directory.with_name(directory.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # apt's sandbox user must be able to write the download directory.
    download = Path(tempfile.mkdtemp(prefix="dmvpn-kernel-"))
    download.chmod(0o777)
    try:
        fetch = ["apt-get", "download", "-q", package]
        res = subprocess.run(fetch, cwd=download, capture_output=True, text=True)
        if res.returncode != 0:  # stale package lists: refresh once
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            res = subprocess.run(fetch, cwd=download, capture_output=True, text=True)
        debs = list(download.glob("*.deb"))
        if res.returncode != 0 or not debs:
            raise LabError(f"could not download {package}: {res.stderr.strip()[-500:]}")
        _run(["dpkg-deb", "-x", str(debs[0]), str(work)], f"unpack {package}")
    finally:
        shutil.rmtree(download, ignore_errors=True)
    # Debian's package leaves modules.dep to its postinst.
    _run(["depmod", "-b", str(work), version], "run depmod")
    bzimage = work / "boot" / f"vmlinuz-{version}"
    elf = extract_elf(bzimage.read_bytes())
    if elf is not None:
        (work / "vmlinux").write_bytes(elf)
    kernel = _kernel_at(work, version)
    build_initramfs(kernel.modules, work / "initramfs.cpio")
    (work / _STAMP).write_text(f"{package} {version}\n")
    shutil.rmtree(directory, ignore_errors=True)
    work.rename(directory)
    return _kernel_at(directory, version)


def extract_elf(bzimage: bytes) -> bytes | None:
    """The uncompressed ELF kernel inside a bzImage (xz or gzip), or None.

    Booting it through its PVH entry skips the decompressor, which takes
    seconds under emulation.
    """
    for magic, unpack in ((b"\xfd7zXZ\x00", _unxz), (b"\x1f\x8b\x08\x00", _gunzip)):
        start = bzimage.find(magic)
        while start != -1:
            data = unpack(bzimage[start:])
            if data is not None and data[:4] == b"\x7fELF":
                return data
            start = bzimage.find(magic, start + 1)
    return None


def _unxz(data: bytes) -> bytes | None:
    try:
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
    except lzma.LZMAError:
        return None


def _gunzip(data: bytes) -> bytes | None:
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
    except zlib.error:
        return None


def _static_busybox() -> Path:
    path = Path("/bin/busybox")
    if not path.exists() or _interpreter(path.read_bytes()):
        raise LabError("the guest initramfs needs a static busybox: apt-get install busybox-static")
    return path


def _interpreter(elf: bytes) -> bool:
    """True if a 64-bit ELF asks for a program interpreter (is dynamically linked)."""
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    return any(
        struct.unpack_from("<I", elf, phoff + i * phentsize)[0] == 3  # PT_INTERP
        for i in range(phnum)
    )


def module_order(modules_dep: str, wanted: Sequence[str]) -> list[str]:
    """Module paths (relative to lib/modules/VERSION) in an order insmod accepts.

    modules.dep lists each module's dependencies, the last of which loads first.
    """
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        deps[path] = rest.split()
        name = Path(path).name.split(".ko")[0].replace("-", "_")
        by_name[name] = path
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in reversed(deps.get(path, [])):
            visit(dep)
        order.append(path)

    for name in wanted:
        if name not in by_name:
            raise LabError(f"the guest kernel has no module {name}")
        visit(by_name[name])
    return order


def build_initramfs(modules: Path, out: Path) -> None:
    """A newc cpio: busybox, the modules to reach the root, and the init script."""
    order = module_order((modules / "modules.dep").read_text(), _INITRAMFS_MODULES)
    archive = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules", "newroot", "lower", "upper"):
        archive.add(d, stat.S_IFDIR | 0o755)
    archive.add("bin/busybox", stat.S_IFREG | 0o755, _static_busybox().read_bytes())
    archive.add("bin/sh", stat.S_IFLNK | 0o777, b"busybox")
    names = []
    for i, rel in enumerate(order):
        name = f"{i:02d}-{Path(rel).name}"
        archive.add(f"lib/modules/{name}", stat.S_IFREG | 0o644, (modules / rel).read_bytes())
        names.append(name)
    archive.add("lib/modules/order", stat.S_IFREG | 0o644, ("\n".join(names) + "\n").encode())
    archive.add("init", stat.S_IFREG | 0o755, (_HERE / "initramfs-init.sh").read_bytes())
    out.write_bytes(archive.finish())


class _Cpio:
    """The SVR4 "newc" format the kernel unpacks initramfs from."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.ino = itertools.count(1)

    def add(self, name: str, mode: int, data: bytes = b"") -> None:
        encoded = name.encode() + b"\0"
        fields = [next(self.ino), mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.parts.append(_pad4(header + encoded) + _pad4(data))

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return b"".join(self.parts)


def _pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


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


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock: two labs must not build the same cache entry at once."""
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(argv: list[str], what: str) -> None:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise LabError(f"could not {what} (exit {res.returncode}): {res.stderr.strip()[-500:]}")
