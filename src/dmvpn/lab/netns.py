"""Build a Topology in Linux network namespaces with iproute2, and take it down again.

Layout (names for the default prefix "dmvpn-"):

    dmvpn-inet     the underlay: bridge br0, one port "v-<router>" per router
    dmvpn-hub1     nbma0 (veth to br0, underlay address), forwarding on
    dmvpn-spoke1   nbma0 as above, lan0 (veth to host1, LAN .1), forwarding on
    dmvpn-host1    eth0 (LAN .10), default route via spoke1
                   (a dual spoke site: eth0 is a bridge with a port per spoke,
                   the default route via the gateway VRRP moves, .1)

An frr router's namespace holds no address: it bridges nbma0 to the tap
"tapn" (bridge "brn") and, on a spoke, lan0 to "tapl" (bridge "brl"); the
QEMU guest that owns the router's addresses opens those taps
(`dmvpn.lab.frrnode`, `dmvpn.lab.vm`), and `down()` stops it by PID like any registered process.

Nothing is created outside the lab's namespaces: each veth is created inside a
lab namespace with its peer placed straight into the other one, so the host's
own interfaces, addresses and routes are never touched and two labs with
different prefixes never collide.

Every namespace name is PREFIX + node, where prefixes end in "-" and node names
have no "-": a namespace therefore belongs to exactly one prefix, and `down()`
can find a lab's leftovers by listing `ip netns list` even when the state file
is gone (after a crash, or a `kill -9` of the process that built the lab).

The state file (JSON, /run/dmvpn-lab/<prefix>.json by default: /run is a tmpfs,
so it disappears with the namespaces on reboot) records the topology, the
namespaces and the processes registered with `register_pid()`, which `down()`
stops by PID (checking the PID still names the same process) before deleting
the namespaces. Any other process still inside one of the lab's namespaces
(started by hand, or by a builder whose state file was lost) is stopped too,
so that no process keeps a deleted namespace alive.

Beside the state file, the run directory (/run/dmvpn-lab/<prefix>/ by default)
holds what runs in the lab: node configs, JSON logs, management sockets (see
`dmvpn.lab.runner`). `down()` removes it with the namespaces.

Why one module of this length: building and taking down must agree on every
name and record (state file, prefixes, PIDs with start times), so they stay
together; the raw-socket ping at the end is the only other thing here.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import access, nat
from .topology import (
    DEFAULT_PREFIX,
    INET,
    VRF_CLOUDS,
    NodeDescription,
    Topology,
    namespace_name,
    underlay_namespace,
    vrf_namespace,
)

__all__ = [
    "BRIDGE",
    "FRR_LAN_TAP",
    "FRR_NBMA_TAP",
    "LAN_HOST_INTERFACE",
    "LAN_INTERFACE",
    "NBMA_INTERFACE",
    "STATE_DIR",
    "CommandError",
    "Lab",
    "LabError",
    "NodeStatus",
]

STATE_DIR = Path("/run/dmvpn-lab")
BRIDGE = "br0"  # in the inet namespace
NBMA_INTERFACE = "nbma0"  # a router's underlay interface
LAN_INTERFACE = "lan0"  # a spoke's LAN interface
LAN_HOST_INTERFACE = "eth0"  # the host's end of it
# An frr node's namespace bridges each of its links to a tap: the QEMU guest's
# NICs nbma0 (underlay) and lan0 (LAN).
FRR_NBMA_BRIDGE, FRR_NBMA_TAP = "brn", "tapn"
FRR_LAN_BRIDGE, FRR_LAN_TAP = "brl", "tapl"
STATE_VERSION = 1

# Ends in "-" (see the module docstring); short, because it is part of every
# namespace name and of the state file's name.
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,22}-$")
# What follows the prefix in one of our namespaces: a node name or "inet".
# A node, or a router's underlay namespace with front_door_vrf ("-ul"), or
# one of its VRFs with vrf_clouds ("-vrfK").
_NODE_PART = re.compile(r"^[a-z][a-z0-9]*(-ul|-vrf[0-9])?$")
# Command timeout: `ip` answers in milliseconds; a hang is a bug to report.
_COMMAND_TIMEOUT = 30.0


class LabError(Exception):
    """The lab cannot be built, used or taken down; the message says why."""


class CommandError(LabError):
    """An `ip` (or sysctl) command failed; its argv, exit status and stderr are kept."""

    def __init__(
        self, argv: Sequence[str], returncode: int, stderr: str, what: str | None = None
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        why = f" to {what}" if what else ""
        super().__init__(
            f"`{shlex.join(self.argv)}`{why} failed (exit {returncode}): "
            f"{self.stderr or 'no error message'}"
        )


class NodeStatus(NodeDescription):
    """A `describe()` row plus what is running: for `lab status`."""

    up: bool  # the namespace exists
    pids: list[int]  # registered processes still running


class Lab:
    """One lab: a topology, a namespace prefix and a state file."""

    def __init__(
        self,
        topology: Topology | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        state_path: Path | str | None = None,
        ip: str = "ip",
    ) -> None:
        if not _PREFIX.match(prefix):
            raise LabError(
                f"bad lab prefix {prefix!r}: letters, digits, '_', '.', '-', "
                "at most 24 characters, ending in '-'"
            )
        self.topology = topology if topology is not None else Topology.default()
        self.prefix = prefix
        self.state_path = Path(state_path) if state_path else STATE_DIR / f"{prefix}.json"
        self.ip = ip

    @property
    def run_dir(self) -> Path:
        """Where the lab's daemons keep configs, logs and sockets (removed by `down()`).

        The state file's path without ".json" (/run/dmvpn-lab/<prefix>/ by default).
        """
        path = self.state_path
        return path.with_suffix("") if path.suffix == ".json" else path.with_name(path.name + ".d")

    @classmethod
    def attach(
        cls, prefix: str = DEFAULT_PREFIX, state_path: Path | str | None = None, ip: str = "ip"
    ) -> Lab:
        """The lab that is up with this prefix, its topology read back from the state file.

        For the commands that run after `up()` in another process (`lab status`,
        `lab exec`, `lab down`), so they act on the topology actually built.
        """
        lab = cls(prefix=prefix, state_path=state_path, ip=ip)
        state = lab._read_state()
        if state is None:
            raise LabError(f"no lab with prefix {prefix!r} (no state file {lab.state_path})")
        try:
            lab.topology = Topology.model_validate(state["topology"])
        except (KeyError, ValidationError) as exc:
            raise LabError(
                f"{lab.state_path}: unusable topology in the state file: {exc}"
            ) from None
        return lab

    # -- names --------------------------------------------------------------

    def namespace(self, node: str) -> str:
        """The namespace of a node of the topology, or of "inet" (the underlay)."""
        routers = {n.name for n in self.topology.nat_routers}
        routers |= {a.name for a in self.topology.access_routers}
        if node != INET and node not in routers:
            self.topology.plan(node)  # KeyError naming the known nodes
        return namespace_name(self.prefix, node)

    def underlay_namespace(self, node: str) -> str:
        """Where a router's nbma0 is: its own namespace, or with
        `front_door_vrf` the `-ul` one beside it."""
        if self.topology.front_door_vrf:
            self.topology.plan(node)
            return underlay_namespace(self.prefix, node)
        return self.namespace(node)

    @property
    def namespaces(self) -> list[str]:
        """Every namespace `up()` creates, in creation order."""
        nats = [n.name for n in self.topology.nat_routers]
        nats += [a.name for a in self.topology.access_routers]
        own = [self.namespace(n) for n in [INET, *nats, *self.topology.names]]
        if self.topology.front_door_vrf:
            own += [self.underlay_namespace(r.name) for r in self.topology.routers]
        if self.topology.vrf_clouds:
            for k in range(1, VRF_CLOUDS + 1):
                own += [self.vrf_namespace(r.name, k) for r in self.topology.routers]
                if k > 1:
                    own += [self.vrf_namespace(h.name, k) for h in self.topology.hosts]
        return own

    def vrf_namespace(self, node: str, k: int) -> str:
        """With `vrf_clouds`: cloud k's side of a router (its VRF: dmvpnK,
        LAN, routes) or of a host (topology.vrf_namespace)."""
        host = self.topology.plan(node).role == "host"
        return vrf_namespace(self.prefix, node, k, host=host)

    def existing_namespaces(self) -> list[str]:
        """The namespaces of this prefix that exist now (whatever topology made them)."""
        return [ns for ns in self._list_netns() if self._ours(ns)]

    def exists(self) -> bool:
        """True if any trace of this lab is left: a namespace or the state file."""
        return bool(self.existing_namespaces()) or self.state_path.exists()

    # -- up -----------------------------------------------------------------

    def up(self) -> None:
        """Create the namespaces, bridge, veths, addresses and routes.

        Refuses (LabError) when anything of a lab with this prefix exists, so
        it never half-overwrites a running lab; if building fails part way,
        what was created is taken down again before the error propagates.
        """
        if os.geteuid() != 0:
            raise LabError("building the lab needs root (network namespaces, veth, bridge)")
        leftovers = self.existing_namespaces()
        if leftovers:
            raise LabError(
                f"a lab with prefix {self.prefix!r} already exists "
                f"(namespaces: {', '.join(leftovers)}); take it down first"
            )
        self._create_state()  # exclusive: also refuses a lab being built right now
        try:
            self._build()
        except BaseException:
            with contextlib.suppress(Exception):
                self.down()
            raise

    def _build(self) -> None:
        topo = self.topology
        inet = self.namespace(INET)
        for ns in self.namespaces:
            self._ip("netns", "add", ns)
            self._ip("-n", ns, "link", "set", "lo", "up")
        self._ip("-n", inet, "link", "add", BRIDGE, "type", "bridge")
        if topo.underlay == "ipv6":
            # Neighbour Discovery between the routers: the bridge floods
            # multicast (no MLD querier in the lab for snooping to learn from).
            self._ip("-n", inet, "link", "set", BRIDGE, "type", "bridge", "mcast_snooping", "0")
        self._ip("-n", inet, "link", "set", BRIDGE, "up")
        nat.build(self)
        access.build(self)
        for router in topo.routers:
            ns = self.underlay_namespace(router.name)  # with front_door_vrf: -ul
            port = f"v-{router.name}"
            # A spoke behind a NAT router hangs off its inside bridge instead.
            # A spoke with an access router (dmvpn.lab.access) hangs off its bridge.
            via = router.nat or router.access
            upstream = self.namespace(via) if via else inet
            self._ip(
                "-n",
                upstream,
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                NBMA_INTERFACE,
                "netns",
                ns,
            )
            self._ip("-n", upstream, "link", "set", port, "master", BRIDGE, "up")
            if router.kind != "dmvpn":
                # A guest (frr, vm) owns the addresses: the namespace only bridges.
                self._bridge_tap(ns, FRR_NBMA_BRIDGE, NBMA_INTERFACE, FRR_NBMA_TAP)
                continue
            if router.nbma6 is not None:
                # IPv6 underlay only; nodad: the daemon binds to it at once.
                self._ip("-n", ns, "addr", "add", str(router.nbma6), "dev", NBMA_INTERFACE, "nodad")
            else:
                self._ip("-n", ns, "addr", "add", str(router.nbma), "dev", NBMA_INTERFACE)
            self._ip("-n", ns, "link", "set", NBMA_INTERFACE, "up")
            if router.nat:
                nat.route_spoke(self, router)
            if router.access:
                access.finish(self, router)
            ns = self.namespace(router.name)  # forwarding: between tunnel and LAN
            vrfs = [self.vrf_namespace(router.name, k) for k in range(1, VRF_CLOUDS + 1)]
            for where in vrfs if topo.vrf_clouds else [ns]:
                self._run(
                    [self.ip, "netns", "exec", where, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                    what="enable IPv4 forwarding",
                )
            if router.tunnel6 is not None:
                self._run(
                    [
                        self.ip,
                        "netns",
                        "exec",
                        ns,
                        "sysctl",
                        "-qw",
                        "net.ipv6.conf.all.forwarding=1",
                    ],
                    what="enable IPv6 forwarding",
                )
        for spoke in topo.spokes:
            assert spoke.lan is not None and spoke.peer is not None
            host = topo.plan(spoke.peer)
            assert host.lan is not None
            if topo.vrf_clouds:  # the same LAN in every VRF
                for k in range(1, VRF_CLOUDS + 1):
                    self._lan(
                        self.vrf_namespace(spoke.name, k),
                        self.vrf_namespace(host.name, k),
                        str(spoke.lan),
                        str(host.lan),
                    )
                continue
            ns, host_ns = self.namespace(spoke.name), self.namespace(host.name)
            if spoke.site is not None:
                self._site_port(spoke.name, host.name)
                continue
            self._ip(
                "-n",
                ns,
                "link",
                "add",
                LAN_INTERFACE,
                "type",
                "veth",
                "peer",
                "name",
                LAN_HOST_INTERFACE,
                "netns",
                host_ns,
            )
            if spoke.kind != "dmvpn":
                self._bridge_tap(ns, FRR_LAN_BRIDGE, LAN_INTERFACE, FRR_LAN_TAP)
            else:
                self._ip("-n", ns, "addr", "add", str(spoke.lan), "dev", LAN_INTERFACE)
                self._ip("-n", ns, "link", "set", LAN_INTERFACE, "up")
            self._ip("-n", host_ns, "addr", "add", str(host.lan), "dev", LAN_HOST_INTERFACE)
            self._ip("-n", host_ns, "link", "set", LAN_HOST_INTERFACE, "up")
            self._ip("-n", host_ns, "route", "add", "default", "via", str(spoke.lan.ip))
            if spoke.lan6 is not None and host.lan6 is not None and spoke.kind == "dmvpn":
                # Dual-stack lab (topology.ipv6); nodad: usable at once.
                self._ip("-n", ns, "addr", "add", str(spoke.lan6), "dev", LAN_INTERFACE, "nodad")
                self._ip(
                    "-n", host_ns, "addr", "add", str(host.lan6), "dev", LAN_HOST_INTERFACE, "nodad"
                )
                self._ip("-n", host_ns, "-6", "route", "add", "default", "via", str(spoke.lan6.ip))

    def _lan(self, ns: str, host_ns: str, spoke_lan: str, host_lan: str) -> None:
        """A spoke's IPv4 LAN to its host (vrf_clouds: once per VRF)."""
        self._ip(
            "-n", ns, "link", "add", LAN_INTERFACE, "type", "veth",
            "peer", "name", LAN_HOST_INTERFACE, "netns", host_ns,
        )  # fmt: skip
        self._ip("-n", ns, "addr", "add", spoke_lan, "dev", LAN_INTERFACE)
        self._ip("-n", ns, "link", "set", LAN_INTERFACE, "up")
        self._ip("-n", host_ns, "addr", "add", host_lan, "dev", LAN_HOST_INTERFACE)
        self._ip("-n", host_ns, "link", "set", LAN_HOST_INTERFACE, "up")
        gateway = spoke_lan.split("/")[0]
        self._ip("-n", host_ns, "route", "add", "default", "via", gateway)

    def _site_port(self, spoke: str, host: str) -> None:
        """Dual spoke: the site's host holds the LAN, a bridge named eth0 (its
        address on it), one port "l-<spoke>" per spoke; its default route
        goes to the gateway address VRRP moves between the spokes."""
        topo = self.topology
        ns, host_ns = self.namespace(spoke), self.namespace(host)
        lan, host_lan, gateway = topo.plan(spoke).lan, topo.plan(host).lan, topo.site_gateway(host)
        assert lan is not None and host_lan is not None and gateway is not None
        if LAN_HOST_INTERFACE not in self._ip("-n", host_ns, "-br", "link"):
            self._ip("-n", host_ns, "link", "add", LAN_HOST_INTERFACE, "type", "bridge")
            self._ip("-n", host_ns, "addr", "add", str(host_lan), "dev", LAN_HOST_INTERFACE)
            self._ip("-n", host_ns, "link", "set", LAN_HOST_INTERFACE, "up")
            self._ip("-n", host_ns, "route", "add", "default", "via", str(gateway))
        port = f"l-{spoke}"
        self._ip(
            "-n", ns, "link", "add", LAN_INTERFACE, "type", "veth", "peer", "name", port,
            "netns", host_ns,
        )  # fmt: skip
        self._ip("-n", host_ns, "link", "set", port, "master", LAN_HOST_INTERFACE, "up")
        self._ip("-n", ns, "addr", "add", str(lan), "dev", LAN_INTERFACE)
        self._ip("-n", ns, "link", "set", LAN_INTERFACE, "up")

    def _bridge_tap(self, ns: str, bridge: str, port: str, tap: str) -> None:
        """An frr node's namespace: `port` and a tap for the guest on one bridge.

        The tap is made inside the namespace because QEMU opens it by name in
        its own namespace (and silently makes a new, unattached one if absent).
        """
        self._ip("-n", ns, "link", "add", bridge, "type", "bridge")
        self._ip("-n", ns, "tuntap", "add", "dev", tap, "mode", "tap")
        for link in (port, tap):
            self._ip("-n", ns, "link", "set", link, "master", bridge, "up")
        self._ip("-n", ns, "link", "set", bridge, "up")

    # -- down ---------------------------------------------------------------

    def down(self, timeout: float = 3.0) -> list[str]:
        """Stop registered processes and delete every namespace of this prefix.

        Works from the state file, and from `ip netns list` when the state file
        is missing or damaged. Anything already gone is fine; it raises
        (LabError) only if a namespace that still exists cannot be deleted, and
        then keeps the state file so that a later `down()` can finish. Returns
        the namespaces it deleted.
        """
        state = self._read_state()
        if state is not None:
            _stop_processes(_registered(state), timeout)
        recorded = [ns for ns in (state or {}).get("namespaces", []) if isinstance(ns, str)]
        existing = self.existing_namespaces()
        targets = list(dict.fromkeys([*recorded, *existing]))
        # Whatever else still runs inside: a process keeps a deleted namespace
        # (and its interfaces) alive, invisible to `ip netns list`.
        stray = [pid for ns in existing for pid in self._netns_pids(ns)]
        _stop_processes([("", pid, start) for pid in stray if (start := _start_time(pid))], timeout)
        removed: list[str] = []
        failures: list[str] = []
        for ns in targets:
            if not self._ours(ns):
                continue  # a hand-edited state file must not reach other labs
            try:
                self._ip("netns", "delete", ns)
                removed.append(ns)
            except CommandError as exc:
                if ns in self._list_netns():
                    failures.append(str(exc))
        if failures:
            raise LabError("could not delete: " + "; ".join(failures))
        shutil.rmtree(self.run_dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()
        return removed

    # -- running things inside ----------------------------------------------

    def exec(
        self, node: str, argv: Sequence[str], **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """`subprocess.run(argv, **kwargs)` inside the node's namespace (`ip netns exec`)."""
        return subprocess.run([self.ip, "netns", "exec", self.namespace(node), *argv], **kwargs)

    def popen(self, node: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process inside the node's namespace and register it for `down()`.

        `ip netns exec` execs the command in place (no fork), so the Popen's
        PID is the command's own.
        """
        proc = subprocess.Popen([self.ip, "netns", "exec", self.namespace(node), *argv], **kwargs)
        try:
            self.register_pid(node, proc.pid)
        except LabError:
            proc.kill()
            proc.wait()
            raise
        return proc

    def register_pid(self, node: str, pid: int) -> None:
        """Record a process the lab started, so that `down()` stops it.

        Its start time is recorded too: `down()` signals the PID only if it
        still names that process, never a newcomer that reused the number.
        """
        self.namespace(node)  # the node must exist
        state = self._read_state()
        if state is None:
            raise LabError(f"lab {self.prefix!r} is not up (no state file {self.state_path})")
        start = _start_time(pid)
        if start is None:
            raise LabError(f"no process {pid} to register for {node}")
        state.setdefault("pids", []).append({"node": node, "pid": pid, "start": start})
        self._write_state(state)

    def ping(self, node: str, address: IPv4Address | str, timeout: float = 2.0) -> bool:
        """True if `address` answers an ICMP echo sent from inside `node`.

        Done with this Python's raw socket rather than ping(8), which a minimal
        system may lack: the lab then needs only iproute2 and procps.
        """
        res = self.exec(
            node,
            [sys.executable, "-c", _PING, str(IPv4Address(str(address))), str(timeout)],
            capture_output=True,
            text=True,
            timeout=timeout + 10,
        )
        if res.returncode not in (0, 1):
            raise LabError(f"ping from {node} failed: {res.stderr.strip()}")
        return res.returncode == 0

    def status(self) -> list[NodeStatus]:
        """`describe()` rows with whether each namespace exists and its live processes."""
        existing = set(self.existing_namespaces())
        state = self._read_state() or {}
        live: dict[str, list[int]] = {}
        for node, pid, start in _registered(state):
            if _start_time(pid) == start:
                live.setdefault(node, []).append(pid)
        return [
            NodeStatus(**row, up=row["namespace"] in existing, pids=live.get(row["name"], []))
            for row in self.topology.describe(self.prefix)
        ]

    # -- helpers ------------------------------------------------------------

    def _ours(self, ns: str) -> bool:
        return ns.startswith(self.prefix) and bool(_NODE_PART.match(ns[len(self.prefix) :]))

    def _netns_pids(self, ns: str) -> list[int]:
        """The processes inside a namespace (none if it went away meanwhile)."""
        try:
            out = self._ip("netns", "pids", ns)
        except CommandError:
            return []
        return [int(word) for word in out.split() if word.isdigit() and int(word) != os.getpid()]

    def _list_netns(self) -> list[str]:
        # Lines are "NAME" or "NAME (id: N)".
        out = self._run([self.ip, "netns", "list"], what="list network namespaces")
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def _ip(self, *args: str) -> str:
        return self._run([self.ip, *args])

    def _run(self, argv: list[str], what: str | None = None) -> str:
        try:
            res = subprocess.run(
                argv, check=True, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT
            )
        except FileNotFoundError:
            raise LabError(f"{argv[0]!r} not found (the lab needs iproute2)") from None
        except subprocess.TimeoutExpired:
            raise LabError(f"`{shlex.join(argv)}` did not finish in {_COMMAND_TIMEOUT}s") from None
        except subprocess.CalledProcessError as exc:
            raise CommandError(argv, exc.returncode, exc.stderr or "", what) from None
        return res.stdout

    def _state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "prefix": self.prefix,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "builder_pid": os.getpid(),
            "namespaces": self.namespaces,
            "topology": self.topology.model_dump(mode="json"),
            "pids": [],
        }

    def _create_state(self) -> None:
        # Written before anything is created, listing everything that will be:
        # a crash part way leaves a record that down() can act on.
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.state_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise LabError(
                f"a lab with prefix {self.prefix!r} already exists or is being built "
                f"(state file {self.state_path}); take it down first"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(self._state(), f, indent=2)

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_path)

    def _read_state(self) -> dict[str, Any] | None:
        """The state file, or None when it is missing or unreadable (down() then lists)."""
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


# -- processes ---------------------------------------------------------------


def _registered(state: dict[str, Any]) -> list[tuple[str, int, int]]:
    out = []
    for entry in state.get("pids", []):
        try:
            out.append((str(entry["node"]), int(entry["pid"]), int(entry["start"])))
        except (KeyError, TypeError, ValueError):
            continue  # a damaged entry: never guess a PID
    return out


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), or None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        # Dead. Not reaped here: a Popen that started it keeps its exit status.
        return None
    return int(fields[19])  # field 22, starttime


def _stop_processes(procs: list[tuple[str, int, int]], timeout: float) -> None:
    """SIGTERM, then SIGKILL after `timeout`, by PID and only if still the same process."""
    alive = [(pid, start) for _, pid, start in procs if _start_time(pid) == start]
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
        for pid, _ in alive:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise LabError(f"cannot signal process {pid}: {exc.strerror}") from None
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(0.02)
            alive = [(pid, start) for pid, start in alive if _start_time(pid) == start]
        if not alive:
            return


# One ICMP echo every half second until a reply or the timeout; exit 0 on a
# reply, 1 on none. Runs inside the namespace, as root (raw socket).
_PING = r"""
import os, select, socket, struct, sys, time
dst, timeout = sys.argv[1], float(sys.argv[2])
def csum(b):
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF
ident, payload = os.getpid() & 0xFFFF, b"dmvpn-lab-ping!!"
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
end, seq, next_send = time.monotonic() + timeout, 0, 0.0
while (now := time.monotonic()) < end:
    if now >= next_send:
        seq += 1
        hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
        hdr = struct.pack("!BBHHH", 8, 0, csum(hdr + payload), ident, seq)
        try:
            sock.sendto(hdr + payload, (dst, 0))
        except OSError:
            pass  # no route yet / ARP failed: try again
        next_send = now + 0.5
    if not select.select([sock], [], [], max(0.0, min(end, next_send) - now))[0]:
        continue
    data, (src, _) = sock.recvfrom(65535)
    ihl = (data[0] & 15) * 4
    kind, _, _, rid, _ = struct.unpack("!BBHHH", data[ihl : ihl + 8])
    if kind == 0 and rid == ident and src == dst:
        sys.exit(0)
sys.exit(1)
"""
