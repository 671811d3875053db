"""The lab's `routing:` key and the FRR configs it gives each dmvpn router.

Pure text from the topology (no I/O), checked without root;
`dmvpn.lab.routingd` writes the files into the lab's run directory
(`<node>.routing/`) and runs the daemons. The files are plain FRR 8.4
configs for one daemon each: an engineer can copy them to a real router
running `dmvpn run` beside FRR (docs/ROUTING.md).

    routing: static                 the default: the daemon's static routes (today's lab)
    routing: ospf | rip | eigrp | bgp
    routing:
      protocol: ospf
      ospf_network: broadcast       | point-to-multipoint | non-broadcast
                                    | point-to-multipoint non-broadcast
      split_horizon: true           rip, eigrp: on the hub's tunnel interface
      bfd: false                    bfdd, and BFD on every tunnel adjacency
      summary_only: false           the hub advertises only lan_summary (phase 3)

Timers are fast so that a lab converges in seconds (OSPF hello 1 s, dead
4 s; RIP updates every 5 s; BGP keepalive 1 s, hold 3 s). What each choice
shows is in docs/ROUTING.md: the seed's limitations, live.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

if TYPE_CHECKING:
    from .topology import NodePlan, Topology

__all__ = [
    "DAEMONS",
    "EIGRP_INTERFACE",
    "TUNNEL",
    "RoutingSpec",
    "daemon_configs",
    "daemons_for",
]

Protocol = Literal["static", "ospf", "rip", "eigrp", "bgp"]
OspfNetwork = Literal[
    "broadcast", "point-to-multipoint", "point-to-multipoint non-broadcast", "non-broadcast"
]
# The daemon of each protocol (zebra always runs first).
DAEMONS: dict[str, str] = {"ospf": "ospfd", "rip": "ripd", "eigrp": "eigrpd", "bgp": "bgpd"}
TUNNEL = "dmvpn0"  # topology.TUNNEL_INTERFACE (not imported: topology imports us)
LAN = "lan0"  # netns.LAN_INTERFACE
AS_NUMBER = 65000
EIGRP_AS = 1
# eigrpd (FRR 8.4) refuses interface settings while reading its startup
# config: zebra has not told it about the interface yet, so no EIGRP
# interface exists ("Config Failed", an internal inconsistency at validate).
# The lab applies them over vtysh once eigrpd lists the interface.
EIGRP_INTERFACE = ["ip hello-interval eigrp 1", "ip hold-time eigrp 4"]


class RoutingSpec(BaseModel):
    """How routes cross the cloud (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: Protocol = "static"
    split_horizon: bool = True
    ospf_network: OspfNetwork = "broadcast"
    bfd: bool = False
    summary_only: bool = False

    @model_validator(mode="before")
    @classmethod
    def _word(cls, data: Any) -> Any:
        # `routing: ospf` is short for `routing: {protocol: ospf}`.
        return {"protocol": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _consistent(self) -> RoutingSpec:
        if self.protocol == "static" and (self.bfd or self.summary_only):
            raise ValueError("bfd and summary_only need a routing protocol (static has none)")
        if self.protocol == "eigrp" and not self.split_horizon:
            # FRR 8.4 eigrpd: "split-horizon command not implemented yet".
            raise ValueError(
                "split_horizon: false is not available with eigrp: FRR's eigrpd does not "
                "implement the split-horizon switch (use rip to show it)"
            )
        if self.protocol not in ("ospf",) and self.ospf_network != "broadcast":
            raise ValueError("ospf_network applies to protocol: ospf only")
        if self.summary_only and self.protocol not in ("bgp", "rip"):
            raise ValueError(
                "summary_only: the lab summarises with bgp (aggregate-address) or rip "
                "(a summary route redistributed instead of the LANs); OSPF summarises "
                "only between areas"
            )
        return self

    @property
    def dynamic(self) -> bool:
        return self.protocol != "static"


def daemons_for(spec: RoutingSpec) -> list[str]:
    """The FRR daemons a router runs, in start order (zebra first)."""
    if not spec.dynamic:
        return []
    return ["zebra", DAEMONS[spec.protocol], *(["bfdd"] if spec.bfd else [])]


def daemon_configs(topo: Topology, name: str, logs: str) -> dict[str, str]:
    """Daemon name -> its config file's text, for one dmvpn router."""
    spec: RoutingSpec = topo.routing
    me = topo.plan(name)
    if me.role == "host":
        raise ValueError(f"{name} is a LAN host: it runs no routing daemons")
    head = [f"hostname {name}", f"log file {logs}/%s.log", "!"]

    def conf(daemon: str, body: list[str]) -> str:
        return "\n".join([*head, *body, ""]).replace("%s", daemon, 1)

    out = {"zebra": conf("zebra", [])}
    builder = {"ospf": _ospf, "rip": _rip, "eigrp": _eigrp, "bgp": _bgp}[spec.protocol]
    out[DAEMONS[spec.protocol]] = conf(DAEMONS[spec.protocol], builder(topo, me, spec))
    if spec.bfd:
        out["bfdd"] = conf("bfdd", ["bfd", "!"])
    return out


def _tunnel_ip(p: NodePlan) -> str:
    assert p.tunnel is not None
    return str(p.tunnel.ip)


def _ospf(topo: Topology, me: NodePlan, spec: RoutingSpec) -> list[str]:
    hub = me.role == "hub"
    itf = [f"interface {TUNNEL}", f" ip ospf network {spec.ospf_network}"]
    if spec.ospf_network in ("broadcast", "non-broadcast"):
        # The seed: the hub must be the DR (it alone hears every spoke, since
        # spokes' multicast goes only to the NHSes); spokes never stand.
        itf.append(f" ip ospf priority {255 if hub else 0}")
    itf += [
        " ip ospf hello-interval 1",
        " ip ospf dead-interval 4",
        " ip ospf retransmit-interval 1",
    ]
    if spec.bfd:
        itf.append(" ip ospf bfd")
    itf.append("!")
    router = [
        "router ospf",
        f" ospf router-id {_tunnel_ip(me)}",
        f" network {topo.tunnel_network} area 0",
        " timers throttle spf 0 50 500",
    ]
    if me.lan is not None:
        router += [f" network {me.lan.network} area 0", f" passive-interface {LAN}"]
    if me.site is not None:
        # Dual spoke: the gateway's macvlan (daemon/vrrp.py) is in the LAN's
        # network; no hellos from it.
        router.append(" passive-interface vrrp1")
    if hub and "non-broadcast" in spec.ospf_network:
        # No multicast hellos on a non-broadcast network: the hub names its
        # neighbours (the spokes then answer by unicast).
        router += [f" neighbor {_tunnel_ip(s)}" for s in topo.spokes]
    return [*itf, *router, "!"]


def _rip(topo: Topology, me: NodePlan, spec: RoutingSpec) -> list[str]:
    hub = me.role == "hub"
    itf = [f"interface {TUNNEL}"]
    if hub and not spec.split_horizon:
        itf.append(" no ip rip split-horizon")
    itf.append("!")
    router = ["router rip", " version 2", f" network {TUNNEL}", " timers basic 5 15 10"]
    if me.lan is not None:
        router += [f" network {LAN}", f" passive-interface {LAN}"]
    if hub and spec.summary_only:
        # The hub originates the summary; with split horizon on, the spokes'
        # own LANs never go back out of the tunnel: spokes learn the summary only.
        router.append(f" route {topo.lan_summary}")
    return [*itf, *router, "!"]


def _eigrp(topo: Topology, me: NodePlan, spec: RoutingSpec) -> list[str]:
    router = [f"router eigrp {EIGRP_AS}", f" eigrp router-id {_tunnel_ip(me)}"]
    router.append(f" network {topo.tunnel_network}")
    if me.lan is not None:
        router.append(f" network {me.lan.network}")
    # In the file for a real router's copy; eigrpd refuses them there at
    # start (routingd applies them again: EIGRP_INTERFACE).
    itf = [f"interface {TUNNEL}", *(f" {c}" for c in EIGRP_INTERFACE), "!"]
    return [*itf, *router, "!"]


def _bgp(topo: Topology, me: NodePlan, spec: RoutingSpec) -> list[str]:
    lines = [
        f"router bgp {AS_NUMBER}",
        f" bgp router-id {_tunnel_ip(me)}",
        " no bgp ebgp-requires-policy",
        " no bgp network import-check",
    ]
    if me.role == "hub":
        # Dynamic neighbours: any spoke of the tunnel network may peer, as
        # spokes come and go (Cisco `bgp listen range`).
        lines += [
            " neighbor SPOKES peer-group",
            f" neighbor SPOKES remote-as {AS_NUMBER}",
            " neighbor SPOKES timers 1 3",
            *([" neighbor SPOKES bfd"] if spec.bfd else []),
            f" bgp listen range {topo.tunnel_network} peer-group SPOKES",
            " address-family ipv4 unicast",
            # A route reflector keeps the originating spoke as next hop:
            # phase 2's direct tunnel; with summary_only, the hub's summary.
            "  neighbor SPOKES route-reflector-client",
        ]
        if spec.summary_only:
            lines.append(f"  aggregate-address {topo.lan_summary} summary-only")
        lines.append(" exit-address-family")
    else:
        for hub in topo.hubs:
            ip = _tunnel_ip(hub)
            lines += [
                f" neighbor {ip} remote-as {AS_NUMBER}",
                f" neighbor {ip} timers 1 3",
                f" neighbor {ip} timers connect 1",
                *([f" neighbor {ip} bfd"] if spec.bfd else []),
            ]
        lines.append(" address-family ipv4 unicast")
        if me.lan is not None:
            lines.append(f"  network {me.lan.network}")
        lines.append(" exit-address-family")
    return [*lines, "!"]
