"""A cloud with our daemon in QEMU guests on the kernel's mGRE
(dmvpn.lab.vmnode) beside userspace nodes in namespaces (issue 15)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from dmvpn.lab import Lab, Topology
from dmvpn.lab.runner import Runner
from dmvpn.lab.vmnode import DmvpnGuests


class Cloud:
    def __init__(self, lab: Lab, runner: Runner, guests: DmvpnGuests) -> None:
        self.lab, self.runner, self.guests = lab, runner, guests

    def wait(self, what: str, check: Callable[[], object], timeout: float = 30) -> float:
        start = time.monotonic()
        while not check():
            if time.monotonic() - start > timeout:
                pytest.fail(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.3)
        return time.monotonic() - start

    def sh(self, node: str, command: str) -> str:
        if node in self.guests.nodes:
            return self.guests.run(node, command).output
        res = self.lab.exec(node, ["sh", "-c", command], capture_output=True, text=True)
        return str(res.stdout)

    def ping(self, host: str, dst: str, count: int = 3) -> bool:
        res = self.lab.exec(
            host,
            ["ping", "-c", str(count), "-i", "0.3", "-W", "2", dst],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return res.returncode == 0

    def lan_ip(self, node: str) -> str:
        addr = self.lab.topology.plan(node).lan
        assert addr is not None
        return str(addr.ip)

    def cache(self, node: str) -> dict[str, dict[str, Any]]:
        data = self.guests.api(node, "/v1/nhrp") if node in self.guests.nodes else None
        if data is None:
            sock = str(self.runner.socket_path(node))
            out = self.lab.exec(
                node,
                [*self.runner.dmvpn, "show", "nhrp", "--json", "--socket", sock],
                capture_output=True,
                text=True,
            ).stdout
            data = json.loads(out)
        return {e["protocol"]: e for e in data["entries"]}

    def shortcut_via(self, node: str, prefix: str) -> str | None:
        """The next hop of the node's NHRP shortcut route (protocol 177) for prefix."""
        out = self.sh(node, f"ip route show proto 177 {prefix}")
        m = re.search(r"via (\S+)", out)
        return m.group(1) if m else None

    def neighbour(self, node: str, addr: str) -> str:
        return self.sh(node, f"ip neigh show {addr} dev dmvpn0").strip()


@contextmanager
def kernel_clouds(*labs: tuple[dict[str, Any], str]) -> Iterator[list[Cloud]]:
    """Several labs (topology, prefix) up at once, their guests (`kind: vm`
    nodes, or `kind: frr` ones) booted together with our daemon (on the
    kernel plane unless the topology says otherwise), the host's
    daemons started, every spoke registered. One boot for all: each guest is
    one emulated CPU, so guests of different labs share the cores instead of
    waiting for each other's boot (and Python imports) in turn."""
    assert shutil.which("qemu-system-x86_64"), "qemu-system-x86 missing"
    built: list[Lab] = []
    try:
        clouds, hubs = [], []
        for topology, prefix in labs:
            lab = Lab(Topology.from_data(topology), prefix=prefix)
            built.append(lab)
            lab.up()  # the next lab is built while this one's guests boot
            c = Cloud(lab, Runner(lab), DmvpnGuests(lab))
            clouds.append(c)
            # The host's hubs first, the guests boot meanwhile, the host's
            # spokes once every guest runs: a spoke whose hub is still
            # starting under emulation would back off its registrations.
            hubs.append([p.name for p in lab.topology.hubs if p.name in c.runner.routers])
            c.runner.start(hubs[-1])
            c.guests.start()
        for c in clouds:
            c.guests.wait_ready(timeout=300)
        for c, h in zip(clouds, hubs, strict=True):
            c.runner.start([r for r in c.runner.routers if r not in h])
        for c in clouds:
            spokes = [p.name for p in c.lab.topology.spokes if p.name in c.guests.nodes]
            c.wait(
                "the kernel spokes to register",
                lambda: all(c.guests.events(s, "nhs-up") for s in spokes),  # noqa: B023
                timeout=60,
            )
            c.runner.wait_registered()
        yield clouds
    finally:
        keep = os.environ.get("DMVPN_INTEROP_KEEP")
        for lab in built:
            if keep:  # for a post-mortem: the guests' consoles and daemons' logs
                shutil.copytree(
                    lab.run_dir,
                    f"{keep}/{lab.prefix}",
                    dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.sock"),
                )
            lab.down()


@contextmanager
def kernel_cloud(topology: dict[str, Any], prefix: str) -> Iterator[Cloud]:
    """One lab as `kernel_clouds` brings it up."""
    with kernel_clouds((topology, prefix)) as (cloud,):
        yield cloud
