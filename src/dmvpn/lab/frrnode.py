"""The frr nodes of a lab: FRR zebra + nhrpd on a real kernel mGRE, in a QEMU guest.

Each frr router is one guest (`dmvpn.lab.vm`), booted inside the router's
namespace, where `Lab.up` bridged its links to the taps the guest's NICs
open. Its files sit in its directory in the lab's run directory, which
`Lab.down` removes:

    <node>.frr/setup.sh, zebra.conf, nhrpd.conf   written here (dmvpn.lab.frrconf)
    <node>.frr/boot.sh       set-up, then zebra and nhrpd (ready once nhrpd listens)
    <node>.frr/kernel.log    the guest's serial console (boot messages, panics)
    <node>.frr/console.log   the guest init's output
    <node>.frr/logs/         FRR's logs (zebra.log, nhrpd.log), written by FRR itself

The guest's root is the host's / (Debian 12, FRR 8.4) by default, or a
directory holding another Debian (the topology's `frr_root`, e.g. one made by
`dmvpn.lab.frrroot` with FRR 10.3), read-only under a tmpfs overlay.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterable
from pathlib import Path

from .frrconf import (
    FRR_LOGS,
    GUEST_LAN,
    GUEST_NBMA,
    guest_setup,
    nhrpd_conf,
    vtysh_command,
    zebra_conf,
)
from .guestkernel import GuestKernel, ensure_kernel
from .netns import FRR_LAN_TAP, FRR_NBMA_TAP, Lab, LabError
from .runner import REGISTRATION_TIMEOUT, Runner
from .vm import BOOT_TIMEOUT, GuestResult, GuestSpec, Nic, VirtualMachine

__all__ = ["BOOT_TIMEOUT", "FrrNodes", "GuestResult", "nhs_in_cache", "wait_registered"]

# nhrpd guests use 60-80 MiB; the rest is page cache for the 9p root.
_MEMORY_MB = 256

# Run by the guest once its root is up (dmvpn.lab.vm); "ready" once nhrpd listens.
_BOOT = f"""\
modprobe -a ip_gre
. /run/out/setup.sh
mkdir -p /run/frr {FRR_LOGS}
chmod 1777 {FRR_LOGS}
cp /run/out/zebra.conf /run/out/nhrpd.conf /run/frr/
chown -R frr:frr /run/frr
/usr/lib/frr/zebra -d -f /run/frr/zebra.conf -i /run/frr/zebra.pid -z /run/frr/zserv.api \\
    --vty_socket /run/frr -A 127.0.0.1
# nhrpd retries zebra only after 10 s: start it once zserv listens.
for i in $(seq 100); do [ -S /run/frr/zserv.api ] && break; sleep 0.1; done
# Also kept as a script, so the host can restart nhrpd (FrrNodes.start_nhrpd).
cat >/run/frr/start-nhrpd <<'EOS'
rm -f /run/frr/nhrpd.vty
/usr/lib/frr/nhrpd -d -f /run/frr/nhrpd.conf -i /run/frr/nhrpd.pid -z /run/frr/zserv.api \\
    --vty_socket /run/frr -A 127.0.0.1
for i in $(seq 100); do [ -S /run/frr/nhrpd.vty ] && break; sleep 0.1; done
test -S /run/frr/nhrpd.vty
EOS
sh /run/frr/start-nhrpd
echo "=== nhrpd $(cat /run/frr/nhrpd.pid) started"
"""


class FrrNodes:
    """Boots, talks to and stops the frr routers of one lab."""

    def __init__(
        self, lab: Lab, root: Path | str | None = None, kernel: GuestKernel | None = None
    ) -> None:
        self.lab = lab
        self.root = Path(root if root is not None else lab.topology.frr_root)
        self._kernel = kernel
        self.vms: dict[str, VirtualMachine] = {}

    @property
    def nodes(self) -> list[str]:
        return [p.name for p in self.lab.topology.frr_routers]

    def dir(self, node: str) -> Path:
        return self.lab.run_dir / f"{node}.frr"

    def vm(self, node: str) -> VirtualMachine:
        """The guest of an frr node (also for one started by another process)."""
        if node not in self.nodes:
            raise LabError(f"{node} is not an frr node")
        if node not in self.vms:
            self.vms[node] = VirtualMachine(self.lab, self.spec(node), self._kernel)
        return self.vms[node]

    def spec(self, node: str) -> GuestSpec:
        nics = [Nic(FRR_NBMA_TAP, GUEST_NBMA)]
        if self.lab.topology.plan(node).lan is not None:
            nics.append(Nic(FRR_LAN_TAP, GUEST_LAN))
        return GuestSpec(
            node=node,
            work=self.dir(node),
            root=self.root,
            nics=tuple(nics),
            memory_mb=_MEMORY_MB,
            boot=_BOOT,
        )

    # -- starting -------------------------------------------------------------

    def start(self, nodes: Iterable[str] | None = None) -> None:
        """Write each guest's files and boot it (all frr routers by default); no wait."""
        todo = list(self.nodes if nodes is None else nodes)
        if todo and self._kernel is None:
            self._kernel = ensure_kernel()  # once, before the guests start at once
        topo = self.lab.topology
        for node in todo:
            work = self.dir(node)
            work.mkdir(parents=True, exist_ok=True)
            (work / "setup.sh").write_text(guest_setup(topo, node))
            (work / "zebra.conf").write_text(zebra_conf(node))
            conf = work / "nhrpd.conf"
            conf.touch(mode=0o600)  # it may hold the NHRP password
            conf.write_text(nhrpd_conf(topo, node))
            self.vm(node).start()

    def ready(self, node: str) -> bool:
        return self.vm(node).ready()

    def wait_ready(
        self, nodes: Iterable[str] | None = None, timeout: float = BOOT_TIMEOUT
    ) -> float:
        """Wait until nhrpd runs in every guest; the seconds it took. LabError with
        the guest's console if one dies or the time runs out."""
        todo = list(self.nodes if nodes is None else nodes)
        start = time.monotonic()
        while todo:
            for node in list(todo):
                if self.vm(node).check_boot():
                    todo.remove(node)
                    problem = self.config_errors(node)
                    if problem:
                        raise LabError(f"nhrpd on {node} refused its configuration: {problem}")
            if todo and time.monotonic() - start > timeout:
                tails = "\n".join(self.tail(n) for n in todo)
                raise LabError(f"timed out after {timeout:g} s booting {', '.join(todo)}\n{tails}")
            time.sleep(0.1)
        return time.monotonic() - start

    def config_errors(self, node: str) -> str:
        """Lines nhrpd did not understand in its config ("" if none).

        nhrpd only logs unknown lines and runs on without them: FRR 8.4 has no
        `ip nhrp authentication`, and would silently run unauthenticated.
        """
        res = self.run(node, f"grep -ihE 'unknown command|error occurred' {FRR_LOGS}/*.log || true")
        return " | ".join(line.strip() for line in res.output.splitlines() if line.strip())

    def tail(self, node: str, lines: int = 20) -> str:
        return self.vm(node).tail(lines)

    # -- talking to a guest ---------------------------------------------------

    def run(self, node: str, script: str, timeout: float = 30.0) -> GuestResult:
        """Run a shell script in the guest (as root); its exit status and output."""
        return self.vm(node).run(script, timeout)

    def vtysh(self, node: str, *commands: str, timeout: float = 30.0) -> str:
        """nhrpd's answer to vtysh commands (LabError if vtysh fails)."""
        argv = ["vtysh", "--vty_socket", "/run/frr"]
        for c in commands:
            argv += ["-c", c]
        res = self.run(node, shlex.join(argv), timeout)
        if res.returncode != 0:
            raise LabError(f"vtysh on {node} failed ({res.returncode}): {res.output.strip()}")
        return res.output

    def show(self, node: str, args: list[str] | tuple[str, ...]) -> str:
        """`dmvpn show ARGS` as nhrpd's matching vtysh command (ValueError if none)."""
        return self.vtysh(node, vtysh_command(args))

    def stop_nhrpd(self, node: str) -> None:
        """Kill nhrpd without a word (SIGKILL): the peer simply vanishes."""
        res = self.run(node, "kill -9 $(cat /run/frr/nhrpd.pid) && rm -f /run/frr/nhrpd.vty")
        if res.returncode != 0:
            raise LabError(f"could not stop nhrpd on {node}: {res.output.strip()}")

    def start_nhrpd(self, node: str) -> None:
        """Start nhrpd again (after `stop_nhrpd`), with the same configuration."""
        res = self.run(node, "sh /run/frr/start-nhrpd")
        if res.returncode != 0:
            raise LabError(f"could not start nhrpd on {node}: {res.output.strip()}")

    def registered(self, spoke: str) -> bool:
        """True once the frr spoke's registration with every hub was answered."""
        hubs = {str(h.tunnel.ip) for h in self.lab.topology.hubs if h.tunnel is not None}
        return hubs <= nhs_in_cache(self.vtysh(spoke, "show ip nhrp cache"))

    # -- stopping -------------------------------------------------------------

    def stop(self, node: str, timeout: float = 15.0) -> None:
        """Ask the guest to power off; kill QEMU by PID if it does not."""
        self.vm(node).stop(timeout)

    def stop_all(self) -> None:
        for node in self.nodes:
            self.stop(node)


def nhs_in_cache(show_cache: str) -> set[str]:
    """The NHS protocol addresses in nhrpd's `show ip nhrp cache` text.

    nhrpd 8.4's `show ip nhrp nhs` has no state column: an NHS is up (its
    registration answered) once the cache holds an entry of type `nhs` for it.
    """
    up = set()
    for line in show_cache.splitlines():
        words = line.split()
        if len(words) >= 3 and words[1] == "nhs":
            up.add(words[2])
    return up


def wait_registered(runner: Runner, frr: FrrNodes, timeout: float = REGISTRATION_TIMEOUT) -> float:
    """Wait until every spoke, of either kind, has registered with every hub."""
    topo = runner.lab.topology
    native = [p.name for p in topo.spokes if p.kind == "dmvpn"]
    # Regional hubs (hierarchical hubs) register with their central hub.
    native += [p.name for p in topo.hubs if p.kind == "dmvpn" and topo.nhs_of(p.name)]
    waiting = {p.name for p in topo.spokes if p.kind == "frr"}

    def check() -> bool:
        for spoke in sorted(waiting):
            if frr.registered(spoke):  # a vtysh round trip: one at a time
                waiting.discard(spoke)
            break
        return not waiting and all(runner.registered(s) for s in native)

    return runner.wait_for("every spoke to register with every hub", check, timeout)
