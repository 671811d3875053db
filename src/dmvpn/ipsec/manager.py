"""Proxy instantiation: a GRE child SA per NBMA peer, on demand.

The daemon calls `want` when the engine asks for protection of a peer
(ProtectPeer: an NHS at start, a spoke when a binding to it forms) and
`release` when the last binding goes (UnprotectPeer). The manager brings the
SA up (or finds the one the peer brought up), reports it with `on_up`, keeps
watching it (a lost SA is reported with `on_down` and brought up again while
wanted, with backoff), and tears it down `idle_timeout` after its last
binding went. Rekeying and DPD are strongSwan's.

VICI is a blocking protocol (the `vici` package): every call runs on a
worker thread with a session of its own, so the event loop never waits on
charon.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_address
from pathlib import Path
from typing import Any

import vici

from dmvpn.config import Ipsec

from .charon import CharonError, ManagedCharon
from .settings import CHILD, conn_name, peer_conn, responder_conn, secrets

# Retry a failed peer after 1, 2, 4 ... at most 60 s.
BACKOFF_MAX = 60.0
# How often SA state and counters are read from charon.
POLL_INTERVAL = 2.0
INITIATE_TIMEOUT_MS = 15000
# Lines from charon's initiate log that say why an SA failed.
_REASONS = (
    "AUTHENTICATION_FAILED", "MAC mismatched", "no shared key", "no trusted",
    "constraint check failed", "certificate", "NO_PROPOSAL_CHOSEN", "TS_UNACCEPTABLE",
    "giving up", "peer not responding", "no IKE config", "no private key",
)  # fmt: skip

Log = Callable[..., None]


def _text(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, list):
        return [_text(x) for x in v]
    if isinstance(v, dict):
        return {k: _text(x) for k, x in v.items()}
    return v


@dataclass(eq=False)
class PeerSa:
    """What the manager knows of the SA to one NBMA peer (mutable runtime
    state, one per (local, remote) pair)."""

    local: IPv4Address
    remote: IPv4Address
    refs: int = 0  # bindings that need the SA (ProtectPeer minus UnprotectPeer)
    state: str = "connecting"  # connecting | up | failed | idle
    since: float = field(default_factory=time.time)
    failures: int = 0
    retry_at: float | None = None
    last_error: str | None = None
    idle_since: float | None = None
    initiated: bool = False  # we brought it up (else the peer did)
    sa: dict[str, Any] | None = None  # charon's list-sas view of the IKE SA
    task: asyncio.Task[None] | None = None

    def view(self, now: float) -> dict[str, Any]:
        ike = self.sa or {}
        children: dict[str, Any] = ike.get("child-sas", {}) if ike else {}
        child: dict[str, Any] = next(iter(children.values()), {})
        return {
            "local": str(self.local),
            "remote": str(self.remote),
            "state": self.state,
            "for": round(now - self.since, 1),
            "bindings": self.refs,
            "initiated": self.initiated,
            "failures": self.failures,
            "retry_in": None if self.retry_at is None else round(max(0.0, self.retry_at - now), 1),
            "last_error": self.last_error,
            "idle_for": None if self.idle_since is None else round(now - self.idle_since, 1),
            "ike": None if not ike else {
                "state": ike.get("state"),
                "local_id": ike.get("local-id"),
                "remote_id": ike.get("remote-id"),
                "encryption": _alg(ike),
                "prf": ike.get("prf-alg"),
                "dh_group": ike.get("dh-group"),
                "age": _int(ike.get("established")),
                "rekey_in": _int(ike.get("rekey-time")),
                "nat": ike.get("nat-any") == "yes",
            },
            "child": None if not child else {
                "state": child.get("state"),
                "mode": child.get("mode"),
                "encap": child.get("encap") == "yes",
                "encryption": _alg(child),
                "spi_in": child.get("spi-in"),
                "spi_out": child.get("spi-out"),
                "packets_in": _int(child.get("packets-in")),
                "bytes_in": _int(child.get("bytes-in")),
                "packets_out": _int(child.get("packets-out")),
                "bytes_out": _int(child.get("bytes-out")),
                "age": _int(child.get("install-time")),
                "rekey_in": _int(child.get("rekey-time")),
                "local_ts": child.get("local-ts"),
                "remote_ts": child.get("remote-ts"),
            },
        }  # fmt: skip


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _alg(sa: dict[str, Any]) -> str | None:
    alg = sa.get("encr-alg")
    if alg is None:
        return None
    size = sa.get("encr-keysize")
    return f"{alg}-{size}" if size else str(alg)


class IpsecManager:
    def __init__(
        self,
        cfg: Ipsec,
        node: str,
        identity: str | None,
        local_addresses: Iterable[IPv4Address],
        log: Log,
        on_up: Callable[[PeerSa], None],
        on_down: Callable[[PeerSa], None],
        on_restart: Callable[[], None],
    ) -> None:
        self.cfg = cfg
        self.node = node
        self.identity = identity
        self.locals = list(local_addresses)
        self.log = log
        self.on_up = on_up
        self.on_down = on_down
        self.on_restart = on_restart
        self.creds = cfg.read_credentials()
        self.charon = ManagedCharon(node, cfg.run_dir) if cfg.charon == "managed" else None
        sock = self.charon.vici_socket if self.charon else cfg.vici_socket
        assert sock is not None  # the config requires it for an external charon
        self.vici_socket: Path = sock
        self.peers: dict[tuple[IPv4Address, IPv4Address], PeerSa] = {}
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vici")
        self.ready = asyncio.Event()
        self.stopping = False
        self.version: str | None = None
        self.restarts = 0
        self.stats: dict[str, int] = {"initiated": 0, "failed": 0, "torn_down": 0, "lost": 0}
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------ VICI calls (worker threads)

    def _session(self) -> Any:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(30)
        s.connect(str(self.vici_socket))
        return vici.Session(s)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def _load(self) -> str:
        v = self._session()
        for command, message in secrets(self.cfg, self.creds):
            getattr(v, command)(message)
        for local in self.locals:
            v.load_conn(responder_conn(self.cfg, local, self.identity, self.creds))
        version = _text(v.version())
        return f"{version.get('daemon')} {version.get('version')}"

    def _list_sas(self) -> list[dict[str, Any]]:
        out = []
        for entry in self._session().list_sas():
            for _name, sa in entry.items():
                out.append(_text(sa))
        return out

    def _initiate(self, local: IPv4Address, remote: IPv4Address) -> tuple[bool, list[str]]:
        v = self._session()
        v.load_conn(peer_conn(self.cfg, local, remote, self.identity, self.creds))
        lines: list[str] = []
        try:
            request = {"ike": conn_name(remote), "child": CHILD,
                       "timeout": INITIATE_TIMEOUT_MS, "init-limits": "no"}  # fmt: skip
            for msg in v.initiate(request):
                text = _text(msg.get("msg", b""))
                if text:
                    lines.append(text)
        except vici.exception.CommandException as exc:
            lines.append(str(exc))
            return False, lines
        return True, lines

    def _terminate_ike(self, ike_id: str | None) -> None:
        if ike_id is None:
            return
        v = self._session()
        try:
            for _ in v.terminate({"ike-id": ike_id, "timeout": 2000}):
                pass
        except vici.exception.CommandException:
            pass  # already gone

    def _terminate(self, local: IPv4Address, remote: IPv4Address) -> None:
        """Every IKE SA between the two addresses (there may be two when both
        sides initiated), then our connection to the peer."""
        v = self._session()
        listed = list(v.list_sas())  # a streamed reply: read it all before the next command
        for entry in listed:
            for sa in entry.values():
                sa = _text(sa)
                if sa.get("remote-host") != str(remote) or sa.get("local-host") != str(local):
                    continue
                try:
                    for _ in v.terminate({"ike-id": sa.get("uniqueid"), "timeout": 2000}):
                        pass
                except vici.exception.CommandException:
                    pass  # already gone
        try:
            v.unload_conn({"name": conn_name(remote)})
        except vici.exception.CommandException:
            pass  # the peer brought the SA up: we never loaded its connection

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.charon is not None:
            await self.charon.start()
            self._hold_warning()
            self._tasks.append(asyncio.create_task(self._watch()))
        try:
            self.version = await self._call(self._load)
        except (OSError, vici.exception.CommandException) as exc:
            raise CharonError(f"cannot configure charon over {self.vici_socket}: {exc}") from None
        note, held = self._open_ike()
        self.ready.set()
        where = f"pid {self.charon.pid}" if self.charon else "external"
        self.log("ipsec-ready", f"charon ({self.version}, {where}) ready on {self.vici_socket}"
                 f"{note}", vici=str(self.vici_socket), **held)  # fmt: skip
        self._tasks.append(asyncio.create_task(self._poll()))

    async def stop(self) -> None:
        self.stopping = True
        for t in self._tasks:
            t.cancel()
        for peer in self.peers.values():
            if peer.task is not None:
                peer.task.cancel()
        if self.charon is not None:
            await self.charon.stop()
            self.charon.cleanup()
        else:
            # An external charon keeps running: take down what we brought up.
            for peer in list(self.peers.values()):
                try:
                    await asyncio.wait_for(self._call(self._terminate, peer.local, peer.remote), 3)
                except (OSError, TimeoutError, vici.exception.CommandException):
                    pass
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _hold_warning(self) -> None:
        if self.charon is not None and self.charon.hold_error is not None:
            reason = self.charon.hold_error
            self.log("ipsec-hold-unavailable",
                     f"cannot hold peers' IKE while charon is configured ({reason}): a peer "
                     f"that comes meanwhile is refused (NO_PROPOSAL_CHOSEN) and retries",
                     reason=reason)  # fmt: skip

    def _open_ike(self) -> tuple[str, dict[str, Any]]:
        """Charon has its connections: peers' IKE may reach it (hold.py).
        A note for the ipsec-ready event and its details."""
        held = self.charon.open_ike() if self.charon is not None else None
        if held is None:
            return "", {}
        seconds, dropped = held
        count = "" if dropped is None else f", {dropped} packet(s) dropped, the peers retransmit"
        return (f"; peers' IKE held {seconds * 1000:.0f} ms while loading{count}",
                {"ike_held_ms": round(seconds * 1000), "ike_dropped": dropped})  # fmt: skip

    async def _watch(self) -> None:
        """Restart a managed charon that dies, and bring back what was wanted."""
        assert self.charon is not None
        delay = 1.0
        while not self.stopping:
            rc = await self.charon.wait()
            if self.stopping:
                return
            self.ready.clear()
            self.restarts += 1
            self.log("ipsec-charon-died", f"charon exited with status {rc}; restarting it",
                     status=rc)  # fmt: skip
            for peer in self.peers.values():
                if peer.task is not None:
                    peer.task.cancel()
                    peer.task = None
                was_up = peer.state == "up"
                peer.state, peer.sa, peer.since = "connecting", None, time.time()
                if was_up:
                    self.on_down(peer)
            while not self.stopping:
                await asyncio.sleep(delay)
                try:
                    await self.charon.start()
                    self._hold_warning()
                    self.version = await self._call(self._load)
                    delay = 1.0
                    break
                except (CharonError, OSError, vici.exception.CommandException) as exc:
                    self.log("ipsec-charon-error", f"charon restart failed: {exc}")
                    delay = min(BACKOFF_MAX, delay * 2)
            note, held = self._open_ike()
            self.ready.set()
            self.log("ipsec-ready", f"charon restarted (pid {self.charon.pid}){note}",
                     vici=str(self.vici_socket), **held)  # fmt: skip
            self.on_restart()
            for peer in list(self.peers.values()):
                if peer.refs > 0:
                    peer.failures = 0
                    self._bring_up(peer)
                else:
                    del self.peers[(peer.local, peer.remote)]

    # ------------------------------------------------------------ peers

    def is_up(self, local: IPv4Address, remote: IPv4Address) -> bool:
        peer = self.peers.get((local, remote))
        return peer is not None and peer.state == "up"

    def want(self, local: IPv4Address, remote: IPv4Address) -> None:
        """A binding needs this peer (ProtectPeer)."""
        peer = self._peer(local, remote)
        peer.refs += 1
        peer.idle_since = None

    def touch(self, local: IPv4Address, remote: IPv4Address) -> None:
        """Something must be sent to this peer (an NHRP answer, say) though
        no binding needs it: bring the SA up; it goes when idle."""
        peer = self._peer(local, remote)
        if peer.refs == 0:
            peer.idle_since = time.time()  # idle counts from the last use

    def release(self, local: IPv4Address, remote: IPv4Address) -> None:
        """The last binding to this peer went (UnprotectPeer)."""
        peer = self.peers.get((local, remote))
        if peer is None:
            return
        peer.refs = max(0, peer.refs - 1)
        if peer.refs == 0:
            peer.idle_since = time.time()

    def _peer(self, local: IPv4Address, remote: IPv4Address) -> PeerSa:
        peer = self.peers.get((local, remote))
        if peer is None:
            peer = self.peers[(local, remote)] = PeerSa(local, remote)
            self._bring_up(peer)
        elif peer.state == "failed" and peer.task is None:
            self._bring_up(peer)
        return peer

    def _bring_up(self, peer: PeerSa) -> None:
        if peer.task is None or peer.task.done():
            peer.task = asyncio.create_task(self._connect(peer))

    async def _connect(self, peer: PeerSa) -> None:
        try:
            await self._connect_once(peer)
        finally:
            if peer.task is asyncio.current_task():
                peer.task = None

    async def _connect_once(self, peer: PeerSa) -> None:
        if peer.retry_at is not None:
            await asyncio.sleep(max(0.0, peer.retry_at - time.time()))
            peer.retry_at = None
        await self.ready.wait()
        if (peer.local, peer.remote) not in self.peers:
            return
        # The peer may have brought the SA up already (a hub answering a
        # spoke, the owner of an address answering a resolution).
        try:
            found = self._find(await self._call(self._list_sas), peer)
        except OSError:
            found = None
        if found is not None:
            self._mark_up(peer, found, initiated=False)
            return
        peer.state = "connecting"
        self.stats["initiated"] += 1
        started = time.monotonic()
        try:
            ok, lines = await self._call(self._initiate, peer.local, peer.remote)
        except OSError as exc:
            ok, lines = False, [f"VICI: {exc}"]
        if (peer.local, peer.remote) not in self.peers or self.stopping:
            return
        if ok:
            try:
                found = self._find(await self._call(self._list_sas), peer)
            except OSError:
                found = None
            self._mark_up(peer, found or {}, initiated=True, took=time.monotonic() - started)
            return
        peer.failures += 1
        self.stats["failed"] += 1
        reason = _reason(lines)
        delay = min(BACKOFF_MAX, 2.0 ** (peer.failures - 1))
        peer.state, peer.last_error, peer.since = "failed", reason, time.time()
        peer.retry_at = time.time() + delay
        self.log("ipsec-failed",
                 f"IPsec to {peer.remote} failed: {reason}; retrying in {delay:.0f} s",
                 local=str(peer.local), remote=str(peer.remote), reason=reason,
                 failures=peer.failures)  # fmt: skip
        if peer.refs > 0 or peer.idle_since is not None:
            peer.task = asyncio.create_task(self._connect(peer))

    def _matches(self, sas: list[dict[str, Any]], peer: PeerSa) -> list[dict[str, Any]]:
        out = []
        for sa in sas:
            if sa.get("remote-host") != str(peer.remote) or sa.get("state") != "ESTABLISHED":
                continue
            if sa.get("local-host") != str(peer.local):
                continue
            children = sa.get("child-sas", {}).values()
            if any(c.get("name") == CHILD and c.get("state") == "INSTALLED" for c in children):
                out.append(sa)
        return out

    def _find(self, sas: list[dict[str, Any]], peer: PeerSa) -> dict[str, Any] | None:
        """The SA to the peer; of two (both sides initiated at once), the one
        carrying the traffic."""
        found = self._matches(sas, peer)
        return max(found, key=_traffic) if found else None

    def _mark_up(self, peer: PeerSa, sa: dict[str, Any], *, initiated: bool,
                 took: float | None = None) -> None:  # fmt: skip
        peer.state, peer.sa, peer.since = "up", sa or None, time.time()
        peer.initiated, peer.failures, peer.last_error = initiated, 0, None
        how = f"initiated in {took * 1000:.0f} ms" if took is not None else "brought up by the peer"
        self.log("ipsec-up", f"IPsec to {peer.remote} up ({how})", local=str(peer.local),
                 remote=str(peer.remote), remote_id=sa.get("remote-id"),
                 initiated=initiated)  # fmt: skip
        self.on_up(peer)

    async def _poll(self) -> None:
        """Counters and liveness: an SA that went (DPD, the peer tore it down)
        is reported and brought back while wanted; idle SAs are torn down."""
        while not self.stopping:
            await asyncio.sleep(POLL_INTERVAL)
            if not self.ready.is_set():
                continue
            try:
                sas = await self._call(self._list_sas)
            except (OSError, vici.exception.CommandException):
                continue
            now = time.time()
            for key, peer in list(self.peers.items()):
                matches = self._matches(sas, peer)
                mine = [sa for sa in matches if sa.get("initiator") == "yes"]
                if len(matches) > 1 and peer.local > peer.remote and len(mine) < len(matches):
                    # Both sides initiated at once (an owner answering a
                    # resolution while the requester answers the other way):
                    # the higher address drops the SAs it initiated, the
                    # lower keeps its own, so exactly one remains.
                    for sa in mine:
                        await self._drop_duplicate(peer, sa)
                    matches = [sa for sa in matches if sa not in mine]
                found = max(matches, key=_traffic) if matches else None
                if peer.state == "up" and found is None:
                    self.stats["lost"] += 1
                    peer.state, peer.sa, peer.since = "connecting", None, now
                    self.log("ipsec-down", f"IPsec to {peer.remote} went down",
                             local=str(peer.local), remote=str(peer.remote))  # fmt: skip
                    self.on_down(peer)
                    if peer.refs > 0:
                        self._bring_up(peer)
                    else:
                        del self.peers[key]
                    continue
                if found is not None:
                    if peer.state != "up":
                        if peer.task is not None:
                            peer.task.cancel()
                            peer.task = None
                        peer.retry_at = None
                        self._mark_up(peer, found, initiated=False)
                    peer.sa = found
                if (peer.refs == 0 and peer.idle_since is not None
                        and now - peer.idle_since >= self.cfg.idle_timeout):  # fmt: skip
                    await self._tear_down(peer)

    async def _drop_duplicate(self, peer: PeerSa, sa: dict[str, Any]) -> None:
        try:
            await self._call(self._terminate_ike, sa.get("uniqueid"))
        except (OSError, vici.exception.CommandException):
            return
        self.log("ipsec-duplicate",
                 f"IPsec to {peer.remote}: dropped a duplicate IKE SA (both sides initiated)",
                 local=str(peer.local), remote=str(peer.remote))  # fmt: skip

    async def _tear_down(self, peer: PeerSa) -> None:
        del self.peers[(peer.local, peer.remote)]
        if peer.task is not None:
            peer.task.cancel()
        was_up = peer.state == "up"
        try:
            await self._call(self._terminate, peer.local, peer.remote)
        except (OSError, vici.exception.CommandException):
            pass
        self.stats["torn_down"] += 1
        self.log("ipsec-down", f"IPsec to {peer.remote} torn down (idle, no binding left)",
                 local=str(peer.local), remote=str(peer.remote))  # fmt: skip
        if was_up:
            self.on_down(peer)

    # ------------------------------------------------------------ identity binding

    def claims(self, peer: PeerSa) -> tuple[IPv4Network | IPv6Network, ...]:
        """The protocol addresses the peer's authenticated identity may claim:
        the config's `identities` table, else the identity itself when it is
        an IP address (a certificate's subjectAltName, which strongSwan
        checked against the identity)."""
        remote_id = (peer.sa or {}).get("remote-id")
        if not remote_id:
            return ()
        for entry in self.cfg.identities:
            if entry.identity == remote_id:
                return tuple(entry.addresses)
        try:
            addr = ip_address(remote_id)
        except ValueError:
            return ()
        return (IPv4Network(addr) if addr.version == 4 else IPv6Network(addr),)

    # ------------------------------------------------------------ views

    def view(self) -> dict[str, Any]:
        now = time.time()
        return {
            "charon": {
                "mode": self.cfg.charon,
                "pid": self.charon.pid if self.charon else None,
                "vici_socket": str(self.vici_socket),
                "version": self.version,
                "ready": self.ready.is_set(),
                "restarts": self.restarts,
            },
            "authentication": "certificate" if self.cfg.uses_certificates else "psk",
            "identity": self.identity,
            "identity_binding": self.cfg.binding_on,
            "stats": dict(self.stats),
            "peers": [p.view(now) for _, p in sorted(self.peers.items(), key=lambda kv: kv[0])],
        }


def _traffic(sa: dict[str, Any]) -> int:
    total = 0
    for child in sa.get("child-sas", {}).values():
        total += (_int(child.get("packets-in")) or 0) + (_int(child.get("packets-out")) or 0)
    return total


def _reason(lines: list[str]) -> str:
    for line in lines:
        if any(r in line for r in _REASONS):
            return line
    return lines[-1] if lines else "unknown failure"
