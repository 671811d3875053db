"""The few bpf() commands the eBPF data plane needs, through ctypes.

Maps are read and written with the raw syscall (2-4 µs an update, where
bpftool as a subprocess takes a millisecond). The programs are loaded by
bpftool (libbpf: ELF, BTF, relocations) into a private bpffs mounted for
the moment of loading; we take file descriptors of the pinned objects and
unmount it, so the programs and maps live exactly as long as our
descriptors, and the tcx links that attach them are descriptors too: when
the process exits, however it exits, the kernel detaches everything.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = [
    "BPF_ANY",
    "BPF_NOEXIST",
    "BPF_TCX_EGRESS",
    "BPF_TCX_INGRESS",
    "BpfError",
    "BpfMap",
    "Loaded",
    "link_create",
    "load_object",
    "query_tcx",
]

# enum bpf_cmd (include/uapi/linux/bpf.h)
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_GET = 7
BPF_PROG_QUERY = 16
BPF_LINK_CREATE = 28
# enum bpf_attach_type: tcx (Linux 6.6+)
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
# map update flags
BPF_ANY = 0
BPF_NOEXIST = 1
MNT_DETACH = 2

_SYSCALL = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "riscv64": 280}
# union bpf_attr is larger than any command's part of it; the kernel wants
# every byte past the command's fields zero, so each call passes a zeroed
# buffer of this size.
_ATTR_SIZE = 128

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    """A bpf() command, bpftool or the bpffs mount failed."""


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    number = _SYSCALL.get(platform.machine())
    if number is None:
        raise BpfError(errno.ENOSYS, f"bpf(): unknown syscall number on {platform.machine()}")
    ret = _libc.syscall(ctypes.c_long(number), ctypes.c_int(cmd), attr, ctypes.c_uint(_ATTR_SIZE))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"bpf({cmd}): {os.strerror(err)}")
    return int(ret)


def _attr(*fields: tuple[int, int, int]) -> ctypes.Array[ctypes.c_char]:
    """A zeroed bpf_attr with (offset, size, value) fields set (native order)."""
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    for offset, size, value in fields:
        ctypes.memmove(ctypes.addressof(buf) + offset, value.to_bytes(size, _ORDER), size)
    return buf


_ORDER = sys.byteorder


def _addr(buf: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(buf)


class BpfMap:
    """A map by file descriptor, with fixed key and value sizes."""

    def __init__(self, fd: int, key_size: int, value_size: int) -> None:
        self.fd, self.key_size, self.value_size = fd, key_size, value_size

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> bool:
        """False when BPF_NOEXIST found the key already there."""
        k, v = ctypes.create_string_buffer(key), ctypes.create_string_buffer(value)
        try:
            _bpf(
                BPF_MAP_UPDATE_ELEM,
                _attr((0, 4, self.fd), (8, 8, _addr(k)), (16, 8, _addr(v)), (24, 8, flags)),
            )
        except BpfError as exc:
            if exc.errno == errno.EEXIST:
                return False
            raise
        return True

    def lookup(self, key: bytes) -> bytes | None:
        k = ctypes.create_string_buffer(key)
        v = ctypes.create_string_buffer(self.value_size)
        try:
            _bpf(BPF_MAP_LOOKUP_ELEM, _attr((0, 4, self.fd), (8, 8, _addr(k)), (16, 8, _addr(v))))
        except BpfError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return v.raw[: self.value_size]

    def delete(self, key: bytes) -> bool:
        k = ctypes.create_string_buffer(key)
        try:
            _bpf(BPF_MAP_DELETE_ELEM, _attr((0, 4, self.fd), (8, 8, _addr(k))))
        except BpfError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def keys(self) -> list[bytes]:
        out: list[bytes] = []
        nxt = ctypes.create_string_buffer(self.key_size)
        key: ctypes.Array[ctypes.c_char] | None = None  # NULL: the first key
        while True:
            try:
                _bpf(
                    BPF_MAP_GET_NEXT_KEY,
                    _attr(
                        (0, 4, self.fd),
                        (8, 8, _addr(key) if key is not None else 0),
                        (16, 8, _addr(nxt)),
                    ),
                )
            except BpfError as exc:
                if exc.errno == errno.ENOENT:
                    return out
                raise
            out.append(nxt.raw[: self.key_size])
            key = ctypes.create_string_buffer(out[-1])

    def items(self) -> list[tuple[bytes, bytes]]:
        got = ((k, self.lookup(k)) for k in self.keys())
        return [(k, v) for k, v in got if v is not None]  # deleted meanwhile: skipped


def obj_get(path: Path) -> int:
    name = ctypes.create_string_buffer(os.fsencode(path))
    return _bpf(BPF_OBJ_GET, _attr((0, 8, _addr(name))))


def link_create(prog_fd: int, ifindex: int, attach_type: int) -> int:
    """A tcx link: the program runs on the device until the fd is closed."""
    return _bpf(BPF_LINK_CREATE, _attr((0, 4, prog_fd), (4, 4, ifindex), (8, 4, attach_type)))


def query_tcx(ifindex: int, attach_type: int) -> list[int]:
    """The ids of the programs attached to a device's tcx hook (tests, show)."""
    ids = (ctypes.c_uint32 * 64)()
    attr = _attr((0, 4, ifindex), (4, 4, attach_type), (16, 8, ctypes.addressof(ids)), (24, 4, 64))
    _bpf(BPF_PROG_QUERY, attr)
    count = int.from_bytes(attr.raw[24:28], _ORDER)
    return list(ids[:count])


class Loaded:
    """The programs and maps of one object file, by name, as descriptors."""

    def __init__(self, progs: dict[str, int], maps: dict[str, int]) -> None:
        self.progs, self.maps = progs, maps

    def close(self) -> None:
        for fd in [*self.progs.values(), *self.maps.values()]:
            os.close(fd)
        self.progs, self.maps = {}, {}


BPFFS_PREFIX = "dmvpn-bpffs-"


def _stale_mounts() -> list[Path]:
    """bpffs mounts of ours whose process died while loading (kill -9 in that
    moment): they would keep the loaded, unattached programs alive."""
    stale = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point, kind = Path(fields[4]), line.split(" - ", 1)[1].split()[0]
        if kind != "bpf" or not point.name.startswith(BPFFS_PREFIX):
            continue
        pid = point.name[len(BPFFS_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            stale.append(point)
    return stale


def load_object(obj: Path, progs: list[str], maps: list[str]) -> Loaded:
    """Load every program of `obj` (bpftool), keeping only descriptors."""
    bpftool = shutil.which("bpftool")
    if bpftool is None:
        raise BpfError(errno.ENOENT, "bpftool not found (Debian package bpftool)")
    for point in _stale_mounts():
        _libc.umount2(os.fsencode(point), MNT_DETACH)
        try:
            point.rmdir()
        except OSError:
            pass  # not empty or gone: harmless once unmounted
    with tempfile.TemporaryDirectory(prefix=f"{BPFFS_PREFIX}{os.getpid()}-") as tmp:
        root = Path(tmp)
        if _libc.mount(b"bpf", os.fsencode(root), b"bpf", 0, None) != 0:
            err = ctypes.get_errno()
            raise BpfError(err, f"cannot mount a bpffs: {os.strerror(err)}")
        fds: dict[str, int] = {}
        try:
            res = subprocess.run(
                [
                    bpftool,
                    "prog",
                    "loadall",
                    str(obj),
                    str(root / "p"),
                    "type",
                    "classifier",
                    "pinmaps",
                    str(root / "m"),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if res.returncode != 0:
                raise BpfError(errno.EINVAL, f"bpftool could not load {obj}: {res.stderr[-800:]}")
            for name in progs:
                fds[f"p:{name}"] = obj_get(root / "p" / name)
            for name in maps:
                fds[f"m:{name}"] = obj_get(root / "m" / name)
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise
        finally:
            # The pins go with the mount: our descriptors are the only references.
            _libc.umount2(os.fsencode(root), MNT_DETACH)
    return Loaded(
        {k[2:]: v for k, v in fds.items() if k.startswith("p:")},
        {k[2:]: v for k, v in fds.items() if k.startswith("m:")},
    )
