"""The batched neighbour writer (dataplane/neighbours.py): what it queues
(sans-IO), and what a real kernel ends up with, in a namespace of the
test's own (root)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address

import pytest

from dmvpn.daemon.rtnl import attributes, parse
from dmvpn.dataplane.neighbours import (
    NLM_F_CREATE,
    NLM_F_REPLACE,
    NUD_PERMANENT,
    RTM_DELNEIGH,
    RTM_NEWNEIGH,
    NeighbourWriter,
    neigh_message,
)

A = IPv4Address
MAC = bytes.fromhex("0200c6120001")


def _log(kind: str, message: str) -> None:
    raise AssertionError(f"{kind}: {message}")


def test_messages_say_replace_permanent_or_delete() -> None:
    new = neigh_message(7, 3, A("10.0.0.2"), MAC)
    (msg,) = parse(new)
    assert msg.type == RTM_NEWNEIGH and msg.flags & NLM_F_REPLACE and msg.flags & NLM_F_CREATE
    family, index, state = new[16], int.from_bytes(new[20:24], "little"), new[24]
    assert (family, index, state) == (2, 3, NUD_PERMANENT)
    attrs = attributes(new, 16 + 12)
    assert attrs[1] == A("10.0.0.2").packed and attrs[2] == MAC
    gone = neigh_message(8, 3, IPv6Address("fd00::2"), None)
    (msg,) = parse(gone)
    assert msg.type == RTM_DELNEIGH and gone[16] == 10
    assert attributes(gone, 16 + 12)[1] == IPv6Address("fd00::2").packed


def test_the_last_word_per_address_is_written_once() -> None:
    w = NeighbourWriter(3, _log)  # not started: only queues
    w.replace(A("10.0.0.2"), MAC)
    w.replace(A("10.0.0.3"), MAC)
    w.delete(A("10.0.0.2"))  # a spoke gone before its entry was written
    w.replace(A("10.0.0.3"), MAC[:5] + b"\x09")
    assert w.pending == {A("10.0.0.3"): MAC[:5] + b"\x09", A("10.0.0.2"): None}
    w.close()
    assert w.pending == {}  # the interface went: nothing left to write


@pytest.fixture
def netns() -> Iterator[str]:
    from pyroute2.netns import popns, pushns

    name = f"dmvpnnb{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        # A veth stands in for the TAP (neighbour entries do not care).
        setup = "link add tun0 type veth peer name tunp\nlink set tun0 up\nlink set tunp up\n"
        subprocess.run(["ip", "-n", name, "-batch", "-"], input=setup, text=True, check=True)
        pushns(name)
        try:
            yield name
        finally:
            popns()
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _neighbours(ns: str, family: str = "-4") -> dict[str, str]:
    out = subprocess.run(
        ["ip", "-n", ns, family, "neigh", "show", "dev", "tun0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split()[0]: line for line in out.splitlines()}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
def test_a_storm_of_bindings_reaches_the_kernel_in_batches(netns: str) -> None:
    out = subprocess.run(
        ["ip", "-n", netns, "-j", "link", "show", "tun0"], capture_output=True, check=True
    ).stdout
    index = int(json.loads(out)[0]["ifindex"])
    loop = asyncio.new_event_loop()
    errors: list[str] = []
    w = NeighbourWriter(index, lambda kind, msg: errors.append(msg))
    try:
        w.start(loop)
        spokes = [A("10.0.0.2") + i for i in range(20_000)]
        for i, addr in enumerate(spokes):
            w.replace(addr, bytes.fromhex("0200c612") + i.to_bytes(2, "big"))
        w.replace(IPv6Address("fd00::2"), MAC)
        for addr in spokes[:5000]:
            w.delete(addr)
        w.delete(A("10.9.9.9"))  # never there: no error

        deadline = time.monotonic() + 60
        while (w.pending or len(_neighbours(netns)) != 15_000) and time.monotonic() < deadline:
            loop.run_until_complete(asyncio.sleep(0.05))
        loop.run_until_complete(asyncio.sleep(0.1))  # any error reports
        table = _neighbours(netns)
        assert len(table) == 15_000
        last = table[str(spokes[-1])]
        assert "lladdr 02:00:c6:12:4e:1f" in last and "PERMANENT" in last
        assert str(spokes[0]) not in table
        assert "fd00::2" in _neighbours(netns, "-6")
        assert w.stats["batches"] < w.stats["written"] / 100  # many per sendmsg
        assert errors == []
    finally:
        w.close()
        loop.close()
