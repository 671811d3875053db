"""Our own daemon inside QEMU guests: dmvpn on a real kernel (issue 15).

The host kernel may lack ip_gre (this lab's does); a guest of the VM
machinery (`dmvpn.lab.vm`) has Debian's kernel, which has it. `DmvpnGuests`
boots one guest per router it is given (by default the topology's guests:
`kind: vm`, which `dmvpn lab up` boots here, and `kind: frr`, whose wiring
to taps is the same) and runs
`dmvpn run` in it with the topology's own node config, with `dataplane:` as
asked, else the node's (topology), else `kernel`. The guest's root is the
host's / read-only, so the daemon is this very installation (the interpreter
and package the tests run with).

Files, in the lab's run directory (removed by `Lab.down`):

    <node>.vm/node.yaml     the daemon's config
    <node>.vm/dmvpn.log     its structured log (the guest writes it on the share)
    <node>.vm/boot.sh       addresses, ip_forward, then the daemon; ready once it runs

Under emulation the daemon is slow to start: importing it took 25 s in an
idle guest (aiohttp, pyroute2, pydantic; 19 s of it CPU), up to 90 s with
two guests booting on a loaded 2-core host; the guest boots in 6-15 s.
Show commands go to the daemon's API socket in the guest through curl
(another Python would cost as much again; curl tens of milliseconds).
"""

from __future__ import annotations

import compileall
import json
import shlex
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

import dmvpn

from .frrconf import GUEST_LAN, GUEST_NBMA
from .guestkernel import GuestKernel, ensure_kernel
from .netns import FRR_LAN_TAP, FRR_NBMA_TAP, Lab, LabError
from .runner import dmvpn_command, read_events
from .topology import VM_DATAPLANE
from .vm import BOOT_TIMEOUT, GuestResult, GuestSpec, Nic, VirtualMachine

__all__ = ["GUEST_SOCKET", "DmvpnGuests"]

GUEST_SOCKET = "/run/dmvpn.sock"
_MEMORY_MB = 384
# Python starts slowly under emulation, and slower with several guests booting.
_DAEMON_TIMEOUT = 200
# The guest mounts a tmpfs over these (guest/initramfs-init.sh), hiding the
# host's files there: an installation under one (a CI clone in /tmp) is
# shared into the guest and bind-mounted back at its own path.
_MASKED = (Path("/tmp"), Path("/run"), Path("/var/tmp"))


def hidden_installation(prefix: Path, package: Path) -> list[Path]:
    """The directories of this installation (the venv at `prefix`, the
    directory holding the `dmvpn` package) that the guest's tmpfs mounts
    would hide; outermost only."""
    found: list[Path] = []
    for path in sorted({prefix.resolve(), package.resolve()}, key=lambda p: (len(p.parts), str(p))):
        if any(path.is_relative_to(m) for m in _MASKED) and not any(
            path.is_relative_to(f) for f in found
        ):
            found.append(path)
    return found


def compile_package() -> None:
    """Write this installation's missing or stale .pyc files, on the host.

    A guest sees the host's / through 9p under a tmpfs overlay: it reuses
    the host's __pycache__ where it is current, but compiles any module the
    host never imported (the kernel plane, say) itself, under emulation, at
    every boot of every guest. On the host this costs well under a second.
    """
    compileall.compile_dir(Path(dmvpn.__file__).parent, quiet=2)


class DmvpnGuests:
    """Boots, talks to and stops the dmvpn guests of one lab."""

    def __init__(
        self,
        lab: Lab,
        nodes: Iterable[str] | None = None,
        dataplane: str | None = None,
        kernel: GuestKernel | None = None,
    ) -> None:
        self.lab = lab
        guests = [p.name for p in lab.topology.routers if p.kind != "dmvpn"]
        self.nodes = list(nodes) if nodes is not None else guests
        self.dataplane = dataplane
        self._kernel = kernel
        self.vms: dict[str, VirtualMachine] = {}
        self.dmvpn = dmvpn_command()
        import dmvpn  # where this installation's package lives

        self.hidden = hidden_installation(Path(sys.prefix), Path(dmvpn.__file__).parent.parent)

    def dir(self, node: str) -> Path:
        return self.lab.run_dir / f"{node}.vm"

    def config(self, node: str) -> dict[str, Any]:
        cfg = {**self.lab.topology.node_config(node), "socket": GUEST_SOCKET}
        for itf in cfg["interfaces"]:
            # Ours if given, else the topology's (a vm node's), else the kernel's.
            itf["dataplane"] = self.dataplane or itf.get("dataplane") or VM_DATAPLANE
        return cfg

    def boot_script(self, node: str) -> str:
        plan = self.lab.topology.plan(node)
        assert plan.nbma is not None
        lines = [
            f"mkdir -p {shlex.quote(str(path))} && mount --bind /run/share/inst{i} "
            f"{shlex.quote(str(path))}"
            for i, path in enumerate(self.hidden)
        ]
        lines += [
            "modprobe -a ip_gre tun esp4 xfrm_user",  # esp4, xfrm_user: charon's kernel ESP
            "ip -batch - <<'EOB'",
            f"addr add {plan.nbma} dev {GUEST_NBMA}",
            f"link set {GUEST_NBMA} up",
        ]
        if plan.lan is not None:
            lines += [f"addr add {plan.lan} dev {GUEST_LAN}", f"link set {GUEST_LAN} up"]
        run = shlex.join([*self.dmvpn, "run", "-c", "/run/out/node.yaml"])
        lines += [
            "EOB",
            "sysctl -qw net.ipv4.ip_forward=1",
            f"{run} >/run/out/dmvpn.log 2>&1 </dev/null &",
            f"for i in $(seq {_DAEMON_TIMEOUT * 10}); do",
            '    grep -q \'"kind": "running"\' /run/out/dmvpn.log && break',
            "    sleep 0.1",
            "done",
            'grep -q \'"kind": "running"\' /run/out/dmvpn.log',
        ]
        return "\n".join(lines) + "\n"

    def vm(self, node: str) -> VirtualMachine:
        if node not in self.vms:
            nics = [Nic(FRR_NBMA_TAP, GUEST_NBMA)]
            if self.lab.topology.plan(node).lan is not None:
                nics.append(Nic(FRR_LAN_TAP, GUEST_LAN))
            spec = GuestSpec(
                node=node,
                work=self.dir(node),
                nics=tuple(nics),
                memory_mb=_MEMORY_MB,
                boot=self.boot_script(node),
                shares=tuple((f"inst{i}", path) for i, path in enumerate(self.hidden)),
            )
            self.vms[node] = VirtualMachine(self.lab, spec, self._kernel)
        return self.vms[node]

    # -- life -------------------------------------------------------------------

    def start(self) -> None:
        """Write each guest's files and boot it; no wait (see `wait_ready`)."""
        if self.nodes and self._kernel is None:
            self._kernel = ensure_kernel()  # once, before the guests start at once
        if self.nodes:
            compile_package()
        for node in self.nodes:
            work = self.dir(node)
            work.mkdir(parents=True, exist_ok=True)
            conf = work / "node.yaml"
            conf.touch(mode=0o600)  # it may hold the NHRP password
            conf.write_text(yaml.safe_dump(self.config(node), sort_keys=False))
            self.vm(node).start()

    def wait_ready(self, timeout: float = BOOT_TIMEOUT) -> float:
        """Until the daemon runs in every guest; the seconds it took."""
        start = time.monotonic()
        todo = list(self.nodes)
        while todo:
            for node in list(todo):
                try:
                    if self.vm(node).check_boot():
                        todo.remove(node)
                except LabError as exc:
                    raise LabError(f"{exc}\n--- dmvpn log:\n{self.log_tail(node)}") from None
            if todo and time.monotonic() - start > timeout:
                tails = "\n".join(self.vm(n).tail() + self.log_tail(n) for n in todo)
                raise LabError(f"timed out after {timeout:g} s booting {', '.join(todo)}\n{tails}")
            time.sleep(0.1)
        return time.monotonic() - start

    def stop(self) -> None:
        for vm in self.vms.values():
            vm.stop()

    # -- talking to a guest ----------------------------------------------------------

    def run(self, node: str, script: str, timeout: float = 30.0) -> GuestResult:
        return self.vm(node).run(script, timeout)

    def api(self, node: str, path: str) -> Any:
        """GET an API path (e.g. /v1/nhrp) of the guest's daemon, decoded."""
        res = self.run(node, f"curl -sS --unix-socket {GUEST_SOCKET} http://dmvpn{path}")
        if res.returncode != 0:
            raise LabError(f"the API of {node} did not answer {path}: {res.output.strip()}")
        return json.loads(res.output)

    def show(self, node: str, *args: str) -> str:
        """`dmvpn show ARGS` in the guest, as an operator would type it."""
        res = self.run(node, shlex.join([*self.dmvpn, "show", *args, "--socket", GUEST_SOCKET]))
        if res.returncode != 0:
            raise LabError(f"`dmvpn show` on {node} failed: {res.output.strip()}")
        return res.output

    def events(self, node: str, kind: str | None = None) -> list[dict[str, Any]]:
        """The JSON records of the guest daemon's log (of one kind), oldest first."""
        return read_events(self.dir(node) / "dmvpn.log", kind)

    def log_tail(self, node: str, lines: int = 15) -> str:
        try:
            text = (self.dir(node) / "dmvpn.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
