"""Entering another network namespace for one call (front-door VRF).

A socket belongs to the namespace it was made in, for life: the daemon
makes its GRE socket in the underlay namespace (`tunnel.namespace`) and
goes back, so the socket sends and receives on the underlay while the TAP,
the routes and the LAN stay in the daemon's own namespace. setns(2) changes
only the calling thread, which is the one that comes back.

An interface in a VRF of its own (`namespace:`, docs/VRF.md) is opened
and run inside that namespace, while its GRE socket still belongs to the
underlay: `entered(None)` is therefore the namespace the process started
in (its home), not merely wherever the thread is at the moment.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NETNS_DIR = Path("/run/netns")  # where `ip netns add` puts the named ones
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(OSError):
    pass


def _inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


# The namespace the process started in (modules are imported before any
# thread enters another one), kept open to go back to.
_HOME_FD = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
_HOME = os.fstat(_HOME_FD).st_ino


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, os.strerror(err))


@contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the body in network namespace ``name`` (None: the process's home
    namespace, where it started)."""
    if name is None and _inode() == _HOME:
        yield
        return
    try:
        target = os.open(
            NETNS_DIR / name if name is not None else f"/proc/self/fd/{_HOME_FD}",
            os.O_RDONLY | os.O_CLOEXEC,
        )
    except OSError as exc:
        raise NetnsError(exc.errno, f"network namespace {name!r}: {exc.strerror}") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)
