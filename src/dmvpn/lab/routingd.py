"""FRR routing daemons beside dmvpn in a lab router's namespace (`routing:`).

Per dmvpn router, in the lab's run directory (so `Lab.down()` removes it):

    <node>.routing/zebra.conf, ospfd.conf, ...   the configs (dmvpn.lab.routingconf)
    <node>.routing/*.vty, zserv.api, *.pid       the daemons' sockets and PID files
    <node>.routing/logs/                         FRR's own logs; <daemon>.out: stdout/stderr

Each daemon runs in the foreground (no -d), started with `Lab.popen`, so it
is registered by PID and `lab down` stops it like `dmvpn run`. Every path is
given on the command line (-f, -i, -z, --vty_socket; -P 0: no vty TCP port),
so the routers' FRRs never meet each other or the host's FRR at
/var/run/frr. FRR drops to its user `frr` after start: the directory is
theirs, and the run directory is made traversable (0711) for it (the files
in it stay 0600).

    vtysh --vty_socket /run/dmvpn-lab/<prefix>/<node>.routing -c 'show ip route'

or `RoutingDaemons.vtysh(node, command)`.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from pathlib import Path

from .netns import Lab, LabError
from .routingconf import EIGRP_INTERFACE, TUNNEL, daemon_configs, daemons_for

__all__ = ["FRR_DIR", "RoutingDaemons"]

FRR_DIR = Path("/usr/lib/frr")
_START_TIMEOUT = 30.0


class RoutingDaemons:
    """Starts the routing daemons of a lab's dmvpn routers and talks to them."""

    def __init__(self, lab: Lab, frr_dir: Path = FRR_DIR) -> None:
        self.lab = lab
        self.frr_dir = frr_dir

    @property
    def routers(self) -> list[str]:
        return [p.name for p in self.lab.topology.dmvpn_routers]

    def directory(self, node: str) -> Path:
        return self.lab.run_dir / f"{node}.routing"

    def start(self, nodes: list[str] | None = None) -> None:
        """Write each router's configs and start zebra, then the protocol's
        daemon (and bfdd); return once every one answers on its vty socket."""
        daemons = daemons_for(self.lab.topology.routing)
        if not daemons:
            return
        missing = [d for d in daemons if not (self.frr_dir / d).exists()]
        if missing:
            raise LabError(
                f"routing: {', '.join(missing)} not found in {self.frr_dir} (Debian's frr package)"
            )
        try:
            frr = pwd.getpwnam("frr")
        except KeyError:
            raise LabError("routing: no user 'frr' (install Debian's frr package)") from None
        run_dir = self.lab.run_dir
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        run_dir.chmod(0o711)  # FRR, as user frr, reaches its own directory inside
        closed = [d for d in run_dir.parents if not d.stat().st_mode & 0o001]
        if closed:
            raise LabError(
                f"routing: FRR runs as user frr and cannot reach {run_dir} ({closed[0]} is "
                "closed to others): keep the lab's state file in a directory others may "
                "traverse (the default, /run/dmvpn-lab)"
            )
        for node in self.routers if nodes is None else nodes:
            work = self.directory(node)
            (work / "logs").mkdir(parents=True, exist_ok=True)
            for path in (work, work / "logs"):
                os.chown(path, frr.pw_uid, frr.pw_gid)
            configs = daemon_configs(self.lab.topology, node, str(work / "logs"))
            for daemon in daemons:
                conf = work / f"{daemon}.conf"
                conf.write_text(configs[daemon])
                os.chown(conf, frr.pw_uid, frr.pw_gid)
                (work / f"{daemon}.vty").unlink(missing_ok=True)
                argv = [
                    str(self.frr_dir / daemon),
                    "-f",
                    str(conf),
                    "-i",
                    str(work / f"{daemon}.pid"),
                    "-z",
                    str(work / "zserv.api"),
                    "--vty_socket",
                    str(work),
                    "-P",
                    "0",
                ]
                with (work / f"{daemon}.out").open("wb") as out:
                    proc = self.lab.popen(
                        node,
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                # The others connect to zebra's socket: wait for each in turn.
                self._wait(work / f"{daemon}.vty", node, daemon, proc)
            if "eigrpd" in daemons:
                self._eigrp_timers(node)

    def _eigrp_timers(self, node: str) -> None:
        """The tunnel's EIGRP timers, refused in eigrpd's startup config
        (routingconf.EIGRP_INTERFACE): applied once eigrpd has the interface."""
        end = time.monotonic() + _START_TIMEOUT
        while TUNNEL not in self.vtysh(node, "show ip eigrp interface"):
            if time.monotonic() > end:
                raise LabError(f"eigrpd on {node} did not take up {TUNNEL}")
            time.sleep(0.05)
        self.vtysh(node, "configure terminal", f"interface {TUNNEL}", *EIGRP_INTERFACE)

    def _wait(self, sock: Path, node: str, daemon: str, proc: subprocess.Popen[bytes]) -> None:
        end = time.monotonic() + _START_TIMEOUT
        while not sock.exists():
            if time.monotonic() > end or proc.poll() is not None:
                out = sock.with_suffix(".out")
                tail = out.read_text(errors="replace")[-800:] if out.exists() else ""
                raise LabError(f"{daemon} on {node} did not start: {tail}")
            time.sleep(0.05)

    def vtysh(self, node: str, *commands: str, timeout: float = 30.0) -> str:
        """vtysh against the node's daemons; LabError if it fails."""
        argv = ["vtysh", "--vty_socket", str(self.directory(node))]
        for command in commands:
            argv += ["-c", command]
        res = self.lab.exec(node, argv, capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise LabError(f"vtysh on {node} failed ({res.returncode}): {res.stdout}{res.stderr}")
        return str(res.stdout)
