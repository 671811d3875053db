"""What the lab builds: hubs, spokes and the LAN hosts behind them, and their addresses.

The topology is data only (no I/O beyond reading its YAML file), so the
addressing plan and the node configs it produces can be checked without root.
`dmvpn.lab.netns.Lab` turns it into network namespaces.

Addressing plan, by position in the hub and spoke lists (1-based), all only
inside the lab's namespaces so that nothing leaks onto the host's networks:

    underlay  172.30.0.0/24   hub N = .N,  spoke N = .(10+N)   (the NBMA addresses)
    tunnel    10.0.0.0/24     hub N = .N,  spoke N = .(10+N)
    LAN       spoke N: 192.168.N.0/24, the spoke at .1, its host (hostN) at .10

With `ipv6: true` the overlay is dual-stack (IPv6 over the same IPv4
underlay, one NHRP instance per family):

    tunnel    fd00::/64           hub N = fd00::N, spoke N = fd00::1N (as for IPv4)
    LAN       spoke N: fd00:N::/64, the spoke at ::1, its host at ::10

With `underlay: ipv6` the underlay is IPv6 only: every router's nbma0 has
an IPv6 address and no IPv4 one, and the daemons run GRE over IPv6 with
NHRP's IPv6 NBMA address family (docs/ARCHITECTURE.md, "IPv6 underlay"):

    underlay  fd30::/64   hub N = fd30::N, spoke N = fd30::1N (the IPv4 plan's
                          last octet written as hex digits: 172.30.0.11 -> fd30::11)

Every IPv4 address can be overridden per node; the result is checked for
clashes before anything is built.

Hierarchical hubs: a hub's `nhs: [central]` makes it a regional hub (an NHS
that registers with the central hub and routes the lab's LAN summary through
it); a spoke's `nhs: [regional]` registers with that hub only. Each hub
routes a spoke's LAN to the spoke if it registers there, else to the hub
below it whose region holds the spoke. Without `nhs`, spokes register with
every hub and hubs with none (the default).

A hub or spoke is `kind: dmvpn` (our daemon, the default), `kind: frr`:
FRR's nhrpd on a kernel mGRE in a QEMU guest, configured from the same
settings (`dmvpn.lab.frrconf`, `dmvpn.lab.frrnode`), for interop, or
`kind: vm`: our daemon in a QEMU guest (`dmvpn.lab.vmnode`), on the guest
kernel's mGRE (`dataplane: kernel`) unless the node says otherwise. frr and
vm nodes are "guests": the lab wires them alike (taps), and refuses for both
what it builds for namespaces only (IPv6, NAT, access routers, IPsec, ...).

`dataplane:` per node overrides the topology's for that dmvpn or vm node;
frr nodes take none (nhrpd always uses the kernel's mGRE).

Why one module of this length: the schema, its validation and the addressing
plan derived from it are one concern (what the lab is), and each is small.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from dmvpn.config import ConfigError, read_yaml
from dmvpn.qospolicy import parse_rate
from dmvpn.wire import group_problem

from .accessplan import AccessPlan, AccessSpec, plan_access_router
from .natplan import INSIDE_NETWORK, NatPlan, plan_nat_routers
from .routingconf import RoutingSpec

__all__ = [
    "DEFAULT_PREFIX",
    "INET",
    "TUNNEL_INTERFACE",
    "HubSpec",
    "Kind",
    "NodeDescription",
    "NodePlan",
    "Nodes",
    "Role",
    "SpokeSpec",
    "Topology",
    "TopologyError",
    "VrfDescription",
    "namespace_name",
    "vrf_interface",
    "vrf_namespace",
    "VRF_CLOUDS",
]

Role = Literal["hub", "spoke", "host"]
# What runs on a router: our daemon in a namespace, or FRR's zebra + nhrpd on a
# real kernel mGRE inside a QEMU guest (dmvpn.lab.frrnode), for interop, or
# our daemon in a QEMU guest (dmvpn.lab.vmnode).
Kind = Literal["dmvpn", "frr", "vm"]
# A node's data plane (config.Interface.dataplane).
DataPlaneName = Literal["userspace", "ebpf", "kernel", "auto"]
# What a vm node runs on unless it says: the reason to boot a guest at all.
VM_DATAPLANE = "kernel"

DEFAULT_PREFIX = "dmvpn-"
# The namespace holding the underlay bridge: the lab's "internet".
INET = "inet"
# The DMVPN interface every router's node config declares.
TUNNEL_INTERFACE = "dmvpn0"
# Lower-case letters and digits, no dash: a namespace name is PREFIX + node and
# prefixes end in "-", so a namespace always tells which lab it belongs to (see
# netns.Lab.down). At most 13 characters: the bridge port is "v-" + name, and
# Linux interface names have at most 15.
NodeName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9]{0,12}$")]
# Dual spoke: how fast the hubs find a site's spoke dead (echoes, 0.9 s)
# and the spokes a dead master (3 adverts + skew, 0.7 s).
SITE_TRACK = {"interval": 0.3, "multiplier": 3}
SITE_VRRP_INTERVAL = 0.2
# Cisco's cleartext NHRP password: printable ASCII, at most 8 characters.
Password = Annotated[str, Field(min_length=1, max_length=8, pattern=r"^[ -~]+$")]


def underlay_namespace(prefix: str, node: str) -> str:
    """Where a router's underlay lives with `front_door_vrf` (its nbma0)."""
    return f"{namespace_name(prefix, node)}-ul"


# `vrf_clouds`: how many clouds, each in a VRF of its own on every router.
VRF_CLOUDS = 2


def vrf_namespace(prefix: str, node: str, k: int, *, host: bool = False) -> str:
    """With `vrf_clouds`, the namespace of cloud ``k``'s (1-based) side of
    ``node``: a router's VRF k (its dmvpnK, LAN and routes) is `<router
    namespace>-vrfK`; a host of VRF 1 keeps its usual namespace, of VRF K
    `<host namespace>-vrfK`."""
    if host and k == 1:
        return namespace_name(prefix, node)
    return f"{namespace_name(prefix, node)}-vrf{k}"


def vrf_interface(k: int) -> str:
    """With `vrf_clouds`, the DMVPN interface of cloud ``k`` (in VRF k)."""
    return f"dmvpn{k}"


def namespace_name(prefix: str, node: str) -> str:
    """The network namespace of `node` in the lab with this prefix."""
    return prefix + node


class _Strict(BaseModel):
    # Unknown keys are errors, as in node configs: a typo must not become a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class HubSpec(_Strict):
    """A hub (NHS); addresses left out follow the addressing plan."""

    name: NodeName
    kind: Kind = "dmvpn"
    # This node's data plane (dmvpn and vm nodes); None: the topology's.
    dataplane: DataPlaneName | None = None
    nbma: IPv4Address | None = None  # underlay address
    tunnel: IPv4Address | None = None  # tunnel (protocol) address
    # Hierarchical hubs: the hubs this one registers with (a regional hub
    # under a central one); none by default.
    nhs: list[NodeName] | None = None


class SpokeSpec(_Strict):
    """A spoke and the LAN host behind it; addresses left out follow the plan."""

    name: NodeName
    kind: Kind = "dmvpn"
    # This node's data plane (dmvpn and vm nodes); None: the topology's.
    dataplane: DataPlaneName | None = None
    nbma: IPv4Address | None = None
    tunnel: IPv4Address | None = None
    lan: IPv4Network | None = None  # the spoke takes .1, its host .10
    host: NodeName | None = None  # default host<N> for spoke number N
    # Cisco's `ip nhrp registration no-unique`; off = unique registrations,
    # which a hub refuses (code 14) to move to another NBMA until they expire.
    registration_no_unique: bool = True
    # Behind the lab's NAT router of this name (dmvpn.lab.natplan): its
    # underlay address is then on that router's inside network.
    nat: NodeName | None = None
    # An access router of its own between it and the underlay bridge: a
    # smaller link, a path MTU black hole, a firewall (dmvpn.lab.accessplan).
    access: AccessSpec | None = None
    # `ip nhrp group NAME`: the hubs shape what they send this spoke by the
    # topology's `qos` rate for NAME (per-tunnel QoS).
    group: str | None = None
    # Dual spoke (docs/ROUTING.md): spokes naming the same site share one LAN
    # and its host (the first one's); the host's gateway, .1, is held by
    # VRRP (the first spoke preferred), the spokes are at .2, .3, ...
    site: NodeName | None = None
    # The hubs this spoke registers with (hierarchical hubs: its regional
    # hub); every hub by default.
    nhs: list[NodeName] | None = None


def _default_hubs() -> list[HubSpec]:
    return [HubSpec(name="hub1")]


def _default_spokes() -> list[SpokeSpec]:
    return [SpokeSpec(name=f"spoke{n}") for n in (1, 2, 3)]


class Nodes(_Strict):
    hubs: Annotated[list[HubSpec], Field(min_length=1)] = Field(default_factory=_default_hubs)
    spokes: list[SpokeSpec] = Field(default_factory=_default_spokes)


@dataclass(frozen=True, slots=True)
class NodePlan:
    """One node with every address resolved (what `up()` builds)."""

    name: str
    role: Role
    index: int  # 1-based position among the hubs or spokes; a host has its spoke's
    nbma: IPv4Interface | None  # routers only
    tunnel: IPv4Interface | None  # routers only
    lan: IPv4Interface | None  # spokes and hosts: this node's LAN address
    peer: str | None  # a spoke's host, a host's spoke
    kind: Kind = "dmvpn"  # hosts are plain namespaces: always "dmvpn"
    registration_no_unique: bool = True  # spokes only
    tunnel6: IPv6Interface | None = None  # routers of a dual-stack lab
    lan6: IPv6Interface | None = None  # spokes and hosts of a dual-stack lab
    nat: str | None = None  # spokes behind a lab NAT router: its name
    access: str | None = None  # spokes with an access router: its name
    site: str | None = None  # dual spoke: the site shared with other spokes and their host
    nbma6: IPv6Interface | None = None  # routers of an `underlay: ipv6` lab: the NBMA address


class NodeDescription(TypedDict):
    """One row of `lab status`: plain strings, ready for a table or JSON."""

    name: str
    role: Role
    kind: Kind
    namespace: str
    underlay: str | None
    tunnel: str | None
    lan: str | None


class VrfDescription(TypedDict):
    """One VRF of a router in a `vrf_clouds` lab: for `lab status` and `lab exec --vrf`."""

    vrf: int  # 1-based: cloud K
    namespace: str  # the router's VRF K (dmvpnK, its LAN and routes)
    interface: str
    key: int  # GRE key
    network_id: int
    host: str | None  # a spoke's host in this VRF (`lab exec --vrf K HOST`)
    host_namespace: str | None


class TopologyError(ConfigError):
    """A topology file that cannot be used, with one line per problem (path: reason)."""


class Topology(_Strict):
    """The lab's YAML file. Everything has a default: `{}` is the default lab."""

    phase: Literal[1, 2, 3] = 3
    key: Annotated[int, Field(ge=0, le=0xFFFFFFFF)] = 42  # GRE key
    holdtime: Annotated[int, Field(ge=3, le=65535)] = 60
    authentication: Password | None = None
    # IPsec on every dmvpn router: a pre-shared key for the whole cloud
    # (docs/IPSEC.md); each router runs a private strongSwan charon.
    ipsec_psk: Annotated[str, Field(min_length=16, max_length=256)] | None = None
    underlay_network: IPv4Network = IPv4Network("172.30.0.0/24")
    tunnel_network: IPv4Network = IPv4Network("10.0.0.0/24")
    # What phase 1 and 3 spokes route via hub1: every LAN must be inside it.
    lan_summary: IPv4Network = IPv4Network("192.168.0.0/16")
    nodes: Nodes = Field(default_factory=Nodes)
    # The root directory the frr nodes' QEMU guests boot from: the
    # host's / by default (Debian 12: FRR 8.4), or a Debian root with a newer
    # FRR (`dmvpn.lab.frrroot`: Debian 13, FRR 10.3, which has NHRP
    # authentication).
    frr_root: Annotated[str, Field(pattern=r"^/")] = "/"
    # A dual-stack overlay (module docstring): IPv6 tunnel addresses and LANs.
    ipv6: bool = False
    # The underlay's family (module docstring): `ipv6` gives every router an
    # IPv6 NBMA address in underlay_network6 (and no IPv4 one): GRE over IPv6.
    underlay: Literal["ipv4", "ipv6"] = "ipv4"
    underlay_network6: IPv6Network = IPv6Network("fd30::/64")
    # Every dmvpn router's data plane (config.Interface.dataplane); None:
    # the config's default.
    dataplane: Literal["userspace", "ebpf", "auto"] | None = None
    # Every dmvpn router's `tcp_adjust_mss` (config.Interface); None: off.
    tcp_adjust_mss: Annotated[int, Field(ge=500, le=1460)] | None = None
    # Every dmvpn router's `tunnel.path_mtu_discovery` (config.Tunnel).
    path_mtu_discovery: bool = False
    tunnel_network6: IPv6Network = IPv6Network("fd00::/64")
    lan_summary6: IPv6Network = IPv6Network("fd00::/16")
    # How routes cross the cloud: the daemon's static routes (default) or
    # FRR routing daemons beside it in each router's namespace
    # (dmvpn.lab.routingconf, docs/ROUTING.md).
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    # Dual hub, dual cloud (docs/ROUTING.md): one DMVPN interface per hub on
    # every spoke (dmvpnK, GRE key key+K, tunnel network K after
    # tunnel_network), each hub alone on its cloud.
    dual_cloud: bool = False
    # Per-tunnel QoS on every dmvpn hub: NHRP group -> rate (`10mbit`), the
    # shaper of each spoke whose `group` names it (qospolicy.py).
    qos: dict[str, str | int] = {}
    # Front-door VRF: every router's underlay (nbma0, its address and routes)
    # in a namespace of its own, `<router namespace>-ul`; the daemon sends
    # GRE there (tunnel.namespace) and keeps the tunnel and LAN in its own.
    front_door_vrf: bool = False
    # Several clouds in separate VRFs (docs/VRF.md): VRF_CLOUDS clouds with
    # the same addressing plan (tunnel addresses and LANs overlap), cloud K
    # with GRE key key+K-1 and network-id K; one daemon per router with an
    # interface dmvpnK per cloud, each in its VRF's namespace (`namespace`,
    # vrf_namespace()) holding its LAN and routes (interface `routes`),
    # GRE from the router's own underlay; every spoke's host once per VRF.
    vrf_clouds: bool = False

    @field_validator("qos")
    @classmethod
    def _qos(cls, v: dict[str, str | int]) -> dict[str, str | int]:
        for group, rate in v.items():
            if (problem := group_problem(group)) is not None:
                raise ValueError(f"group {group!r} {problem}")
            try:
                parse_rate(rate)
            except ValueError as exc:
                raise ValueError(f"{group}: {exc}") from None
        return v

    _plan: dict[str, NodePlan] = PrivateAttr(default_factory=dict)
    _nat: dict[str, NatPlan] = PrivateAttr(default_factory=dict)
    _access: dict[str, AccessPlan] = PrivateAttr(default_factory=dict)

    # -- loading ------------------------------------------------------------

    @classmethod
    def default(cls) -> Topology:
        """Phase 3, hub1, spoke1..spoke3, host1..host3."""
        return cls()

    @classmethod
    def from_data(cls, data: Any, source: Path | str = "<topology>") -> Topology:
        """Validate parsed YAML; every problem is reported with its field path."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise TopologyError(source, ["(top level): expected a mapping of settings"])
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise TopologyError(source, _problems(exc)) from None

    @classmethod
    def load(cls, path: Path | str | None = None) -> Topology:
        """The topology in `path`, or the default one when no file is given."""
        if path is None:
            return cls.default()
        path = Path(path)
        try:
            data = read_yaml(path)
        except ConfigError as exc:
            raise TopologyError(path, exc.problems) from None
        return cls.from_data(data, path)

    # -- the addressing plan ------------------------------------------------

    @model_validator(mode="after")
    def _resolve(self) -> Topology:
        # Resolve once, here, so that a clash is a validation error with a path
        # rather than an `ip` failure halfway through building the lab.
        plan: dict[str, NodePlan] = {}
        where: dict[str, str] = {}  # node name -> field path, for messages
        used: dict[tuple[str, IPv4Address], str] = {}  # (kind, address) -> owner

        def claim(path: str, name: str) -> None:
            if name == INET:
                raise ValueError(f"{path}: {INET!r} is reserved (the underlay namespace)")
            if name in where:
                raise ValueError(f"{path}: name {name!r} is already used by {where[name]}")
            where[name] = path

        def address(path: str, kind: str, net: IPv4Network, ip: IPv4Address) -> IPv4Interface:
            if ip not in net or ip in (net.network_address, net.broadcast_address):
                raise ValueError(f"{path} {ip} is not a host address of {net}")
            if (kind, ip) in used:
                raise ValueError(f"{path} {ip} is also the {kind} address of {used[kind, ip]}")
            return IPv4Interface(f"{ip}/{net.prefixlen}")

        def nth(net: IPv4Network, n: int, path: str) -> IPv4Address:
            if n >= net.num_addresses:
                raise ValueError(f"{path}: no address number {n} in {net} for the default plan")
            return net[n]

        if self.underlay_network.overlaps(self.tunnel_network):
            raise ValueError(
                f"underlay_network {self.underlay_network} overlaps "
                f"tunnel_network {self.tunnel_network}"
            )
        routers: list[tuple[Role, int, HubSpec | SpokeSpec, str]] = [
            ("hub", i, h, f"nodes.hubs.{i - 1}") for i, h in enumerate(self.nodes.hubs, 1)
        ]
        routers += [
            ("spoke", i, s, f"nodes.spokes.{i - 1}") for i, s in enumerate(self.nodes.spokes, 1)
        ]
        lans: list[tuple[IPv4Network, str]] = []
        sites: dict[str, NodePlan] = {}  # site -> its first spoke
        nats = self._resolve_nat(claim)
        self._access = {}  # filled by _plan_access, spoke by spoke
        for role, i, spec, path in routers:
            claim(path + ".name", spec.name)
            n = i if role == "hub" else 10 + i
            nat = nats.get(spec.nat) if isinstance(spec, SpokeSpec) and spec.nat else None
            if nat is not None:
                nbma_ip = nat.spoke_address(i).ip
                used["underlay", nbma_ip] = spec.name
                nbma = nat.spoke_address(i)
            else:
                nbma_ip = spec.nbma or nth(self.underlay_network, n, path + ".nbma")
                nbma = address(path + ".nbma", "underlay", self.underlay_network, nbma_ip)
                used["underlay", nbma_ip] = spec.name
            # Dual cloud: hub N alone on cloud N (cloud_network), spokes on every cloud.
            tun_net = self.cloud_network(i - 1) if self.dual_cloud and role == "hub" else None
            tun_net = tun_net or self.tunnel_network
            tun_ip = spec.tunnel or nth(tun_net, n, path + ".tunnel")
            tunnel = address(path + ".tunnel", "tunnel", tun_net, tun_ip)
            used["tunnel", tun_ip] = spec.name
            if not isinstance(spec, SpokeSpec):
                plan[spec.name] = NodePlan(
                    spec.name, role, i, nbma, tunnel, None, None, kind=spec.kind
                )
                continue
            host = spec.host or f"host{i}"
            first = sites.get(spec.site) if spec.site is not None else None
            if first is not None:
                # Another spoke of a site: its LAN and host are the first one's.
                if spec.lan is not None or spec.host is not None:
                    raise ValueError(
                        f"{path}: site {spec.site!r} has its LAN and host from "
                        f"{first.name}; leave lan and host out"
                    )
                assert first.lan is not None and first.peer is not None
                members = [p for p in plan.values() if p.site == spec.site and p.role == "spoke"]
                if len(members) >= 8:
                    raise ValueError(f"{path}.site: at most 8 spokes per site (the host is at .10)")
                lan_net = first.lan.network
                plan[spec.name] = NodePlan(
                    spec.name,
                    "spoke",
                    i,
                    nbma,
                    tunnel,
                    IPv4Interface(f"{lan_net[2 + len(members)]}/{lan_net.prefixlen}"),
                    first.peer,
                    kind=spec.kind,
                    registration_no_unique=spec.registration_no_unique,
                    nat=spec.nat,
                    site=spec.site,
                )
                continue
            if spec.lan is not None:
                lan = spec.lan
            elif i <= 255:
                lan = IPv4Network(f"192.168.{i}.0/24")
            else:
                raise ValueError(f"{path}.lan: spoke {i} needs an explicit LAN")
            if lan.num_addresses < 16:
                raise ValueError(f"{path}.lan {lan} is too small (the host is at .10)")
            if not lan.subnet_of(self.lan_summary):
                raise ValueError(f"{path}.lan {lan} is outside lan_summary {self.lan_summary}")
            for other, owner in lans:
                if lan.overlaps(other):
                    raise ValueError(f"{path}.lan {lan} overlaps {owner}'s LAN {other}")
            for other in (self.underlay_network, self.tunnel_network):
                if lan.overlaps(other):
                    raise ValueError(f"{path}.lan {lan} overlaps {other}")
            lans.append((lan, spec.name))
            claim(path + ".host", host)
            # A site's first spoke at .2: .1 is the gateway VRRP moves.
            spoke_lan = IPv4Interface(f"{lan[2 if spec.site else 1]}/{lan.prefixlen}")
            host_lan = IPv4Interface(f"{lan[10]}/{lan.prefixlen}")
            plan[spec.name] = NodePlan(
                spec.name,
                "spoke",
                i,
                nbma,
                tunnel,
                spoke_lan,
                host,
                kind=spec.kind,
                registration_no_unique=spec.registration_no_unique,
                nat=spec.nat,
                access=self._plan_access(spec, i, path, claim),
                site=spec.site,
            )
            if spec.site is not None:
                sites[spec.site] = plan[spec.name]
            plan[host] = NodePlan(host, "host", i, None, None, host_lan, spec.name, site=spec.site)
        for acc in self._access.values():
            if ("underlay", acc.address.ip) in used:
                owner = used["underlay", acc.address.ip]
                raise ValueError(
                    f"access router {acc.name} takes {acc.address.ip}, which is {owner}'s address"
                )
        if self.ipv6:
            plan = self._plan6(plan)
        if self.underlay == "ipv6":
            plan = self._plan_underlay6(plan)
        # Hubs, then spokes, then hosts: the order `up()` builds and `describe()` lists.
        order = sorted(plan.values(), key=lambda p: ("hub", "spoke", "host").index(p.role))
        self._plan = {p.name: p for p in order}
        if self.dual_cloud:
            self._check_dual_cloud(order)
        if sites:
            self._check_sites(order)
        self._check_dataplanes()
        if self.routing.dynamic and any(p.kind != "dmvpn" for p in order):
            raise ValueError("routing: the lab runs routing daemons beside dmvpn nodes only")
        if self.front_door_vrf:
            # What the daemon does not do with a front-door VRF yet (config.py).
            if any(p.kind != "dmvpn" for p in order):
                raise ValueError(
                    "front_door_vrf: dmvpn routers only (frr and vm nodes run in guests)"
                )
            if self.dataplane == "ebpf":
                raise ValueError("front_door_vrf: not yet with dataplane: ebpf")
        if self.vrf_clouds:
            clash = [
                name
                for name, on in (
                    ("dual_cloud", self.dual_cloud),
                    ("ipv6", self.ipv6),
                    ("routing (dynamic)", self.routing.dynamic),
                    ("dataplane: ebpf", self.dataplane == "ebpf"),
                    ("qos", bool(self.qos)),
                    ("spokes behind a lab NAT", any(p.nat for p in order)),
                    ("frr or vm nodes", any(p.kind != "dmvpn" for p in order)),
                )
                if on
            ]
            if clash:
                raise ValueError(f"vrf_clouds: not with {', '.join(clash)}")
        self._check_hierarchy()
        # `vm` nodes run our daemon, which runs its own charon in the guest.
        guests = " and ".join(sorted({p.kind for p in order if p.kind not in ("dmvpn", "vm")}))
        if self.ipsec_psk is not None and guests:
            raise ValueError(
                f"ipsec_psk: {guests} nodes run no strongSwan in the lab; "
                "use ipsec_psk with dmvpn and vm nodes only"
            )
        return self

    def _plan_underlay6(self, plan: dict[str, NodePlan]) -> dict[str, NodePlan]:
        """`underlay: ipv6`: each router's IPv6 NBMA address, from its IPv4
        plan's host number written as hex digits (172.30.0.11 -> fd30::11);
        and what the lab does not build over an IPv6 underlay, refused."""
        net6 = self.underlay_network6
        if net6.prefixlen > 64:
            raise ValueError(f"underlay_network6 {net6}: at most a /64")
        if self.underlay_network.prefixlen < 24:
            raise ValueError(
                "underlay: ipv6 derives addresses from a /24 or longer underlay_network"
            )
        unsupported = [
            name
            for name, on in (
                ("ipsec_psk", self.ipsec_psk is not None),
                ("dataplane: ebpf", self.dataplane == "ebpf"),
                ("path_mtu_discovery", self.path_mtu_discovery),
                ("qos", bool(self.qos)),
                ("dual_cloud", self.dual_cloud),
                ("vrf_clouds", self.vrf_clouds),
                ("front_door_vrf", self.front_door_vrf),
                ("spokes behind a lab NAT", any(p.nat for p in plan.values())),
                ("access routers", any(p.access for p in plan.values())),
                ("frr or vm nodes", any(p.kind != "dmvpn" for p in plan.values())),
            )
            if on
        ]
        if unsupported:
            raise ValueError(f"underlay: ipv6 is not built with {', '.join(unsupported)} yet")
        out = {}
        for name, p in plan.items():
            if p.nbma is not None:
                host = int(p.nbma.ip) - int(self.underlay_network.network_address)
                ip = net6[int(str(host), 16)]
                p = _replace_plan(p, nbma6=IPv6Interface(f"{ip}/{net6.prefixlen}"))
            out[name] = p
        return out

    def nbma_of(self, p: NodePlan) -> str:
        """A router's NBMA address as its node config gives it (IPv6 with
        `underlay: ipv6`)."""
        if self.underlay == "ipv6":
            assert p.nbma6 is not None
            return str(p.nbma6.ip)
        return str(_ip(p.nbma))

    def _specs(self) -> list[tuple[str, HubSpec | SpokeSpec]]:
        """Every router's spec with its path in the topology file."""
        specs: list[tuple[str, HubSpec | SpokeSpec]] = [
            (f"nodes.hubs.{i}", h) for i, h in enumerate(self.nodes.hubs)
        ]
        return specs + [(f"nodes.spokes.{i}", s) for i, s in enumerate(self.nodes.spokes)]

    def _check_dataplanes(self) -> None:
        """Per-node `dataplane:` where it can work (module docstring)."""
        for path, spec in self._specs():
            plane = spec.dataplane
            if spec.kind == "frr" and plane is not None:
                raise ValueError(
                    f"{path}.dataplane: an frr node runs nhrpd on the guest kernel's mGRE; "
                    "dataplane is for dmvpn and vm nodes"
                )
            if spec.kind == "vm" and plane == "ebpf":
                raise ValueError(
                    f"{path}.dataplane: ebpf is not built for guests (its programs are "
                    "compiled for the host's kernel); use kernel, userspace or auto"
                )
            mine = self.dataplane_of(spec.name)
            if plane == "ebpf" and (self.front_door_vrf or self.vrf_clouds):
                # As for the topology's own `dataplane: ebpf` (refused below).
                what = "front_door_vrf" if self.front_door_vrf else "vrf_clouds"
                raise ValueError(f"{path}.dataplane: ebpf is not yet with {what}")
            if mine != "kernel":
                continue
            # What config.Interface refuses on the kernel plane, said here.
            if self.ipv6:
                raise ValueError(f"{path}.dataplane: kernel does not do ipv6 yet")
            if self.front_door_vrf:
                raise ValueError(f"{path}.dataplane: kernel does not do front_door_vrf yet")

    def dataplane_of(self, name: str) -> str | None:
        """A dmvpn or vm router's data plane: its own `dataplane`, else for a
        vm node `kernel`, else the topology's (None: the config's default)."""
        spec = next((s for _, s in self._specs() if s.name == name), None)
        if spec is None or spec.kind == "frr":
            return None
        if spec.dataplane is not None:
            return spec.dataplane
        return VM_DATAPLANE if spec.kind == "vm" else self.dataplane

    def _check_hierarchy(self) -> None:
        """`nhs:` names hubs, never the node itself, and hubs form no loop."""
        specs: list[tuple[str, HubSpec | SpokeSpec]] = [
            (f"nodes.hubs.{i}", h) for i, h in enumerate(self.nodes.hubs)
        ]
        specs += [(f"nodes.spokes.{i}", s) for i, s in enumerate(self.nodes.spokes)]
        hubs = {h.name for h in self.nodes.hubs}
        if not any(spec.nhs is not None for _, spec in specs):
            return
        for path, spec in specs:
            for name in spec.nhs or []:
                if name == spec.name:
                    raise ValueError(f"{path}.nhs: {name!r} cannot register with itself")
                if name not in hubs:
                    raise ValueError(f"{path}.nhs: {name!r} is not a hub")
            if spec.nhs is not None and len(set(spec.nhs)) != len(spec.nhs):
                raise ValueError(f"{path}.nhs: a hub is named twice")
            if spec.nhs == [] and isinstance(spec, SpokeSpec):
                raise ValueError(f"{path}.nhs: a spoke needs at least one hub")
        why = None
        if self.dual_cloud or self.ipv6 or self.routing.dynamic or self.vrf_clouds:
            why = "is built for one IPv4 cloud with static routing"
        elif any(s.site is not None for s in self.nodes.spokes):
            why = "is not yet combined with dual spoke sites (site:)"
        elif any(p.kind != "dmvpn" for p in self._plan.values()):
            why = "is for dmvpn nodes only"
        if why:
            raise ValueError(f"nhs (hierarchical hubs) {why}")
        # A loop of hubs would bounce packets and requests between them.
        parents = {h.name: list(h.nhs or []) for h in self.nodes.hubs}
        for start in parents:
            seen, todo = set(), list(parents[start])
            while todo:
                hub = todo.pop()
                if hub == start:
                    raise ValueError(f"nhs: hub {start!r} registers with itself through {hub!r}")
                if hub not in seen:
                    seen.add(hub)
                    todo.extend(parents[hub])

    def nhs_of(self, name: str) -> list[NodePlan]:
        """The hubs `name` registers with: its `nhs`, or for a spoke without
        one every hub (the default), for a hub without one none."""
        p = self.plan(name)
        specs = self.nodes.hubs if p.role == "hub" else self.nodes.spokes
        spec = next((s for s in specs if s.name == name), None)
        if spec is not None and spec.nhs is not None:
            return [self.plan(n) for n in spec.nhs]
        return self.hubs if p.role == "spoke" else []

    def _under(self, hub: NodePlan, spoke: NodePlan) -> NodePlan | None:
        """The next hop from `hub` down to `spoke`: the spoke itself when it
        registers here, else the hub below this one whose region holds it."""
        if hub in self.nhs_of(spoke.name):
            return spoke
        for child in self.hubs:
            if hub in self.nhs_of(child.name) and self._under(child, spoke) is not None:
                return child
        return None

    def cloud_network(self, k: int) -> IPv4Network:
        """The tunnel network of cloud k (0: tunnel_network, then the next ones up)."""
        net = self.tunnel_network
        return IPv4Network((int(net.network_address) + k * net.num_addresses, net.prefixlen))

    def _check_sites(self, order: list[NodePlan]) -> None:
        """Dual spoke: what the lab builds it for (docs/ROUTING.md)."""
        for site in dict.fromkeys(p.site for p in order if p.site is not None):
            members = [p for p in order if p.site == site and p.role == "spoke"]
            if len(members) < 2:
                raise ValueError(f"site {site!r} has one spoke ({members[0].name}); it needs two")
            if any(p.kind != "dmvpn" for p in members):
                raise ValueError(f"site {site!r}: dmvpn spokes only (VRRP runs in the daemon)")
        why = None
        if self.ipv6:
            why = "is built for IPv4 (VRRP for IPv4)"
        elif self.phase == 2:
            why = "is for phases 1 and 3 (a spoke's route to the site would have one next hop)"
        elif self.dual_cloud:
            why = "is not built with dual_cloud"
        if why:
            raise ValueError(f"site {why}")

    def site_gateway(self, name: str) -> IPv4Address | None:
        """The gateway address of a dual spoke site's node (its LAN's .1)."""
        p = self.plan(name)
        if p.site is None or p.lan is None:
            return None
        return p.lan.network[1]

    def _check_dual_cloud(self, order: list[NodePlan]) -> None:
        hubs = [p for p in order if p.role == "hub"]
        why = None
        if len(hubs) < 2:
            why = "needs at least two hubs (one per cloud)"
        elif self.phase == 2:
            why = "is for phases 1 and 3 (the summary via the hubs)"
        elif self.ipv6 or self.routing.dynamic or any(p.kind != "dmvpn" for p in order):
            why = "is built for IPv4, static routing and dmvpn nodes only"
        else:
            last = self.cloud_network(len(hubs) - 1)
            clash = [n for n in (self.underlay_network, self.lan_summary) if n.overlaps(last)]
            if int(last.broadcast_address) > 0xFFFFFFFF or clash:
                why = f"has no room for {len(hubs)} tunnel networks after {self.tunnel_network}"
        if why:
            raise ValueError(f"dual_cloud {why}")

    def _resolve_nat(self, claim: Any) -> dict[str, NatPlan]:
        """The NAT routers the spokes name (dmvpn.lab.natplan), checked."""
        behind: list[tuple[str, str, int]] = []
        for i, spec in enumerate(self.nodes.spokes, 1):
            if spec.nat is None:
                continue
            path = f"nodes.spokes.{i - 1}"
            if spec.nbma is not None:
                raise ValueError(
                    f"{path}.nbma: a spoke behind nat {spec.nat!r} takes its address "
                    "from the NAT router's inside network; leave nbma out"
                )
            if spec.kind != "dmvpn":
                raise ValueError(f"{path}.nat: only dmvpn spokes can sit behind a lab NAT")
            behind.append((spec.name, spec.nat, i))
        if not behind:
            self._nat = {}
            return {}
        for net in (self.underlay_network, self.tunnel_network, self.lan_summary):
            if net.overlaps(INSIDE_NETWORK):
                raise ValueError(f"{net} overlaps the NAT routers' inside network {INSIDE_NETWORK}")
        nats = plan_nat_routers(behind, self.underlay_network)
        for nat in nats.values():
            claim(f"nat {nat.name!r}", nat.name)
        # Their public addresses must not be any node's: checked by the caller's
        # `used`, through the names claimed here and the addresses below.
        publics = {nat.public.ip: nat.name for nat in nats.values()}
        for i, hub in enumerate(self.nodes.hubs, 1):
            ip = hub.nbma or self.underlay_network[i]
            if ip in publics:
                raise ValueError(f"nodes.hubs.{i - 1}.nbma {ip} is nat {publics[ip]!r}'s public")
        for i, spoke in enumerate(self.nodes.spokes, 1):
            if spoke.nat is None:
                ip = spoke.nbma or self.underlay_network[10 + i]
                if ip in publics:
                    raise ValueError(
                        f"nodes.spokes.{i - 1}.nbma {ip} is nat {publics[ip]!r}'s public"
                    )
        self._nat = nats
        return nats

    def _plan_access(self, spec: SpokeSpec, i: int, path: str, claim: Any) -> str | None:
        """The spoke's access router (dmvpn.lab.accessplan), checked."""
        if spec.access is None:
            return None
        if spec.nat is not None:
            raise ValueError(
                f"{path}.access: not with nat (the NAT router is already its uplink); "
                "use one or the other"
            )
        if spec.kind != "dmvpn":
            raise ValueError(f"{path}.access: only dmvpn spokes have a lab access router")
        if self.front_door_vrf:
            raise ValueError(f"{path}.access: not yet with front_door_vrf")
        acc = plan_access_router(spec.name, i, spec.access, self.underlay_network)
        claim(f"{path}.access", acc.name)
        self._access[acc.name] = acc
        return acc.name

    @property
    def access_routers(self) -> list[AccessPlan]:
        """The lab's access routers, in spoke order."""
        return list(self._access.values())

    @property
    def nat_routers(self) -> list[NatPlan]:
        """The lab's NAT routers, in order of first mention."""
        return list(self._nat.values())

    def public_address(self, name: str) -> IPv4Address | None:
        """A router's post-NAT underlay address: its NAT router's public
        address, or its own when it is not behind one."""
        p = self.plan(name)
        if p.nat is not None:
            return self._nat[p.nat].public.ip
        return None if p.nbma is None else p.nbma.ip

    def _plan6(self, plan: dict[str, NodePlan]) -> dict[str, NodePlan]:
        """The IPv6 addresses of a dual-stack lab, by the same numbers as IPv4
        (written in hex so that spoke1 is fd00::11 as it is 10.0.0.11)."""
        if any(p.kind != "dmvpn" for p in plan.values()):
            raise ValueError(
                "ipv6: the lab configures IPv6 on dmvpn nodes only, not in guests (frr, vm)"
            )
        net, summary = self.tunnel_network6, self.lan_summary6
        if net.prefixlen > 120:
            raise ValueError(f"tunnel_network6 {net} is too small (at most /120)")
        out = dict(plan)
        for p in plan.values():
            if p.role == "host":
                continue
            n = p.index if p.role == "hub" else 10 + p.index
            tunnel6 = IPv6Interface(f"{net[int(str(n), 16)]}/{net.prefixlen}")
            lan6 = None
            if p.role == "spoke":
                # fd00:N::/64: the second group names the spoke.
                if summary.prefixlen > 16 or p.index > 9999:
                    raise ValueError(
                        f"lan_summary6 {summary} has no fd00:N::/64 for spoke {p.index}"
                    )
                lan_net = IPv6Network(
                    (int(summary.network_address) | (int(str(p.index), 16) << 96), 64)
                )
                if lan_net.overlaps(net):
                    raise ValueError(f"{p.name}'s IPv6 LAN {lan_net} overlaps {net}")
                lan6 = IPv6Interface(f"{lan_net[1]}/64")
                assert p.peer is not None
                host = plan[p.peer]
                out[host.name] = _replace_plan(host, lan6=IPv6Interface(f"{lan_net[0x10]}/64"))
            out[p.name] = _replace_plan(p, tunnel6=tunnel6, lan6=lan6)
        return out

    @property
    def names(self) -> list[str]:
        """Every node: hubs, spokes, then hosts."""
        return list(self._plan)

    @property
    def hubs(self) -> list[NodePlan]:
        return [p for p in self._plan.values() if p.role == "hub"]

    @property
    def spokes(self) -> list[NodePlan]:
        return [p for p in self._plan.values() if p.role == "spoke"]

    @property
    def hosts(self) -> list[NodePlan]:
        return [p for p in self._plan.values() if p.role == "host"]

    @property
    def routers(self) -> list[NodePlan]:
        """The routers, of either kind: hubs and spokes."""
        return [p for p in self._plan.values() if p.role != "host"]

    @property
    def dmvpn_routers(self) -> list[NodePlan]:
        """The routers that run `dmvpn run` in their namespace."""
        return [p for p in self.routers if p.kind == "dmvpn"]

    @property
    def vm_routers(self) -> list[NodePlan]:
        """The `kind: vm` routers: our daemon in QEMU guests (dmvpn.lab.vmnode)."""
        return [p for p in self.routers if p.kind == "vm"]

    @property
    def frr_routers(self) -> list[NodePlan]:
        """The routers that run FRR nhrpd in a QEMU guest."""
        return [p for p in self.routers if p.kind == "frr"]

    def plan(self, name: str) -> NodePlan:
        try:
            return self._plan[name]
        except KeyError:
            known = ", ".join(self._plan)
            raise KeyError(f"no node {name!r} in the topology (nodes: {known})") from None

    def role(self, name: str) -> Role:
        return self.plan(name).role

    # -- what each node runs ------------------------------------------------

    def node_config(self, name: str, prefix: str = DEFAULT_PREFIX) -> dict[str, Any]:
        """The node YAML data (for `dmvpn.config.parse_config`) of a hub or spoke.

        Plain strings, numbers and lists, so it can be dumped to YAML as is.
        ``prefix`` (the lab's) names the VRF namespaces with `vrf_clouds`.
        """
        me = self.plan(name)
        if me.nbma is None or me.tunnel is None:
            raise ValueError(f"{name} is a LAN host: it runs no dmvpn node")
        nhrp: dict[str, Any] = {"network_id": 1, "holdtime": self.holdtime}
        routes: list[dict[str, Any]] = []
        if me.role == "hub":
            nhrp["map_multicast"] = ["dynamic"]
            nhrp["redirect"] = self.phase == 3
            site_hops: dict[str, list[str]] = {}
            for spoke in self.spokes:
                # Hierarchical hubs: down through the regional hub holding it.
                down = self._under(me, spoke)
                if down is None:
                    continue
                if spoke.site is not None:
                    site_hops.setdefault(str(_lan_of(spoke)), []).append(str(_ip(spoke.tunnel)))
                    continue
                routes.append(_route(_lan_of(spoke), down))
                if self.ipv6:
                    routes.append(_route6(_lan6_of(spoke), down))
            # A dual spoke site: ECMP over its spokes that answer echoes.
            for lan, hops in site_hops.items():
                routes.append({"prefix": lan, "via": hops, "track": dict(SITE_TRACK)})
            if parents := self.nhs_of(name):
                # A regional hub: an NHS that is also an NHC of the central
                # hub(s), which hold every other region's LANs.
                nhrp["server"] = True
                nhrp["nhs"] = [
                    {"address": str(_ip(h.tunnel)), "nbma": self.nbma_of(h), "priority": h.index}
                    for h in parents
                ]
                up = "nhs" if len(parents) > 1 else str(_ip(parents[0].tunnel))
                routes.append({"prefix": str(self.lan_summary), "via": up})
                if len(parents) > 1:
                    nhrp["nhs_liveness"] = {"interval": 0.5, "multiplier": 3}
        else:
            my_hubs = self.nhs_of(name)
            nhrp["nhs"] = [
                {"address": str(_ip(h.tunnel)), "nbma": self.nbma_of(h), "priority": h.index}
                for h in my_hubs
            ]
            if self.ipv6:
                # `ipv6 nhrp nhs`: the same hubs, registered by the IPv6 engine.
                nhrp["nhs"] += [
                    {
                        "address": str(_ip6(h.tunnel6)),
                        "nbma": self.nbma_of(h),
                        "priority": h.index,
                    }
                    for h in my_hubs
                ]
            nhrp["map_multicast"] = ["nhs"]
            nhrp["shortcut"] = self.phase == 3
            nhrp["resolution"] = self.phase != 1
            nhrp["registration_no_unique"] = me.registration_no_unique
            if self.phase == 2:
                # No summary: each LAN's next hop is its spoke, which the
                # spoke resolves through the hub and then reaches directly.
                for spoke in self.spokes:
                    if spoke.name != name:
                        routes.append(_route(_lan_of(spoke), spoke))
                        if self.ipv6:
                            routes.append(_route6(_lan6_of(spoke), spoke))
            else:
                # Phase 1: everything through the hub. Phase 3: the same
                # summary, and the hub's redirect brings shortcuts.
                # With several hubs (dual hub): through whichever NHS is up,
                # found dead within a second and a half (docs/ROUTING.md).
                hub1 = my_hubs[0]
                dual = len(my_hubs) > 1
                via: str = "nhs" if dual else str(_ip(hub1.tunnel))
                routes.append({"prefix": str(self.lan_summary), "via": via})
                if self.ipv6:
                    via6 = "nhs" if dual else str(_ip6(hub1.tunnel6))
                    routes.append({"prefix": str(self.lan_summary6), "via": via6})
            if len(self.hubs) > 1 or me.site is not None:
                # Dual hub, in every phase (a dead NHS found in 1.5 s); a
                # dual spoke site's spoke too: its gateway role follows its
                # NHSes, so it must see a dead one fast.
                nhrp["nhs_liveness"] = {"interval": 0.5, "multiplier": 3}
        if self.authentication is not None:
            nhrp["authentication"] = self.authentication
        qos: dict[str, Any] = {}
        if me.role == "hub" and self.qos:
            qos["qos"] = {"groups": {g: {"rate": r} for g, r in self.qos.items()}}
        spec = next((s for s in self.nodes.spokes if s.name == name), None)
        if spec is not None and spec.group is not None:
            nhrp["group"] = spec.group
        if self.routing.dynamic:
            # The routing protocol brings the routes (routingconf); NHRP still
            # needs the liveness check to stop resolving through a dead hub.
            routes = []
        if self.dual_cloud:
            return self._dual_cloud_config(me, nhrp, routes)
        if self.vrf_clouds:
            return self._vrf_clouds_config(me, nhrp, routes, prefix)
        vrrp: dict[str, Any] = {}
        if me.site is not None:
            members = [p.name for p in self.spokes if p.site == me.site]
            vrrp["vrrp"] = [
                {
                    "interface": "lan0",  # netns.LAN_INTERFACE
                    "vrid": 1,
                    "address": str(self.site_gateway(name)),
                    # The first spoke preferred: it takes the role back.
                    "priority": 200 - 10 * members.index(name),
                    "interval": SITE_VRRP_INTERVAL,
                }
            ]
        return {
            "node": name,
            "interfaces": [
                {
                    "name": TUNNEL_INTERFACE,
                    "address": str(me.tunnel),
                    **({"ipv6_address": str(me.tunnel6)} if me.tunnel6 is not None else {}),
                    "tunnel": {
                        "source": self.nbma_of(me),
                        "key": self.key,
                        **({"path_mtu_discovery": True} if self.path_mtu_discovery else {}),
                    },
                    **({"dataplane": plane} if (plane := self.dataplane_of(name)) else {}),
                    **(
                        {"tcp_adjust_mss": self.tcp_adjust_mss}
                        if self.tcp_adjust_mss is not None
                        else {}
                    ),
                    "nhrp": nhrp,
                    **qos,
                }
            ],
            "routes": routes,
            **({"ipsec": {"psk": self.ipsec_psk}} if self.ipsec_psk is not None else {}),
            **vrrp,
        }

    def _dual_cloud_config(
        self, me: NodePlan, nhrp: dict[str, Any], routes: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Dual cloud: a hub's one interface on its cloud; a spoke's one per hub."""
        assert me.tunnel is not None and me.nbma is not None
        offset = int(me.tunnel.ip) - int(self.tunnel_network.network_address)

        def itf(k: int, address: IPv4Address, settings: dict[str, Any]) -> dict[str, Any]:
            net = self.cloud_network(k)
            return {
                # A hub's one interface keeps the lab's usual name.
                "name": TUNNEL_INTERFACE if me.role == "hub" else f"dmvpn{k}",
                "address": f"{address}/{net.prefixlen}",
                "tunnel": {"source": str(_ip(me.nbma)), "key": self.key + k},
                **({"dataplane": plane} if (plane := self.dataplane_of(me.name)) else {}),
                "nhrp": {**copy.deepcopy(settings), "network_id": k + 1},
            }

        if me.role == "hub":
            k = me.index - 1
            interfaces = [itf(k, _ip(me.tunnel), nhrp)]
            base = int(self.cloud_network(k).network_address)
            routes = [
                {"prefix": str(_lan_of(s)), "via": str(IPv4Address(base + 10 + s.index))}
                for s in self.spokes
            ]
        else:
            interfaces = []
            for k, hub in enumerate(self.hubs):
                own = IPv4Address(int(self.cloud_network(k).network_address) + offset)
                nhs = [{"address": str(_ip(hub.tunnel)), "nbma": str(_ip(hub.nbma)), "priority": 1}]
                live = {"interval": 0.5, "multiplier": 3}
                interfaces.append(itf(k, own, {**nhrp, "nhs": nhs, "nhs_liveness": live}))
            # ECMP over the clouds whose hub is up (each hub is an NHS).
            hubs = [str(_ip(h.tunnel)) for h in self.hubs]
            routes = [{"prefix": str(self.lan_summary), "via": hubs}]
        return {"node": me.name, "interfaces": interfaces, "routes": routes}

    def _vrf_clouds_config(
        self, me: NodePlan, nhrp: dict[str, Any], routes: list[dict[str, Any]], prefix: str
    ) -> dict[str, Any]:
        """vrf_clouds: the same interface once per cloud, each in its VRF with
        its routes there (the same next hops are other routers in each)."""
        assert me.tunnel is not None and me.nbma is not None
        interfaces: list[dict[str, Any]] = [
            {
                "name": vrf_interface(k),
                "namespace": vrf_namespace(prefix, me.name, k),
                "address": str(me.tunnel),
                "tunnel": {"source": str(me.nbma.ip), "key": self.key + k - 1},
                **({"dataplane": plane} if (plane := self.dataplane_of(me.name)) else {}),
                "nhrp": {**copy.deepcopy(nhrp), "network_id": k},
                "routes": copy.deepcopy(routes),
            }
            for k in range(1, VRF_CLOUDS + 1)
        ]
        # One charon; both clouds share each peer's SA (one NBMA address).
        ipsec = {"ipsec": {"psk": self.ipsec_psk}} if self.ipsec_psk is not None else {}
        return {"node": me.name, "interfaces": interfaces, **ipsec}

    def vrfs(self, name: str, prefix: str = DEFAULT_PREFIX) -> list[VrfDescription]:
        """A router's VRFs with `vrf_clouds` (what _vrf_clouds_config puts in
        each); none for a host or without `vrf_clouds`."""
        me = self.plan(name)
        if not self.vrf_clouds or me.role == "host":
            return []
        host = me.peer if me.role == "spoke" else None
        return [
            VrfDescription(
                vrf=k,
                namespace=vrf_namespace(prefix, name, k),
                interface=vrf_interface(k),
                key=self.key + k - 1,
                network_id=k,
                host=host,
                host_namespace=None if host is None else vrf_namespace(prefix, host, k, host=True),
            )
            for k in range(1, VRF_CLOUDS + 1)
        ]

    def describe(self, prefix: str = DEFAULT_PREFIX) -> list[NodeDescription]:
        """One row per node (hubs, spokes, hosts) for `lab status`."""
        return [
            NodeDescription(
                name=p.name,
                role=p.role,
                kind=p.kind,
                namespace=namespace_name(prefix, p.name),
                underlay=None
                if p.nbma is None
                else str(p.nbma6)
                if p.nbma6 is not None
                else str(p.nbma)
                + (f" (in {underlay_namespace(prefix, p.name)})" if self.front_door_vrf else ""),
                tunnel=None if p.tunnel is None else str(p.tunnel),
                lan=None if p.lan is None else str(p.lan),
            )
            for p in self._plan.values()
        ]


def _ip(addr: IPv4Interface | None) -> IPv4Address:
    assert addr is not None  # routers always have both addresses
    return addr.ip


def _replace_plan(p: NodePlan, **changes: Any) -> NodePlan:
    return replace(p, **changes)


def _ip6(addr: IPv6Interface | None) -> IPv6Address:
    assert addr is not None  # every router of a dual-stack lab has one
    return addr.ip


def _lan6_of(spoke: NodePlan) -> IPv6Network:
    assert spoke.lan6 is not None
    return spoke.lan6.network


def _route6(prefix: IPv6Network, via: NodePlan) -> dict[str, str]:
    return {"prefix": str(prefix), "via": str(_ip6(via.tunnel6))}


def _lan_of(spoke: NodePlan) -> IPv4Network:
    assert spoke.lan is not None
    return spoke.lan.network


def _route(prefix: IPv4Network, via: NodePlan) -> dict[str, str]:
    return {"prefix": str(prefix), "via": str(_ip(via.tunnel))}


def _problems(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        # Cross-field problems (empty loc) already start with their field path.
        out.append(f"{'.'.join(str(p) for p in err['loc'])}: {msg}" if err["loc"] else msg)
    return out
