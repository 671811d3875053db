"""The daemons of a lab: one `dmvpn run` per hub and spoke, inside its namespace.

Everything a daemon needs or leaves sits in the lab's run directory
(`Lab.run_dir`, /run/dmvpn-lab/<prefix>/ by default), next to the lab's state
file, so that `Lab.down()` removes it with the namespaces:

    <node>.yaml   the node config (`Topology.node_config` plus `socket`)
    <node>.log    the daemon's stdout and stderr: one JSON object per line
    <node>.sock   its management socket (namespaces share the filesystem, so
                  every node's socket must have its own path)

Each daemon is started in a session of its own (Ctrl-C in the terminal that
ran `dmvpn lab up` must not reach it) and registered with `Lab.register_pid`,
so `Lab.down()` stops it, from any process, even after the one that started
it is gone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from .netns import Lab, LabError
from .topology import VRF_CLOUDS

__all__ = ["Runner", "dmvpn_command"]

# How long to wait for every spoke to register, by default. Registration takes
# a round trip once the daemons are up; starting Python takes most of this.
REGISTRATION_TIMEOUT = 30.0
_POLL = 0.05


def dmvpn_command() -> list[str]:
    """How to run this installation's `dmvpn` command (argv prefix)."""
    beside = Path(sys.executable).with_name("dmvpn")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("dmvpn")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from dmvpn.cli import main; sys.exit(main())"]


def read_events(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The JSON records of a daemon's log (of one kind), oldest first.

    Lines that are not JSON objects (a traceback) are skipped; a line being
    written (no newline yet) is left for the next read; no log yet: none.
    """
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n") or not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and (kind is None or record.get("kind") == kind):
            out.append(record)
    return out


class Runner:
    """Starts, watches and reads the logs of the `dmvpn run` daemons of one lab."""

    def __init__(self, lab: Lab, dmvpn: Sequence[str] | None = None) -> None:
        self.lab = lab
        self.dmvpn = list(dmvpn) if dmvpn is not None else dmvpn_command()
        # The daemons this process started: their exit is noticed (and reaped) here.
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- paths ----------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        return self.lab.run_dir

    def config_path(self, node: str) -> Path:
        return self.run_dir / f"{node}.yaml"

    def log_path(self, node: str) -> Path:
        return self.run_dir / f"{node}.log"

    def socket_path(self, node: str) -> Path:
        return self.run_dir / f"{node}.sock"

    @property
    def routers(self) -> list[str]:
        return [p.name for p in self.lab.topology.dmvpn_routers]

    # -- starting -------------------------------------------------------------

    def node_config(self, node: str) -> dict[str, Any]:
        """What `node` runs: the topology's config with this lab's socket path."""
        cfg = {
            **self.lab.topology.node_config(node, self.lab.prefix),
            "socket": str(self.socket_path(node)),
        }
        if self.lab.topology.front_door_vrf:
            for itf in cfg["interfaces"]:  # vrf_clouds: one per VRF, one underlay
                itf["tunnel"]["namespace"] = self.lab.underlay_namespace(node)
        return cfg

    def start(self, nodes: Iterable[str] | None = None) -> None:
        """Write each router's config and start its daemon (all routers by default).

        A log from an earlier run of the node is replaced, so that what the log
        says is about this daemon.
        """
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for node in self.routers if nodes is None else nodes:
            if node in self.procs and self.procs[node].poll() is None:
                raise LabError(f"dmvpn already runs on {node} (pid {self.procs[node].pid})")
            config = self.config_path(node)
            config.touch(mode=0o600)  # it may hold the NHRP password
            config.write_text(yaml.safe_dump(self.node_config(node), sort_keys=False))
            self.socket_path(node).unlink(missing_ok=True)
            with self.log_path(node).open("wb") as log:
                self.procs[node] = self.lab.popen(
                    node,
                    [*self.dmvpn, "run", "-c", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )

    # -- watching -------------------------------------------------------------

    def events(self, node: str, kind: str | None = None) -> list[dict[str, Any]]:
        """The JSON records of the node's log (of one kind), oldest first."""
        return read_events(self.log_path(node), kind)

    def log_tail(self, node: str, lines: int = 15) -> str:
        try:
            text = self.log_path(node).read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def running(self) -> dict[str, int]:
        """Router -> PID of its live daemon (from the lab's state, so from any process)."""
        routers = set(self.routers)
        return {
            s["name"]: s["pids"][0] for s in self.lab.status() if s["name"] in routers and s["pids"]
        }

    def check_alive(self) -> None:
        """LabError, with the end of its log, if a daemon this process started has exited."""
        for node, proc in self.procs.items():
            code = proc.poll()
            if code is not None:
                raise LabError(
                    f"dmvpn on {node} exited (status {code}); the end of {self.log_path(node)}:\n"
                    + self.log_tail(node)
                )

    def wait_for(
        self, what: str, check: Callable[[], bool], timeout: float = REGISTRATION_TIMEOUT
    ) -> float:
        """Poll `check` until true; the seconds it took. LabError on timeout or a dead daemon."""
        start = time.monotonic()
        while True:
            if check():
                return time.monotonic() - start
            self.check_alive()
            if time.monotonic() - start > timeout:
                tails = "\n".join(
                    f"--- {node} ({self.log_path(node)}):\n{self.log_tail(node, 5)}"
                    for node in self.routers
                )
                raise LabError(f"timed out after {timeout:g} s waiting for {what}\n{tails}")
            time.sleep(_POLL)

    def registered(self, node: str) -> bool:
        """True once the node has registered with each of its own NHSs (an
        "nhs-up" per NHS: every hub by default, a regional hub's central ones)."""
        hubs = {str(h.tunnel.ip) for h in self.lab.topology.nhs_of(node) if h.tunnel is not None}
        if self.lab.topology.vrf_clouds:  # every hub in every VRF (the same addresses)
            itfs = [f"dmvpn{k}" for k in range(1, VRF_CLOUDS + 1)]
            events = self.events(node, "nhs-up")
            pairs = {(str(e.get("interface")), str(e.get("nhs"))) for e in events}
            return all((i, h) in pairs for i in itfs for h in hubs)
        up = {str(e.get("nhs")) for e in self.events(node, "nhs-up")}
        return hubs <= up

    def wait_registered(self, timeout: float = REGISTRATION_TIMEOUT) -> float:
        """Wait until every dmvpn spoke (and regional hub) has registered with
        its NHSs; the seconds it took (frr spokes: `dmvpn.lab.frrnode.wait_registered`)."""
        topo = self.lab.topology
        spokes = [p.name for p in topo.spokes if p.kind == "dmvpn"]
        spokes += [p.name for p in topo.hubs if p.kind == "dmvpn" and topo.nhs_of(p.name)]
        return self.wait_for(
            "every spoke to register with every hub",
            lambda: all(self.registered(s) for s in spokes),
            timeout,
        )
