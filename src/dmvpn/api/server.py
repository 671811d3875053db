"""The management API server: aiohttp on a UNIX socket, one per node.

    GET  /v1/dmvpn           show dmvpn
    GET  /v1/nhrp            show nhrp (the cache)
    GET  /v1/nhrp/nhs        show nhrp nhs
    GET  /v1/nhrp/shortcut   show nhrp shortcut
    GET  /v1/nhrp/traffic    show nhrp traffic
    GET  /v1/ipsec           show ipsec (charon, and the SA to each NBMA peer)
    POST /v1/nhrp/clear      clear nhrp ({"interface": ..., "scope": "all"|"shortcut"})
    GET  /v1/events          engine events as they happen, one JSON object a line
    GET  /metrics            Prometheus text format

The GET views take ``?interface=NAME`` and ``?family=4|6`` (a dual-stack
interface has an IPv4 and an IPv6 engine; both are shown unless filtered);
/v1/events also ``?kind=a,b``. Errors
are JSON too: {"error": "..."} with status 400 or 404. The server only reads
the engines and forwarders between event-loop callbacks, so it needs no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dmvpn.dataplane.plane import DataPlaneCounters
from dmvpn.nhrp import Engine, Event

from . import views
from .paging import Page, QueryError, parse_page
from .qos import add_shaping, group_view, qos_metrics
from .views import Iface

__all__ = [
    "RUN_DIR",
    "ApiError",
    "ApiServer",
    "InterfaceLike",
    "default_socket_path",
]

RUN_DIR = Path("/run/dmvpn")
# Per-subscriber backlog of /v1/events; beyond it events are dropped (and the
# subscriber told how many) rather than slowing the daemon down.
EVENT_BACKLOG = 1024
# A blank line this often on an idle event stream (half-open connections).
KEEPALIVE = 15.0


def default_socket_path(node: str) -> Path:
    """Where a node's API listens unless its config says `socket:`."""
    return RUN_DIR / f"{node}.sock"


class ApiError(Exception):
    """The API cannot start (the socket is held by a running daemon, ...)."""


class IpsecLike(Protocol):
    """What the server needs of the daemon's IpsecManager."""

    def view(self) -> dict[str, Any]: ...


class _InterfaceConfig(Protocol):
    @property
    def name(self) -> str: ...


class InterfaceLike(Protocol):
    """What the server needs of the daemon's InterfaceRuntime."""

    @property
    def cfg(self) -> _InterfaceConfig: ...
    @property
    def engine(self) -> Engine: ...
    @property
    def forwarder(self) -> DataPlaneCounters: ...
    def apply(self) -> None: ...


def _engines(rt: InterfaceLike) -> list[tuple[Engine, Literal[4, 6]]]:
    """The interface's engines with their family: IPv4, then IPv6 when the
    overlay is dual-stack (the daemon's InterfaceRuntime.engine6)."""
    engine6: Engine | None = getattr(rt, "engine6", None)
    out: list[tuple[Engine, Literal[4, 6]]] = [(rt.engine, 4)]
    if engine6 is not None:
        out.append((engine6, 6))
    return out


@dataclass(eq=False)
class _Subscriber:
    kinds: frozenset[str]
    interface: str | None
    queue: asyncio.Queue[bytes | None] = field(
        default_factory=lambda: asyncio.Queue(maxsize=EVENT_BACKLOG)
    )
    dropped: int = 0


class _NodeCollector(Collector):
    def __init__(self, server: ApiServer) -> None:
        self.server = server

    def collect(self) -> list[Metric]:
        s = self.server
        subscribers = GaugeMetricFamily(
            "dmvpn_api_event_subscribers", "Clients following /v1/events (dmvpn events)"
        )
        subscribers.add_metric([], s.subscribers)
        return [
            *views.metric_families(s.node, s.ifaces(), s.now()),
            subscribers,
            *self._ipsec(),
            *qos_metrics(s.interfaces),
        ]

    def _ipsec(self) -> list[Metric]:
        if self.server.ipsec is None:
            return []
        view = self.server.ipsec.view()
        peers = GaugeMetricFamily(
            "dmvpn_ipsec_peers", "IPsec peers (SAs wanted or up) by state", labels=["state"]
        )
        states: dict[str, int] = {"connecting": 0, "up": 0, "failed": 0}
        for p in view["peers"]:
            states[p["state"]] = states.get(p["state"], 0) + 1
        for state, n in sorted(states.items()):
            peers.add_metric([state], n)
        sas = CounterMetricFamily(
            "dmvpn_ipsec_sas",
            "IPsec SAs: initiated/failed (attempts), torn_down (idle), "
            "lost (went down while wanted)",
            labels=["result"],
        )
        for result, n in sorted(view["stats"].items()):
            sas.add_metric([result], n)
        restarts = CounterMetricFamily(
            "dmvpn_ipsec_charon_restarts", "Times the managed charon died and was restarted"
        )
        restarts.add_metric([], view["charon"]["restarts"])
        return [peers, sas, restarts]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status=status)


def _socket_alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True


class ApiServer:
    def __init__(
        self,
        node: str,
        interfaces: Sequence[InterfaceLike],
        path: Path | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.node = node
        # The daemon's list, read live: interfaces appended later are served.
        self.interfaces = interfaces
        self.path = Path(path) if path is not None else default_socket_path(node)
        self._clock = clock
        self._subscribers: set[_Subscriber] = set()
        # Set by the daemon when the node config has an `ipsec` section.
        self.ipsec: IpsecLike | None = None
        # The daemon's VRRP groups (daemon/vrrp.py), read live: objects with view().
        self.vrrp: Sequence[Any] = ()
        self._runner: web.AppRunner | None = None
        self._inode: int | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_NodeCollector(self))
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/v1", self._index),
                web.get("/v1/dmvpn", self._dmvpn),
                web.get("/v1/nhrp", self._nhrp),
                web.get("/v1/nhrp/nhs", self._nhs),
                web.get("/v1/nhrp/shortcut", self._shortcut),
                web.get("/v1/nhrp/traffic", self._traffic),
                web.get("/v1/nhrp/group", self._group),
                web.get("/v1/ipsec", self._ipsec),
                web.get("/v1/vrrp", self._vrrp),
                web.post("/v1/nhrp/clear", self._clear),
                web.get("/v1/events", self._events),
                web.get("/metrics", self._metrics),
            ]
        )

    # ------------------------------------------------------------ lifecycle

    def now(self) -> float:
        """The engines' clock (the event loop's)."""
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time()

    async def start(self) -> None:
        """Listen on the socket. A socket file left by a dead daemon is
        removed; one a live daemon answers on is an error (two nodes with
        the same name on one machine)."""
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(path):
                if not stat.S_ISSOCK(os.lstat(path).st_mode):
                    raise ApiError(f"{path} exists and is not a socket; not touching it")
                if _socket_alive(path):
                    raise ApiError(
                        f"{path}: another dmvpn daemon is listening there "
                        "(two nodes with the same name? set `socket:` in the config)"
                    )
                path.unlink()  # stale: its daemon is gone
            # handler_cancellation: a client leaving /v1/events is forgotten at once.
            runner = web.AppRunner(
                self.app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True
            )
            await runner.setup()
            try:
                await web.UnixSite(runner, str(path)).start()
            except BaseException:
                await runner.cleanup()
                raise
            os.chmod(path, 0o660)
            self._inode = os.stat(path).st_ino
        except OSError as exc:
            raise ApiError(f"cannot listen on {path}: {exc.strerror or exc}") from None
        self._runner = runner

    async def stop(self) -> None:
        """End every event stream, stop listening, remove the socket."""
        for sub in list(self._subscribers):
            _offer(sub, None, force=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with contextlib.suppress(OSError):
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        self._inode = None

    # ------------------------------------------------------------ events

    def publish(self, interface: str, event: Event) -> None:
        """Fan an engine event out to the /v1/events subscribers (called by
        the daemon for every Event output; cheap when nobody listens)."""
        if not self._subscribers:
            return
        record = {
            "ts": round(time.time(), 3),
            "node": self.node,
            "interface": interface,
            "kind": event.kind,
            "message": event.message,
            "details": event.details,
        }
        line = (json.dumps(record, default=str) + "\n").encode()
        for sub in self._subscribers:
            if (not sub.kinds or event.kind in sub.kinds) and sub.interface in (None, interface):
                _offer(sub, line)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    # ------------------------------------------------------------ helpers

    def ifaces(self, name: str | None = None, family: int | None = None) -> list[Iface]:
        """One Iface per engine; the shared forwarder goes with the IPv4 one."""
        return [
            Iface(
                rt.cfg.name,
                engine,
                rt.forwarder if fam == 4 else None,
                fam,
                getattr(rt.cfg, "namespace", None),
            )
            for rt in self.interfaces
            if name is None or rt.cfg.name == name
            for engine, fam in _engines(rt)
            if family is None or fam == family
        ]

    def _selected(self, request: web.Request) -> list[Iface] | web.Response:
        name = request.query.get("interface")
        family = _family(request.query.get("family"))
        if isinstance(family, web.Response):
            return family
        ifaces = self.ifaces(name, family)
        if name is not None and not self.ifaces(name):
            known = ", ".join(rt.cfg.name for rt in self.interfaces) or "none"
            return _error(404, f"no interface {name!r} on node {self.node} (interfaces: {known})")
        return ifaces

    # ------------------------------------------------------------ handlers

    async def _index(self, request: web.Request) -> web.Response:
        return _json(
            {
                "node": self.node,
                "interfaces": [rt.cfg.name for rt in self.interfaces],
                "endpoints": [
                    "GET /v1/dmvpn",
                    "GET /v1/nhrp",
                    "GET /v1/nhrp/nhs",
                    "GET /v1/nhrp/shortcut",
                    "GET /v1/nhrp/traffic",
                    "GET /v1/nhrp/group",
                    "GET /v1/ipsec",
                    "GET /v1/vrrp",
                    "POST /v1/nhrp/clear",
                    "GET /v1/events",
                    "GET /metrics",
                ],
            }
        )

    async def _dmvpn(self, request: web.Request) -> web.Response:
        ifaces = self._selected(request)
        if isinstance(ifaces, web.Response):
            return ifaces
        page = _page(request, views.DMVPN_STATES)
        if isinstance(page, web.Response):
            return page
        now = self.now()
        data = views.dmvpn_view(self.node, ifaces, now, page)
        add_shaping(data, self.interfaces)
        # The learned path MTU per peer (tunnel.path_mtu_discovery): only the
        # userspace plane and its forwarder have one; getattr, as test
        # runtimes and other planes have neither.
        views.add_path_mtu(
            data,
            {
                rt.cfg.name: getattr(getattr(rt, "forwarder", None), "path_mtu", None)
                for rt in self.interfaces
            },
            now,
        )
        if self.ipsec is not None:
            # Each peer's SA, as `show dmvpn detail` shows its crypto session.
            sas = {(p["local"], p["remote"]): p for p in self.ipsec.view()["peers"]}
            for itf in data["interfaces"]:
                for peer in itf["peers"]:
                    sa = sas.get((itf["nbma_address"], peer["nbma"]))
                    if sa is not None and (sa["ike"] or {}).get("nat_remote"):
                        _flag_natted(peer["entries"])
                    peer["ipsec"] = (
                        None
                        if sa is None
                        else {
                            "state": sa["state"],
                            "for": sa["for"],
                            "last_error": sa["last_error"],
                        }
                    )
        return _json(data)

    async def _group(self, request: web.Request) -> web.Response:
        name = request.query.get("interface")
        chosen = [rt for rt in self.interfaces if name is None or rt.cfg.name == name]
        if name is not None and not chosen:
            return _error(404, f"no interface {name!r} on node {self.node}")
        return _json(group_view(self.node, chosen))

    async def _nhrp(self, request: web.Request) -> web.Response:
        ifaces = self._selected(request)
        if isinstance(ifaces, web.Response):
            return ifaces
        page = _page(request, None)
        if isinstance(page, web.Response):
            return page
        return _json(views.nhrp_view(self.node, ifaces, self.now(), page))

    async def _nhs(self, request: web.Request) -> web.Response:
        ifaces = self._selected(request)
        if isinstance(ifaces, web.Response):
            return ifaces
        return _json(views.nhs_view(self.node, ifaces, self.now()))

    async def _shortcut(self, request: web.Request) -> web.Response:
        ifaces = self._selected(request)
        if isinstance(ifaces, web.Response):
            return ifaces
        return _json(views.shortcut_view(self.node, ifaces, self.now()))

    async def _traffic(self, request: web.Request) -> web.Response:
        ifaces = self._selected(request)
        if isinstance(ifaces, web.Response):
            return ifaces
        return _json(views.traffic_view(self.node, ifaces))

    async def _ipsec(self, request: web.Request) -> web.Response:
        if self.ipsec is None:
            return _json({"node": self.node, "enabled": False, "peers": []})
        held = {}
        for rt in self.interfaces:
            stats = getattr(rt, "ipsec_stats", None)
            if stats is not None:
                held[rt.cfg.name] = dict(stats)
        return _json({"node": self.node, "enabled": True, **self.ipsec.view(), "interfaces": held})

    async def _vrrp(self, request: web.Request) -> web.Response:
        return _json({"node": self.node, "groups": [router.view() for router in self.vrrp]})

    async def _clear(self, request: web.Request) -> web.Response:
        body: Any = {}
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                return _error(400, "the body must be JSON")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        scope = body.get("scope", "all")
        if scope not in views.CLEAR_SCOPES:
            return _error(400, f"scope must be one of: {', '.join(views.CLEAR_SCOPES)}")
        name = body.get("interface")
        if name is not None and not isinstance(name, str):
            return _error(400, "interface must be a string")
        family = _family(body.get("family"))
        if isinstance(family, web.Response):
            return family
        cleared: list[dict[str, Any]] = []
        found = False
        for rt in self.interfaces:
            if name is not None and rt.cfg.name != name:
                continue
            found = True
            for engine, fam in _engines(rt):
                if family is None or fam == family:
                    iface = Iface(rt.cfg.name, engine, None, fam)
                    cleared += views.clear_nhrp(iface, self.now(), scope)
            rt.apply()  # withdraw bindings and routes, send purges (both engines)
        if name is not None and not found:
            return _error(404, f"no interface {name!r} on node {self.node}")
        return _json({"node": self.node, "scope": scope, "cleared": cleared})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        kinds = frozenset(k for k in request.query.get("kind", "").split(",") if k)
        name = request.query.get("interface")
        if name is not None and not self.ifaces(name):
            return _error(404, f"no interface {name!r} on node {self.node}")
        sub = _Subscriber(kinds, name)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        self._subscribers.add(sub)
        try:
            while True:
                try:
                    line = await asyncio.wait_for(sub.queue.get(), KEEPALIVE)
                except TimeoutError:
                    await resp.write(b"\n")
                    continue
                if line is None:
                    break
                if sub.dropped:
                    note = {
                        "ts": round(time.time(), 3),
                        "node": self.node,
                        "interface": None,
                        "kind": "events-dropped",
                        "message": f"{sub.dropped} events dropped (client too slow)",
                        "details": {"count": sub.dropped},
                    }
                    sub.dropped = 0
                    await resp.write((json.dumps(note) + "\n").encode())
                await resp.write(line)
        except ConnectionError:
            return resp  # the client went away
        finally:
            self._subscribers.discard(sub)
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
        return resp

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


def _family(value: Any) -> int | web.Response | None:
    """The ``family`` filter (query string or clear body): 4, 6 or absent."""
    if value is None:
        return None
    if str(value) not in ("4", "6"):
        return _error(400, f"family must be 4 or 6, not {value!r}")
    return int(value)


def _flag_natted(rows: list[dict[str, Any]]) -> None:
    """`N` on a peer whose IPsec SA charon says is NATed (IKE's NAT
    detection), when NHRP alone did not say so (a peer learnt by
    resolution): after S/D/I, as Cisco orders the letters."""
    for row in rows:
        attrs: list[str] = row["attributes"]
        if "N" not in attrs:
            attrs.insert(1 if attrs and attrs[0] in ("S", "D", "I") else 0, "N")
            row["attrb"] = "".join(attrs)


def _page(request: web.Request, states: frozenset[str] | None) -> Page | web.Response:
    """The list views' filters and page (api/paging.py), or a 400 naming the parameter."""
    try:
        return parse_page(request.query, states)
    except QueryError as exc:
        return _error(400, str(exc))


def _offer(sub: _Subscriber, line: bytes | None, *, force: bool = False) -> None:
    try:
        sub.queue.put_nowait(line)
    except asyncio.QueueFull:
        if not force:
            sub.dropped += 1
            return
        # The end-of-stream marker must get through: make room for it.
        with contextlib.suppress(asyncio.QueueEmpty):
            sub.queue.get_nowait()
        sub.queue.put_nowait(line)
