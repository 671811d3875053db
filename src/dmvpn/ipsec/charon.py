"""A private charon per node: its own strongswan.conf, VICI socket and /run.

charon hard-codes /var/run/charon.pid, so each instance runs in a mount
namespace of its own with the run directory bind-mounted on /run
(real-peers.md). It is tied to the daemon: it gets SIGTERM if the daemon
dies (PR_SET_PDEATHSIG), so a killed daemon leaves no charon behind.

Peers' IKE is held (hold.py) from before charon starts until the manager has
loaded its connections: `start()` takes the hold, `open_ike()` lifts it.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shlex
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

from dmvpn.nsenter import entered

from .hold import IkeHold
from .settings import strongswan_conf

CHARON = "/usr/lib/ipsec/charon"
# Where managed charons keep their files unless the config says `run_dir`.
STATE_DIR = Path("/var/lib/dmvpn/ipsec")
PR_SET_PDEATHSIG = 1


class CharonError(Exception):
    pass


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class ManagedCharon:
    def __init__(
        self,
        node: str,
        run_dir: Path | None,
        device_mtu: int = 1400,
        namespace: str | None = None,
        kernel_esp: bool = False,
    ) -> None:
        # Front-door VRF: charon (IKE, kernel-libipsec's device and routes)
        # runs in the underlay namespace, where the GRE socket is.
        self.namespace = namespace
        self.own_dir = run_dir is None
        if run_dir is None:
            # Not under /run: charon's own /run is mounted over it there.
            STATE_DIR.mkdir(parents=True, exist_ok=True)
            run_dir = Path(tempfile.mkdtemp(prefix=f"{node}-", dir=STATE_DIR))
        self.dir = run_dir
        self.vici_socket = self.dir / "charon.vici"
        self.log_path = self.dir / "charon.log"
        self.conf = self.dir / "strongswan.conf"
        self.device_mtu = device_mtu
        self.kernel_esp = kernel_esp  # XFRM, not kernel-libipsec
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.hold: IkeHold | None = None
        self.hold_error: str | None = None  # why IKE could not be held

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    async def start(self, timeout: float = 10.0) -> None:
        if not Path(CHARON).exists():
            raise CharonError(f"{CHARON} not found (install strongswan-charon)")
        (self.dir / "run").mkdir(parents=True, exist_ok=True)
        # Before charon opens its IKE ports: an unconfigured charon would
        # answer a peer's IKE_SA_INIT with NO_PROPOSAL_CHOSEN (hold.py).
        self.hold_error = None
        if self.hold is None:
            try:
                with entered(self.namespace):  # IKE arrives in the underlay namespace
                    self.hold = IkeHold()
            except OSError as exc:
                self.hold_error = str(exc)
        self.conf.write_text(
            strongswan_conf(
                self.dir, self.vici_socket, self.log_path, self.device_mtu, self.kernel_esp
            )
        )
        self.vici_socket.unlink(missing_ok=True)
        (self.dir / "run" / "charon.pid").unlink(missing_ok=True)
        script = (
            f"mount --make-rprivate / && mount --bind {shlex.quote(str(self.dir / 'run'))} "
            f"/run && exec {CHARON}"
        )
        env = dict(os.environ, STRONGSWAN_CONF=str(self.conf))
        out = (self.dir / "charon.out").open("ab")
        try:
            netns = ["ip", "netns", "exec", self.namespace] if self.namespace else []
            self.proc = await asyncio.create_subprocess_exec(
                *netns,
                "unshare",
                "--mount",
                "sh",
                "-c",
                script,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                preexec_fn=_die_with_parent,
            )
        finally:
            out.close()
        self.starts += 1
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self.proc.returncode is not None:
                raise CharonError(
                    f"charon exited at start with status {self.proc.returncode} "
                    f"(see {self.dir / 'charon.out'})"
                )
            if self._socket_ready():
                return
            if asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise CharonError(
                    f"charon's VICI socket {self.vici_socket} not ready after {timeout:.0f} s"
                )
            await asyncio.sleep(0.05)

    def open_ike(self) -> tuple[float, int | None] | None:
        """Connections and credentials are loaded: let peers' IKE in. How
        long it was held and how many packets were dropped meanwhile (None
        if it was not held)."""
        hold, self.hold = self.hold, None
        if hold is None:
            return None
        held = (time.monotonic() - hold.since, hold.dropped())
        hold.release()
        return held

    def _socket_ready(self) -> bool:
        if not self.vici_socket.exists():
            return False
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(str(self.vici_socket))
            return True
        except OSError:
            return False
        finally:
            s.close()

    async def wait(self) -> int:
        """Until charon exits; its status."""
        assert self.proc is not None
        return await self.proc.wait()

    async def stop(self) -> None:
        self.open_ike()
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    def cleanup(self) -> None:
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
