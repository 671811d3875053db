"""The lab guests' kernel: Debian's own, pinned, with an initramfs built here.

`ensure_kernel` downloads the package with `apt-get download` (no install:
nothing on the host changes), unpacks it, runs depmod, extracts the ELF
kernel from the bzImage (booting it through its PVH entry skips the
decompressor, which takes seconds under emulation) and builds a small
initramfs: busybox-static, the modules that reach a 9p root (virtio, 9p,
overlay), and guest/initramfs-init.sh. All of it is cached, keyed by the
kernel version, and built once under a lock (labs may start at once).
"""

from __future__ import annotations

import fcntl
import itertools
import lzma
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .netns import LabError

__all__ = [
    "CACHE",
    "KERNEL_ABI",
    "GuestKernel",
    "build_initramfs",
    "ensure_kernel",
    "extract_elf",
    "module_order",
]

CACHE = Path(os.environ.get("DMVPN_LAB_CACHE", "/var/cache/dmvpn-lab"))
# Debian 12's kernel, pinned: the ABI the guests are tested with. Debian
# replaces old ABIs at point releases; then the current one (what
# linux-image-amd64 depends on) is used, and the fallback is said on stderr.
KERNEL_ABI = "6.1.0-50"
_HERE = Path(__file__).with_name("guest")
# Loaded in the initramfs, with their dependencies (modules.dep).
_INITRAMFS_MODULES = ["virtio_pci", "virtio_net", "virtio_console", "9pnet_virtio", "9p", "overlay"]
_STAMP = ".dmvpn-kernel"


@dataclass(frozen=True, slots=True)
class GuestKernel:
    """An unpacked Debian kernel with its modules and the initramfs built for it."""

    version: str  # uname -r
    image: Path  # the ELF kernel (PVH entry), or the bzImage if none was found
    modules: Path  # lib/modules/<version>
    initramfs: Path


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
