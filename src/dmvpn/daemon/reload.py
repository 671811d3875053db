"""SIGHUP: what a new config file changes, and whether it can be applied
without dropping working tunnels.

Applied live: routes, and the NHRP knobs the engine reads at each use
(holding time, redirect, shortcut, authentication and its failure action,
max-send, map multicast, resolution). Anything that defines the interface
itself (name, addresses, tunnel source and key, network-id, NHS list, static
maps) needs the interface restarted, which would drop its tunnels: the
reload is refused with the reason and the daemon keeps running as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dmvpn.config import Interface, NodeConfig, Route

LIVE_NHRP_FIELDS = frozenset(
    {
        "holdtime",
        "redirect",
        "shortcut",
        "authentication",
        "auth_failure",
        "max_send",
        "map_multicast",
        "resolution",
        "registration_no_unique",
    }
)


@dataclass
class ReloadPlan:
    retune: dict[str, Interface] = field(default_factory=dict)  # name -> new interface config
    add_routes: list[Route] = field(default_factory=list)
    remove_routes: list[Route] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused

    @property
    def empty(self) -> bool:
        return not (self.retune or self.add_routes or self.remove_routes)


def plan_reload(old: NodeConfig, new: NodeConfig) -> ReloadPlan:
    plan = ReloadPlan()
    if old.node != new.node:
        plan.refused.append(f"node name changed ({old.node} -> {new.node}): restart the daemon")
    if old.socket != new.socket:
        plan.refused.append("socket changed: restart the daemon")
    if old.ipsec != new.ipsec:
        # Credentials and proposals are loaded into charon at start; changing
        # them live would leave SAs made under the old ones.
        plan.refused.append("ipsec changed: restart the daemon to apply it")
    if old.vrrp != new.vrrp:
        # The groups' sockets and macvlans are made at start.
        plan.refused.append("vrrp changed: restart the daemon to apply it")
    old_itfs = {i.name: i for i in old.interfaces}
    new_itfs = {i.name: i for i in new.interfaces}
    for name in sorted(old_itfs.keys() - new_itfs.keys()):
        plan.refused.append(f"interface {name} removed: restart the daemon to remove it")
    for name in sorted(new_itfs.keys() - old_itfs.keys()):
        plan.refused.append(f"interface {name} added: restart the daemon to add it")
    for name in sorted(old_itfs.keys() & new_itfs.keys()):
        a, b = old_itfs[name], new_itfs[name]
        if a == b:
            continue
        fixed = []
        # The data plane owns the interface's devices and programs: another
        # one means a new interface.
        for key in ("address", "ipv6_address", "mtu", "tunnel", "dataplane", "namespace", "routes"):
            if getattr(a, key) != getattr(b, key):
                fixed.append(key)
        for key in type(a.nhrp).model_fields:
            if key not in LIVE_NHRP_FIELDS and getattr(a.nhrp, key) != getattr(b.nhrp, key):
                fixed.append(f"nhrp.{key}")
        if fixed:
            plan.refused.append(
                f"interface {name}: {', '.join(fixed)} changed; applying it means restarting "
                "the interface and dropping its tunnels: restart the daemon to do that"
            )
        else:
            plan.retune[name] = b
    old_routes, new_routes = set(old.routes), set(new.routes)
    plan.add_routes = sorted(new_routes - old_routes, key=str)
    plan.remove_routes = sorted(old_routes - new_routes, key=str)
    if any(r.track is not None for r in [*plan.add_routes, *plan.remove_routes]):
        # Their echo probers are started with the node.
        plan.refused.append("a route with track changed: restart the daemon to apply it")
    return plan
