"""The config's `routes:` in the kernel, following NHS state.

A route with one `via` is installed once, as it always was. A tracked route
(`via: [a, b]` or `via: nhs`, config.Route) is recomputed whenever an NHS
goes up, down or to standby: its next hops are those usable now (ECMP when
several; with `track`, a next hop that is not an NHS is usable while it
answers ICMP echoes, the hub's route to a dual spoke site), and it is
withdrawn when none is, as Cisco withdraws a static route whose track
object is down. This is what makes a dual-hub cloud with
static routing survive a hub: without it the summary route kept pointing at
the dead hub (issue 12, measured: never recovered).

`next_hops` is the decision (pure); `StaticRoutes` applies it with pyroute2.
Tracked routes carry protocol `static` (RTPROT_STATIC, 4) so that they can
be told from an operator's and from shortcuts (177) in `ip route`.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Protocol

from dmvpn.config import Route
from dmvpn.nhrp.client import NhsState, NhsStatus

__all__ = ["RTPROT_STATIC", "StaticRoutes", "next_hops"]

RTPROT_STATIC = 4  # linux/rtnetlink.h: "route installed by administrator"

Hop = IPv4Address | IPv6Address


class Log(Protocol):
    def __call__(self, kind: str, message: str, **details: Any) -> None: ...


def next_hops(
    route: Route, nhs: Iterable[NhsStatus], alive: Container[Hop] = ()
) -> tuple[Hop, ...]:
    """The next hops `route` should have now, given every NHS's state and,
    for a route with `track`, the next hops answering echoes (`alive`)."""
    if isinstance(route.via, IPv4Address | IPv6Address):
        return (route.via,)
    family = [
        s
        for s in nhs
        if isinstance(s.protocol, IPv4Address | IPv6Address)
        and s.protocol.version == route.prefix.version
    ]
    if route.via == "nhs":
        up = [s for s in family if s.state is NhsState.UP]
        if not up:
            return ()
        best = min(s.priority for s in up)
        return tuple(dict.fromkeys(s.protocol for s in up if s.priority == best))  # type: ignore[misc]
    states = {s.protocol: s.state for s in family}
    return tuple(
        h
        for h in route.via
        if (states[h] is NhsState.UP if h in states else route.track is None or h in alive)
    )


class StaticRoutes:
    """Installs the config's routes and keeps the tracked ones current.

    `nhs` is asked for every NHS's state (all interfaces, both families)."""

    def __init__(
        self,
        ipr: Any,
        log: Log,
        nhs: Callable[[], list[NhsStatus]],
        alive: Callable[[], Container[Hop]] = lambda: (),
    ) -> None:
        self.ipr = ipr
        self.log = log
        self.nhs = nhs
        self.alive = alive  # next hops of routes with `track` answering echoes
        self.routes: list[Route] = []
        self.installed: dict[Route, tuple[Hop, ...]] = {}  # tracked routes as they are now

    def add(self, routes: Iterable[Route]) -> None:
        for route in routes:
            self.routes.append(route)
            if not route.tracked:
                self._kernel("replace", route, (route.via,))  # type: ignore[arg-type]
        self.update()

    def remove(self, routes: Iterable[Route]) -> None:
        for route in routes:
            if route in self.routes:
                self.routes.remove(route)
            if not route.tracked:
                self._kernel("del", route, (route.via,))  # type: ignore[arg-type]
            elif self.installed.pop(route, ()):
                self._kernel("del", route, ())

    def update(self) -> None:
        """Recompute the tracked routes (an NHS changed state)."""
        states = self.nhs()
        alive = self.alive()
        for route in self.routes:
            if not route.tracked:
                continue
            hops = next_hops(route, states, alive)
            was = self.installed.get(route, ())
            if hops == was:
                continue
            if hops:
                if not self._kernel("replace", route, hops):
                    continue
                self.installed[route] = hops
            else:
                self._kernel("del", route, ())
                self.installed.pop(route, None)
            kind = "route-withdrawn" if not hops else "route-moved" if was else "route-installed"
            self.log(
                kind,
                f"{route.prefix} via {', '.join(map(str, hops))}"
                if hops
                else f"{route.prefix}: no usable next hop (every NHS it follows is down)",
                prefix=str(route.prefix),
                via=[str(h) for h in hops],
                was=[str(h) for h in was],
            )

    def _kernel(self, op: str, route: Route, hops: tuple[Hop, ...]) -> bool:
        args: dict[str, Any] = {"dst": str(route.prefix)}
        if route.tracked:
            args["proto"] = RTPROT_STATIC
        if len(hops) == 1:
            args["gateway"] = str(hops[0])
        elif hops:
            args["multipath"] = [{"gateway": str(h)} for h in hops]
        try:
            self.ipr.route(op, **args)
        except Exception as exc:
            if op != "del":  # a failed delete: already gone
                self.log("route-error", f"could not {op} {route.prefix}: {exc}")
            return False
        return True
