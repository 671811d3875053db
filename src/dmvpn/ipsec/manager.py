"""Proxy instantiation: a GRE child SA per NBMA peer, on demand.

The daemon calls `want` when the engine asks for protection of a peer
(ProtectPeer: an NHS at start, a spoke when a binding to it forms) and
`release` when the last binding goes (UnprotectPeer). The manager brings the
SA up (or finds the one the peer brought up), reports it with `on_up`, keeps
watching it (a lost SA is reported with `on_down` and brought up again while
wanted, with backoff), and tears it down `idle_timeout` after its last
binding went. Rekeying and DPD are strongSwan's.

How it is divided, so that the decisions can be tested without charon
(tests/ipsec/test_manager.py):

- `PeerSa` is one peer's state machine. Its `PeerState` changes only
  through `PeerSa.move`, which logs the transition (`ipsec-up`,
  `ipsec-failed`, `ipsec-down`).
- Pure functions read charon's SA list: which SAs are the peer's
  (`matching`), which of them carries the traffic (`carrying`), which to
  drop when both sides initiated (`duplicates`); `backoff` spaces retries.
- `Vici` makes the blocking VICI calls, each over a session from a factory
  (`vici.Session` on charon's socket; a fake one in tests).
- `IpsecManager` is the asyncio shell around them: a task per peer's
  attempt, charon's events (`child-updown`, `ike-updown`, on a listener
  thread): a child SA that came up counts at once from the event's own
  details, and any event makes it read charon's SAs (for what went, and
  duplicates), as it does every 2 s as a safety net; a watch on a managed
  charon. VICI calls run on
  worker threads, so the event loop never waits on charon.

Time is the event loop's clock (`loop.time()`, monotonic): retries, backoff,
idle teardown and `since` do not move when the wall clock is stepped, and
tests drive them with a virtual-time loop. The views show durations only
(`for`, `retry_in`, `idle_for`), so no wall-clock time needs converting.

Over 500 lines on purpose, for now: the four parts above are kept in one
module while the rest of the package is being reorganised (issue 11). They
are separate sections that share only small helpers, ready to move to
modules of their own (peer, VICI, manager).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_address
from pathlib import Path
from typing import Any, Protocol

import vici

from dmvpn.config import Ipsec

from .charon import CharonError, ManagedCharon
from .natmap import NatView, mappings, selector_problem
from .settings import CHILD, conn_name, peer_conn, responder_conn, secrets

# Retry a failed peer after 1, 2, 4 ... at most 60 s.
BACKOFF_MAX = 60.0
# How often SA state and counters are read from charon: a safety net (and
# the counters) only, since charon's events make the manager read them at once.
POLL_INTERVAL = 2.0
# charon's events that an SA came up or went.
SA_EVENTS = ["child-updown", "ike-updown"]
# How often the event listener checks whether to stop, and waits to reconnect.
LISTEN_TIMEOUT = 0.1
RELISTEN_DELAY = 0.5
# How long start() waits for the listener to have registered for the
# events (the first SAs come up right after start: an event missed then
# leaves the peer to the initiate's late answer or the poll; issue 18).
SUBSCRIBE_WAIT = 2.0
INITIATE_TIMEOUT_MS = 15000
# The lower address of a pair waits this long for the higher one's SA
# before initiating its own (`IpsecManager._attempt` says why): about an
# IKE exchange between two loaded namespaces.
INITIATE_DEFER = 0.03
# Lines from charon's initiate log that say why an SA failed.
_REASONS = (
    "AUTHENTICATION_FAILED",
    "MAC mismatched",
    "no shared key",
    "no trusted",
    "constraint check failed",
    "certificate",
    "NO_PROPOSAL_CHOSEN",
    "TS_UNACCEPTABLE",
    "giving up",
    "peer not responding",
    "no IKE config",
    "no private key",
)

Log = Callable[..., None]
Sa = dict[str, Any]  # one IKE SA as list-sas shows it (bytes decoded)


def _unlogged(kind: str, message: str, **details: Any) -> None:
    pass


class PeerState(StrEnum):
    """A peer's SA as `show ipsec`, /v1/ipsec and /metrics name it (the
    values are the strings they always printed). There is no `idle` state: an
    SA without bindings stays `up`, with `idle_for` counting towards
    `idle_timeout`, until it is torn down and the peer forgotten."""

    CONNECTING = "connecting"  # an attempt is due or under way
    UP = "up"  # our GRE child SA to the peer is installed
    FAILED = "failed"  # the last attempt failed; the next one is at retry_at


# The event that records a move into each state (to CONNECTING: only from
# UP, when the SA went).
_EVENTS = {
    PeerState.UP: "ipsec-up",
    PeerState.FAILED: "ipsec-failed",
    PeerState.CONNECTING: "ipsec-down",
}


@dataclass(eq=False)
class PeerSa:
    """What the manager knows of the SA to one NBMA peer (mutable runtime
    state, one per (local, remote) pair). Times are on the manager's
    monotonic clock."""

    local: IPv4Address
    remote: IPv4Address
    since: float  # when `state` was entered
    log: Log = field(default=_unlogged, repr=False)
    refs: int = 0  # bindings that need the SA (ProtectPeer minus UnprotectPeer)
    state: PeerState = PeerState.CONNECTING
    failures: int = 0
    retry_at: float | None = None
    last_error: str | None = None
    idle_since: float | None = None
    initiated: bool = False  # we brought it up (else the peer did)
    sa: Sa | None = None  # charon's list-sas view of the IKE SA
    task: asyncio.Task[None] | None = None

    def move(self, state: PeerState, now: float, why: str | None = None, **details: Any) -> None:
        """The one way `state` changes. `why` completes the event that
        records the move ("IPsec to <remote> <why>"): ipsec-up, ipsec-failed,
        or ipsec-down when an UP SA went. None for the two moves another
        event already tells: an attempt starting (its outcome is logged) and
        charon dying (ipsec-charon-died)."""
        assert why is None or state is not PeerState.CONNECTING or self.state is PeerState.UP
        self.state, self.since = state, now
        if why is not None:
            self.log(
                _EVENTS[state],
                f"IPsec to {self.remote} {why}",
                local=str(self.local),
                remote=str(self.remote),
                **details,
            )

    def up(self, sa: Sa, now: float, *, initiated: bool, how: str) -> None:
        """Our child SA to the peer is installed (`how`: who brought it up)."""
        self.sa, self.initiated = sa or None, initiated
        self.failures, self.last_error, self.retry_at = 0, None, None
        self.move(
            PeerState.UP, now, f"up ({how})", remote_id=sa.get("remote-id"), initiated=initiated
        )

    def fail(self, reason: str, now: float) -> float:
        """An attempt failed for `reason`: the delay before the next one."""
        self.failures += 1
        delay = backoff(self.failures)
        self.last_error, self.retry_at = reason, now + delay
        self.move(
            PeerState.FAILED,
            now,
            f"failed: {reason}; retrying in {delay:.0f} s",
            reason=reason,
            failures=self.failures,
        )
        return delay

    def lost(self, now: float) -> None:
        """The UP SA is gone from charon (DPD, the peer tore it down)."""
        self.sa = None
        self.move(PeerState.CONNECTING, now, "went down")

    @property
    def wanted(self) -> bool:
        """A binding needs the SA, or something was sent lately (touch)."""
        return self.refs > 0 or self.idle_since is not None

    def idle_expired(self, now: float, idle_timeout: float) -> bool:
        """No binding needs the SA and none has for `idle_timeout`."""
        return (
            self.refs == 0 and self.idle_since is not None and now - self.idle_since >= idle_timeout
        )

    def view(self, now: float) -> dict[str, Any]:
        ike = self.sa or {}
        children: dict[str, Any] = ike.get("child-sas", {}) if ike else {}
        child: dict[str, Any] = next(iter(children.values()), {})
        return {
            "local": str(self.local),
            "remote": str(self.remote),
            "state": self.state.value,
            "for": round(now - self.since, 1),
            "bindings": self.refs,
            "initiated": self.initiated,
            "failures": self.failures,
            "retry_in": None if self.retry_at is None else round(max(0.0, self.retry_at - now), 1),
            "last_error": self.last_error,
            "idle_for": None if self.idle_since is None else round(now - self.idle_since, 1),
            "ike": _ike_view(ike) if ike else None,
            "child": _child_view(child) if child else None,
        }


def _ike_view(ike: Sa) -> dict[str, Any]:
    return {
        "state": ike.get("state"),
        "local_id": ike.get("local-id"),
        "remote_id": ike.get("remote-id"),
        "encryption": _alg(ike),
        "prf": ike.get("prf-alg"),
        "dh_group": ike.get("dh-group"),
        "age": _int(ike.get("established")),
        "rekey_in": _int(ike.get("rekey-time")),
        "nat": ike.get("nat-any") == "yes",
        "nat_remote": ike.get("nat-remote") == "yes",  # the peer is behind NAT
    }


def _child_view(child: dict[str, Any]) -> dict[str, Any]:
    return {
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
    }


# ---------------------------------------------------------------- decisions (pure)


def backoff(failures: int) -> float:
    """Seconds before the next attempt after `failures` failures in a row."""
    return min(BACKOFF_MAX, 2.0 ** (failures - 1))


def matching(sas: Iterable[Sa], local: IPv4Address, remote: IPv4Address) -> list[Sa]:
    """The established IKE SAs between the two addresses that carry our GRE
    child SA, installed."""
    out = []
    for sa in sas:
        if sa.get("state") != "ESTABLISHED":
            continue
        if sa.get("remote-host") != str(remote) or sa.get("local-host") != str(local):
            continue
        children = sa.get("child-sas", {}).values()
        if any(c.get("name") == CHILD and c.get("state") == "INSTALLED" for c in children):
            out.append(sa)
    return out


def carrying(matches: list[Sa]) -> Sa | None:
    """Of the peer's SAs (two when both sides initiated), the one carrying
    the traffic."""
    return max(matches, key=_traffic) if matches else None


def duplicates(matches: list[Sa], local: IPv4Address, remote: IPv4Address) -> list[Sa]:
    """The SAs to drop when both sides initiated at once (an owner answering
    a resolution while the requester answers the other way): the higher
    address drops those it initiated, the lower keeps its own, so exactly
    one remains. Nothing while the peer has initiated none of them."""
    mine = [sa for sa in matches if sa.get("initiator") == "yes"]
    if len(matches) > 1 and local > remote and len(mine) < len(matches):
        return mine
    return []


def _initiator(sa: Sa) -> bool:
    """We initiated this IKE SA (charon leaves the flag out on the responder)."""
    return sa.get("initiator") == "yes"


def _traffic(sa: Sa) -> int:
    total = 0
    for child in sa.get("child-sas", {}).values():
        total += (_int(child.get("packets-in")) or 0) + (_int(child.get("packets-out")) or 0)
    return total


def _reason(lines: list[str]) -> str:
    for line in lines:
        if any(r in line for r in _REASONS):
            return line
    return lines[-1] if lines else "unknown failure"


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _alg(sa: Sa) -> str | None:
    alg = sa.get("encr-alg")
    if alg is None:
        return None
    size = sa.get("encr-keysize")
    return f"{alg}-{size}" if size else str(alg)


def _text(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, list):
        return [_text(x) for x in v]
    if isinstance(v, dict):
        return {k: _text(x) for k, x in v.items()}
    return v


# ---------------------------------------------------------------- VICI (blocking I/O)


class ViciSession(Protocol):
    """The part of `vici.Session` the manager uses. Streamed commands yield
    messages and raise `vici.exception.CommandException` when they fail."""

    def version(self) -> dict[str, Any]: ...
    def load_shared(self, message: dict[str, Any]) -> Any: ...
    def load_cert(self, message: dict[str, Any]) -> Any: ...
    def load_key(self, message: dict[str, Any]) -> Any: ...
    def load_conn(self, message: dict[str, Any]) -> Any: ...
    def unload_conn(self, message: dict[str, Any]) -> Any: ...
    def initiate(self, message: dict[str, Any]) -> Iterator[dict[str, Any]]: ...
    def terminate(self, message: dict[str, Any]) -> Iterator[dict[str, Any]]: ...
    def list_sas(self, message: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]: ...
    def listen(
        self, event_types: list[str], timeout: float | None = None
    ) -> Iterator[tuple[Any, Any]]: ...


def unix_session(path: Path) -> Callable[[], ViciSession]:
    """Sessions on charon's VICI socket, 30 s per reply at most."""

    def session() -> ViciSession:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.settimeout(30)
            s.connect(str(path))
        except OSError:
            s.close()
            raise
        opened: ViciSession = vici.Session(s)  # untyped package
        return opened

    return session


class Vici:
    """The VICI commands the manager sends, blocking: call them on a worker
    thread. Each call opens a session of its own (a session is a socket:
    one per thread)."""

    def __init__(self, session: Callable[[], ViciSession]) -> None:
        self.session = session

    def load(
        self, credentials: list[tuple[str, dict[str, Any]]], conns: list[dict[str, Any]]
    ) -> str:
        """Secrets and responder templates in; charon's name and version out."""
        v = self.session()
        for command, message in credentials:
            getattr(v, command)(message)
        for conn in conns:
            v.load_conn(conn)
        version = _text(v.version())
        return f"{version.get('daemon')} {version.get('version')}"

    def listen(
        self,
        on_event: Callable[[str, dict[str, Any]], None],
        stop: Callable[[], bool],
        subscribed: Callable[[], None] | None = None,
    ) -> None:
        """Block until `stop()`, calling `on_event(kind, payload)` at each of
        charon's SA events (the payload decoded: `up` and the IKE SA by its
        name, with the child that changed), and `subscribed()` once charon
        has the registration (at the first event or idle timeout). Returns
        when charon closes the session; raises when it cannot be reached."""
        for kind, payload in self.session().listen(SA_EVENTS, timeout=LISTEN_TIMEOUT):
            if subscribed is not None:
                subscribed()
                subscribed = None
            if stop():
                return
            if kind is not None:
                on_event(_text(kind), _text(dict(payload or {})))

    def list_sas(self) -> list[Sa]:
        out = []
        for entry in self.session().list_sas():
            for _name, sa in entry.items():
                out.append(_text(sa))
        return out

    def initiate(self, conn: dict[str, Any], name: str) -> tuple[bool, list[str]]:
        """Load the connection `name` and bring up its child: whether it came
        up, and charon's log lines of the attempt."""
        v = self.session()
        v.load_conn(conn)
        lines: list[str] = []
        request = {"ike": name, "child": CHILD, "timeout": INITIATE_TIMEOUT_MS, "init-limits": "no"}
        try:
            for msg in v.initiate(request):
                text = _text(msg.get("msg", b""))
                if text:
                    lines.append(text)
        except vici.exception.CommandException as exc:
            lines.append(str(exc))
            return False, lines
        return True, lines

    def terminate_ike(self, ike_id: str | None) -> None:
        if ike_id is None:
            return
        v = self.session()
        try:
            for _ in v.terminate({"ike-id": ike_id, "timeout": 2000}):
                pass
        except vici.exception.CommandException:
            pass  # already gone

    def terminate(self, local: IPv4Address, remote: IPv4Address) -> None:
        """Every IKE SA between the two addresses (there may be two when both
        sides initiated), then our connection to the peer."""
        v = self.session()
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


class CharonProcess(Protocol):
    """What the manager needs of a managed charon (charon.ManagedCharon)."""

    vici_socket: Path
    hold_error: str | None

    @property
    def pid(self) -> int | None: ...
    async def start(self) -> None: ...
    async def wait(self) -> int: ...
    async def stop(self) -> None: ...
    def open_ike(self) -> tuple[float, int | None] | None: ...
    def cleanup(self) -> None: ...


# ---------------------------------------------------------------- the manager


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
        *,
        session: Callable[[], ViciSession] | None = None,
        charon: CharonProcess | None = None,
        namespace: str | None = None,
        initiate_defer: float = INITIATE_DEFER,
        kernel_esp: bool = False,
    ) -> None:
        """`session` (VICI sessions) and `charon` (the managed charon, when
        the config says `managed`) replace the real ones in tests;
        `namespace` is the underlay's (front-door VRF), where charon runs."""
        self.cfg = cfg
        self.initiate_defer = initiate_defer
        self.kernel_esp = kernel_esp
        self.node = node
        self.identity = identity
        self.locals = list(local_addresses)
        self.log = log
        self.on_up = on_up
        self.on_down = on_down
        self.on_restart = on_restart
        self.creds = cfg.read_credentials()
        self.charon: CharonProcess | None = None
        if cfg.charon == "managed":
            self.charon = (
                charon
                if charon is not None
                else ManagedCharon(node, cfg.run_dir, namespace=namespace, kernel_esp=kernel_esp)
            )
        sock = self.charon.vici_socket if self.charon else cfg.vici_socket
        assert sock is not None  # the config requires it for an external charon
        self.vici_socket: Path = sock
        self.vici = Vici(session or unix_session(sock))
        self.peers: dict[tuple[IPv4Address, IPv4Address], PeerSa] = {}
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vici")
        self.ready = asyncio.Event()
        self.stopping = False
        self.version: str | None = None
        self.restarts = 0
        self.stats: dict[str, int] = {"initiated": 0, "failed": 0, "torn_down": 0, "lost": 0}
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()  # charon said an SA came or went: read them now
        self.nat_view = NatView()  # NATed peers' GRE, inside <-> public (natmap.py)
        self._subscribed = threading.Event()  # the listener is registered with charon

    @staticmethod
    def _now() -> float:
        # The loop's clock, so that sleeps and deadlines agree (and a test's
        # virtual-time loop drives both).
        return asyncio.get_running_loop().time()

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def _load(self) -> str:
        conns = [responder_conn(self.cfg, a, self.identity, self.creds) for a in self.locals]
        return self.vici.load(secrets(self.cfg, self.creds), conns)

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
        # The event listener first: the SAs wanted at once (the NHS's) come
        # up within ms, and their events must not be missed.
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._listen, args=(loop,), name="vici-events", daemon=True).start()
        # On the pool, so that a test's virtual clock waits for it too.
        await self._call(self._subscribed.wait, SUBSCRIBE_WAIT)
        note, held = self._open_ike()
        self.ready.set()
        where = f"pid {self.charon.pid}" if self.charon else "external"
        self.log(
            "ipsec-ready",
            f"charon ({self.version}, {where}) ready on {self.vici_socket}{note}",
            vici=str(self.vici_socket),
            **held,
        )
        self._tasks.append(asyncio.create_task(self._poll()))

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """charon's SA events go to the event loop (from the listener's thread)."""

        def on_event(kind: str, payload: dict[str, Any]) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._on_event, kind, payload)

        while not self.stopping:
            try:
                self.vici.listen(on_event, lambda: self.stopping, self._subscribed.set)
            except Exception:
                pass  # charon gone or restarting; the poll covers the gap
            if not self.stopping:
                time.sleep(RELISTEN_DELAY)

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
                    await asyncio.wait_for(
                        self._call(self.vici.terminate, peer.local, peer.remote), 3
                    )
                except (OSError, TimeoutError, vici.exception.CommandException):
                    pass
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _hold_warning(self) -> None:
        if self.charon is not None and self.charon.hold_error is not None:
            reason = self.charon.hold_error
            self.log(
                "ipsec-hold-unavailable",
                f"cannot hold peers' IKE while charon is configured ({reason}): a peer "
                f"that comes meanwhile is refused (NO_PROPOSAL_CHOSEN) and retries",
                reason=reason,
            )

    def _open_ike(self) -> tuple[str, dict[str, Any]]:
        """Charon has its connections: peers' IKE may reach it (hold.py).
        A note for the ipsec-ready event and its details."""
        held = self.charon.open_ike() if self.charon is not None else None
        if held is None:
            return "", {}
        seconds, dropped = held
        count = "" if dropped is None else f", {dropped} packet(s) dropped, the peers retransmit"
        return (
            f"; peers' IKE held {seconds * 1000:.0f} ms while loading{count}",
            {"ike_held_ms": round(seconds * 1000), "ike_dropped": dropped},
        )

    async def _watch(self) -> None:
        """Restart a managed charon that dies, and bring back what was wanted."""
        assert self.charon is not None
        delay = 1.0
        while not self.stopping:
            rc = await self.charon.wait()
            if self.stopping:
                return
            self.ready.clear()
            self._subscribed.clear()  # the listener registers again with the new charon
            self.restarts += 1
            self.log(
                "ipsec-charon-died", f"charon exited with status {rc}; restarting it", status=rc
            )
            now = self._now()
            for peer in self.peers.values():
                self._cancel(peer)
                was_up = peer.state is PeerState.UP
                peer.sa = None
                peer.move(PeerState.CONNECTING, now)  # told by ipsec-charon-died
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
            await self._call(self._subscribed.wait, SUBSCRIBE_WAIT)
            note, held = self._open_ike()
            self.ready.set()
            self.log(
                "ipsec-ready",
                f"charon restarted (pid {self.charon.pid}){note}",
                vici=str(self.vici_socket),
                **held,
            )
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
        return peer is not None and peer.state is PeerState.UP

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
            peer.idle_since = self._now()  # idle counts from the last use

    def release(self, local: IPv4Address, remote: IPv4Address) -> None:
        """The last binding to this peer went (UnprotectPeer)."""
        peer = self.peers.get((local, remote))
        if peer is None:
            return
        peer.refs = max(0, peer.refs - 1)
        if peer.refs == 0:
            peer.idle_since = self._now()

    def _peer(self, local: IPv4Address, remote: IPv4Address) -> PeerSa:
        peer = self.peers.get((local, remote))
        if peer is None:
            peer = PeerSa(local, remote, since=self._now(), log=self.log)
            self.peers[(local, remote)] = peer
            self._bring_up(peer)
        elif peer.state is PeerState.FAILED and peer.task is None:
            self._bring_up(peer)
        return peer

    def _current(self, peer: PeerSa) -> bool:
        """The peer is still in the table (not torn down or forgotten)."""
        return self.peers.get((peer.local, peer.remote)) is peer

    def _bring_up(self, peer: PeerSa) -> None:
        if peer.task is None or peer.task.done():
            peer.task = asyncio.create_task(self._connect(peer))

    def _cancel(self, peer: PeerSa) -> None:
        if peer.task is not None:
            peer.task.cancel()
            peer.task = None

    async def _connect(self, peer: PeerSa) -> None:
        try:
            await self._attempt(peer)
        finally:
            if peer.task is asyncio.current_task():
                peer.task = None

    async def _find(self, peer: PeerSa) -> Sa | None:
        try:
            sas = await self._call(self.vici.list_sas)
        except (OSError, vici.exception.CommandException):
            return None
        return carrying(matching(sas, peer.local, peer.remote))

    async def _attempt(self, peer: PeerSa) -> None:
        """One attempt: wait for the retry time and a ready charon, adopt the
        SA the peer brought up or initiate one; after a failure, schedule the
        next attempt."""
        if peer.retry_at is not None:
            await asyncio.sleep(max(0.0, peer.retry_at - self._now()))
            peer.retry_at = None
        await self.ready.wait()
        if not self._current(peer):
            return
        # The peer may have brought the SA up already (a hub answering a
        # spoke, the owner of an address answering a resolution).
        found = await self._find(peer)
        if found is not None:
            self._up(peer, found, initiated=_initiator(found))
            return
        if peer.failures == 0 and peer.local < peer.remote and self.initiate_defer > 0:
            # Both spokes usually need the SA at once (each answers the
            # other's resolution). The lower address gives the higher one's
            # initiate a head start: its SA then comes up here as the
            # responder (child-updown cancels this wait), one IKE SA rather
            # than two, and no duplicate to drop, which lost the packets in
            # flight on it (issue 18). A peer that does not initiate costs
            # this much more.
            await asyncio.sleep(self.initiate_defer)
            if not self._current(peer) or self.stopping or peer.state is PeerState.UP:
                return
        started = self._now()
        peer.move(PeerState.CONNECTING, started)  # the outcome is logged
        self.stats["initiated"] += 1
        conn = peer_conn(self.cfg, peer.local, peer.remote, self.identity, self.creds)
        try:
            ok, lines = await self._call(self.vici.initiate, conn, conn_name(peer.remote))
        except OSError as exc:
            ok, lines = False, [f"VICI: {exc}"]
        if not self._current(peer) or self.stopping:
            return
        if ok:
            found = await self._find(peer)
            self._up(peer, found or {}, initiated=True, took=self._now() - started)
            return
        # Simultaneous initiation is normal (both spokes answer each other's
        # resolution): charon refuses ours as a duplicate of the SA the peer
        # brought up meanwhile. That SA carries the traffic: up now, no backoff.
        found = await self._find(peer)
        if not self._current(peer) or self.stopping:
            return
        if found is not None:
            self._up(peer, found, initiated=_initiator(found))
            return
        self.stats["failed"] += 1
        peer.fail(_reason(lines), self._now())
        if peer.wanted:
            peer.task = asyncio.create_task(self._connect(peer))

    def _up(self, peer: PeerSa, sa: Sa, *, initiated: bool, took: float | None = None) -> None:
        if took is not None:
            how = f"initiated in {took * 1000:.0f} ms"
        else:
            how = "initiated" if initiated else "brought up by the peer"
        peer.up(sa, self._now(), initiated=initiated, how=how)
        self.on_up(peer)

    def _on_event(self, kind: str, payload: dict[str, Any]) -> None:
        """One of charon's SA events. A child SA of ours that came up counts
        at once, whoever initiated it, with the details the event carries:
        no list-sas, which charon answers only once no IKE SA is being
        worked on (17 ms while both sides initiated, issue 18). Whatever
        else (an SA went, duplicates) is for the review, woken now."""
        self._wake.set()
        if kind != "child-updown" or payload.get("up") != "yes" or not self.ready.is_set():
            return
        for sa in payload.values():
            if not isinstance(sa, dict):
                continue
            try:
                local = IPv4Address(sa.get("local-host", ""))
                remote = IPv4Address(sa.get("remote-host", ""))
            except ValueError:
                continue
            key = (local, remote)
            peer = self.peers.get(key)
            if peer is None or not matching([sa], *key):
                continue
            if peer.state is PeerState.UP:
                continue
            self._map_nat(sa)
            mine = _initiator(sa)
            took = None
            if mine and peer.state is PeerState.CONNECTING and peer.task is not None:
                took = self._now() - peer.since  # our initiate, not back yet
            self._cancel(peer)
            self._up(peer, sa, initiated=mine, took=took)

    def _map_nat(self, sa: Sa) -> None:
        """A NATed peer's GRE translated as its SA comes up, not at the review
        that follows: its first NHRP over the SA (a reply it held) arrives
        within a millisecond, and seen from the inside address it was bound
        there, a peer no SA leads to (issue 13's e2e test caught it)."""
        new = mappings([sa])
        if not new or all(self.nat_view.view.get(i) == p for i, p in new.items()):
            return
        try:
            self.nat_view.sync({**new, **self.nat_view.view})
        except OSError as exc:
            self.log("ipsec-nat-error", f"cannot translate NATed peers' GRE: {exc}")
            return
        self.log(
            "ipsec-nat",
            "GRE of NATed peers translated: "
            + ", ".join(f"{i} as {p}" for i, p in self.nat_view.view.items()),
            peers={str(i): str(p) for i, p in self.nat_view.view.items()},
        )

    async def _poll(self) -> None:
        """SA state at once when charon's events say it changed; counters and
        liveness every POLL_INTERVAL in any case."""
        while not self.stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL)
            except TimeoutError:
                pass
            self._wake.clear()
            if not self.ready.is_set():
                continue
            asked = self._now()
            try:
                sas = await self._call(self.vici.list_sas)
            except (OSError, vici.exception.CommandException):
                continue
            await self._review(sas, asked)

    async def _review(self, sas: list[Sa], asked: float | None = None) -> None:
        """Each peer against charon's SAs: duplicates dropped, an SA that
        went (DPD, the peer tore it down) reported and brought back while
        wanted, one the peer brought up adopted, idle ones torn down."""
        sas = await self._follow_nat(sas)
        now = self._now()
        for key, peer in list(self.peers.items()):
            # An earlier peer's await may have let charon die or this peer
            # go: `sas` no longer speaks for it.
            if not self.ready.is_set():
                return
            if not self._current(peer):
                continue
            matches = matching(sas, peer.local, peer.remote)
            for sa in duplicates(matches, peer.local, peer.remote):
                await self._drop_duplicate(peer, sa)
                matches.remove(sa)
            found = carrying(matches)
            if peer.state is PeerState.UP and found is None:
                if asked is not None and peer.since > asked:
                    # Up (charon's event) after this list was asked for: the
                    # list is older than the SA, not a sign that it went.
                    continue
                self.stats["lost"] += 1
                peer.lost(now)
                self.on_down(peer)
                if peer.refs > 0:
                    self._bring_up(peer)
                else:
                    del self.peers[key]
                continue
            if found is not None:
                mine = _initiator(found)
                if peer.state is PeerState.CONNECTING and peer.task is not None and mine:
                    continue  # our initiate under way brought it up: it reports it
                if peer.state is not PeerState.UP:
                    self._cancel(peer)  # the attempt under way, or the wait for a retry
                    self._up(peer, found, initiated=mine)
                peer.sa = found
            if peer.idle_expired(now, self.cfg.idle_timeout):
                await self._tear_down(peer)

    async def _follow_nat(self, sas: list[Sa]) -> list[Sa]:
        """NAT traversal (natmap.py): an SA whose peer's GRE selector is
        neither its address nor excused by NAT is torn down; the GRE of
        NATed peers is translated to their public address. The SAs left."""
        kept = []
        for sa in sas:
            problem = selector_problem(sa)
            if problem is None:
                kept.append(sa)
                continue
            try:
                await self._call(self.vici.terminate_ike, sa.get("uniqueid"))
            except (OSError, vici.exception.CommandException):
                pass
            self.log(
                "ipsec-selector-refused",
                f"IPsec from {sa.get('remote-host')} torn down: {problem}",
                remote=str(sa.get("remote-host")),
            )
        try:
            if self.nat_view.sync(mappings(kept)):
                self.log(
                    "ipsec-nat",
                    "GRE of NATed peers translated: "
                    + (", ".join(f"{i} as {p}" for i, p in self.nat_view.view.items()) or "none"),
                    peers={str(i): str(p) for i, p in self.nat_view.view.items()},
                )
        except OSError as exc:
            self.log("ipsec-nat-error", f"cannot translate NATed peers' GRE: {exc}")
        return kept

    async def _drop_duplicate(self, peer: PeerSa, sa: Sa) -> None:
        try:
            await self._call(self.vici.terminate_ike, sa.get("uniqueid"))
        except (OSError, vici.exception.CommandException):
            return
        self.log(
            "ipsec-duplicate",
            f"IPsec to {peer.remote}: dropped a duplicate IKE SA (both sides initiated)",
            local=str(peer.local),
            remote=str(peer.remote),
        )

    async def _tear_down(self, peer: PeerSa) -> None:
        # Not a move: the peer's record ends here (a later want starts afresh).
        del self.peers[(peer.local, peer.remote)]
        self._cancel(peer)
        was_up = peer.state is PeerState.UP
        try:
            await self._call(self.vici.terminate, peer.local, peer.remote)
        except (OSError, vici.exception.CommandException):
            pass
        self.stats["torn_down"] += 1
        self.log(
            "ipsec-down",
            f"IPsec to {peer.remote} torn down (idle, no binding left)",
            local=str(peer.local),
            remote=str(peer.remote),
        )
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
        now = self._now()
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
            # What this node proposes; each SA's child says what was agreed.
            "esp": "kernel" if self.kernel_esp else "kernel-libipsec",
            "esp_mode": self.cfg.mode,
            "identity": self.identity,
            "identity_binding": self.cfg.binding_on,
            "stats": dict(self.stats),
            "peers": [p.view(now) for _, p in sorted(self.peers.items(), key=lambda kv: kv[0])],
        }
