"""The node's YAML file: one per node, validated before anything changes.

Vocabulary from Cisco IOS and FRR nhrpd (tunnel source/key, nhrp network-id,
holdtime, nhs, map, map multicast, redirect, shortcut, registration
no-unique, authentication). `dmvpn check FILE` prints every error with its
path; the daemon refuses a file with any.
"""

from __future__ import annotations

import re
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
)
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)

from dmvpn.nhrp import EngineConfig, NhsConfig, StaticMap
from dmvpn.nsenter import NETNS_DIR
from dmvpn.qospolicy import Qos
from dmvpn.wire import group_problem

# A network namespace name (`ip netns add NAME`): a file under /run/netns.
NamespaceName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


def _nbma(value: object) -> IPv4Address | IPv6Address:
    if isinstance(value, IPv4Address | IPv6Address):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address")
    try:
        return ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None


# An NBMA (underlay) address of either family; one validator, so that an
# error names the field and not each member of a union.
NbmaAddress = Annotated[
    IPv4Address | IPv6Address,
    PlainValidator(_nbma),
    PlainSerializer(str, return_type=str, when_used="json"),
]

# Linux VRF devices (`ip link add NAME type vrf table N`) would give the
# `vrf:` keys a meaning; this kernel has none, so they are refused with this
# reason rather than ignored (docs/VRF.md, "`vrf:` and VRF devices").
NO_VRF_DEVICES = (
    "VRF devices are not supported: the kernel dmvpn is built and tested on has none "
    "(`ip link add x type vrf` is an unknown device type); a VRF is a network namespace "
    "here: use {instead}"
)


class _Strict(BaseModel):
    # Unknown keys are errors: a typo must not silently become a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tunnel(_Strict):
    """`tunnel source` (the NBMA address) and `tunnel key`."""

    # The NBMA address; its family is the interface's underlay family: GRE
    # over IPv4 or, for an IPv6 address, GRE over IPv6 (NHRP ar$afn 2;
    # docs/ARCHITECTURE.md "IPv6 underlay"). Every NHS and map `nbma` of the
    # interface must be of the same family.
    source: NbmaAddress
    key: Annotated[int, Field(ge=0, le=0xFFFFFFFF)] | None = None
    # Front-door VRF (Cisco `tunnel vrf`): the network namespace holding the
    # underlay (`source` and its routes); GRE is sent and received there, the
    # tunnel interface, its routes and the LAN stay in the daemon's own
    # (docs/QOS.md, "Front-door VRF"). None: the daemon's own namespace.
    namespace: NamespaceName | None = None
    # Reserved for a VRF device (Cisco `tunnel vrf` as a routing table of
    # this namespace); refused, see NO_VRF_DEVICES.
    vrf: str | None = None
    # Cisco `tunnel path-mtu-discovery`: DF copied from the inner packet to
    # the outer, the path MTU to each peer learned and inner senders told
    # (dataplane/pmtu.py). Off: the outer header never has DF.
    path_mtu_discovery: bool = False


class Nhs(_Strict):
    """`ip nhrp nhs ADDRESS nbma NBMA priority P` (lower is preferred); an
    IPv6 ADDRESS is `ipv6 nhrp nhs` (registered by the IPv6 engine)."""

    address: IPv4Address | IPv6Address
    nbma: NbmaAddress
    priority: Annotated[int, Field(ge=0, le=255)] = 0


class Map(_Strict):
    """`ip nhrp map ADDRESS NBMA` (or `ipv6 nhrp map`): a static binding."""

    address: IPv4Address | IPv6Address
    nbma: NbmaAddress


class NhsLiveness(_Strict):
    """Fast NHS failure detection, as Cisco's IP SLA icmp-echo + track: an
    ICMP echo (ICMPv6 for IPv6) to each NHS's tunnel address through the tunnel every
    `interval` seconds; an NHS that answered before and then misses
    `multiplier` echoes in a row is declared down at once (its registration
    is retried with backoff, and static routes `via: nhs` move away). No
    NHRP is sent for it: the hub's kernel answers the echoes."""

    interval: Annotated[float, Field(ge=0.05, le=60)] = 0.5
    multiplier: Annotated[int, Field(ge=2, le=50)] = 3


class Nhrp(_Strict):
    network_id: Annotated[int, Field(ge=1, le=0xFFFFFFFF)]
    holdtime: Annotated[int, Field(ge=3, le=65535)] = 7200
    nhs: list[Nhs] = []
    max_nhs: Annotated[int, Field(ge=1)] | None = None
    map: list[Map] = []
    # `ip nhrp map multicast dynamic|nhs|NBMA`: where broadcast and multicast
    # frames are replicated.
    map_multicast: list[Literal["dynamic", "nhs"] | IPv4Address | IPv6Address] = []
    redirect: bool = False
    shortcut: bool = False
    registration_no_unique: bool = False
    # Phase 1 spokes never resolve (`resolution: false`).
    resolution: bool = True
    authentication: Annotated[str, Field(min_length=1, max_length=8)] | None = None
    auth_failure: Literal["error", "drop"] = "error"
    max_send: Annotated[int, Field(ge=1)] = 100_000
    server: bool | None = None  # default: an interface without NHSes is a hub
    # Fast NHS failure detection (routing.md, "Hub redundancy"): None = off,
    # an NHS is then down only when its registrations go unanswered.
    nhs_liveness: NhsLiveness | None = None
    # `ip nhrp group NAME` (spoke): sent to the NHSes in registrations; the
    # hub shapes what it sends us by that group's policy (qospolicy.py).
    group: str | None = None

    @field_validator("group")
    @classmethod
    def _group(cls, v: str | None) -> str | None:
        if v is not None and (problem := group_problem(v)) is not None:
            raise ValueError(f"{v!r} {problem}")
        return v

    @field_validator("authentication")
    @classmethod
    def _ascii(cls, v: str | None) -> str | None:
        if v is not None and not v.isascii():
            raise ValueError("must be ASCII (Cisco cleartext password)")
        return v


class Route(_Strict):
    """A route the daemon installs into the node's kernel table (IPv4 or,
    over an interface with an ipv6_address, IPv6).

    `via` is one next hop (installed once, as it always was), a list of
    next hops (ECMP over those usable: a next hop that is one of our NHSes
    is usable while its registration is up, any other always), or `nhs`:
    whichever NHSes of the prefix's family are up, those of the best
    priority (ties: ECMP). A tracked route with no usable next hop is
    withdrawn, as Cisco withdraws a static route whose track is down
    (docs/ROUTING.md)."""

    prefix: IPv4Network | IPv6Network
    # With a list of next hops: those that are not our NHSes are usable only
    # while they answer ICMP echoes (Cisco's ip sla icmp-echo + track on a
    # static route): a hub's route to a dual spoke site (docs/ROUTING.md).
    track: NhsLiveness | None = None
    via: (
        IPv4Address
        | IPv6Address
        | Annotated[tuple[IPv4Address | IPv6Address, ...], Field(min_length=1, max_length=16)]
        | Literal["nhs"]
    )

    @model_validator(mode="after")
    def _same_family(self) -> Route:
        if self.track is not None and not isinstance(self.via, tuple):
            raise ValueError("track needs a list of next hops (via: [a, b])")
        if self.via == "nhs":
            return self
        hops = self.via if isinstance(self.via, tuple) else (self.via,)
        for hop in hops:
            if self.prefix.version != hop.version:
                raise ValueError(f"via {hop} is not of the family of prefix {self.prefix}")
        if len(set(hops)) != len(hops):
            raise ValueError("via lists a next hop twice")
        return self

    @property
    def tracked(self) -> bool:
        """True when the next hops follow NHS state (a list, or `nhs`)."""
        return not isinstance(self.via, IPv4Address | IPv6Address)


class Interface(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,15}$")]
    address: IPv4Interface  # tunnel address with prefix, e.g. 10.0.0.11/24
    # `ipv6 address` on the tunnel, e.g. fd00::11/64: a dual-stack overlay
    # with an NHRP instance of its own (docs/ARCHITECTURE.md). None: IPv4 only.
    ipv6_address: IPv6Interface | None = None
    mtu: Annotated[int, Field(ge=576, le=9000)] = 1400
    # Who carries the packets (docs/ARCHITECTURE.md, the data-plane seam):
    # `userspace` (TAP + raw GRE, any Linux), `ebpf` (the same, with bound
    # peers' unicast encapsulated by tc programs in the kernel; an error if
    # they cannot load), `auto` (eBPF when it loads, else userspace; IPsec:
    # the kernel plane with the kernel's ESP where the host has both, else
    # userspace); `kernel` (the kernel's own mGRE device, where ip_gre
    # exists: dataplane/kernel.py; `auto` prefers it when ip_gre loads).
    dataplane: Literal["userspace", "ebpf", "kernel", "auto"] = "userspace"
    # Cisco `ip tcp adjust-mss N`: the MSS option of TCP SYNs crossing the
    # tunnel, both ways, lowered to N (IPv6: N - 20, its header being 20
    # bytes longer), never raised (dataplane/mss.py). Cisco's range.
    tcp_adjust_mss: Annotated[int, Field(ge=500, le=1460)] | None = None
    tunnel: Tunnel
    nhrp: Nhrp
    # Per-tunnel QoS (hub): NHRP group -> shaping policy (qospolicy.py).
    qos: Qos | None = None
    # The overlay VRF (Cisco `ip vrf forwarding NAME` on the tunnel): the
    # network namespace holding this interface's TAP, its addresses, routes,
    # neighbours and LAN. GRE stays where `tunnel.namespace` says (default:
    # the daemon's own namespace), so one daemon serves several clouds with
    # overlapping addresses, one namespace each (docs/VRF.md). None: the
    # daemon's own namespace.
    namespace: NamespaceName | None = None
    # Reserved for a VRF device; refused, see NO_VRF_DEVICES.
    vrf: str | None = None
    # Routes installed in the interface's VRF (Cisco `ip route vrf NAME`),
    # tracking this interface's NHSes only; the node's `routes` go to the
    # daemon's own namespace. Needed where VRFs overlap: the same next hop
    # (10.0.0.1) is another router in each.
    routes: list[Route] = []

    @model_validator(mode="after")
    def _consistent(self) -> Interface:
        if self.vrf is not None:
            raise ValueError("vrf: " + NO_VRF_DEVICES.format(instead="namespace: NAME"))
        if self.tunnel.vrf is not None:
            raise ValueError(
                "tunnel.vrf: " + NO_VRF_DEVICES.format(instead="tunnel.namespace: NAME")
            )
        if self.namespace is not None and self.dataplane == "ebpf":
            raise ValueError(
                "dataplane: ebpf redirects between the TAP and the underlay device, which "
                "must share a namespace; with namespace (overlay VRF) use userspace or auto"
            )
        if self.tunnel.namespace is not None and self.dataplane == "ebpf":
            raise ValueError(
                "dataplane: ebpf redirects GRE to a device of this namespace; with "
                "tunnel.namespace (front-door VRF) use userspace or auto"
            )
        if self.dataplane == "kernel":
            for field, value in (
                ("ipv6_address", self.ipv6_address),
                ("tunnel.namespace", self.tunnel.namespace),
            ):
                if value is not None:
                    raise ValueError(
                        f"dataplane: kernel does not do {field} yet; use userspace or auto"
                    )
        self._underlay_family()
        if self.qos is not None:
            if not self.is_hub:
                raise ValueError("qos: per-tunnel QoS shapes what an NHS sends; this is a spoke")
            for name, policy in self.qos.groups.items():
                if (problem := policy.check_burst(self.mtu)) is not None:
                    raise ValueError(f"qos.groups.{name}.burst: {problem}")
        v6 = self.ipv6_address
        if v6 is not None and (
            v6.ip.is_link_local or v6.ip.is_multicast or v6.network.prefixlen > 126
        ):
            raise ValueError(
                f"ipv6_address {v6} must be a unicast, non-link-local address "
                "with a prefix of at most /126 (link-local addresses come from the MAC)"
            )
        if v6 is not None and self.mtu < 1280:
            raise ValueError(f"mtu {self.mtu} is below IPv6's minimum link MTU 1280 (RFC 8200)")
        if self.tunnel.path_mtu_discovery and self.dataplane == "ebpf":
            raise ValueError(
                "dataplane: ebpf does not do tunnel.path_mtu_discovery yet "
                "(its programs set no DF); use userspace or auto"
            )
        mss = self.tcp_adjust_mss
        if mss is not None and mss > self.mtu - 40:
            raise ValueError(
                f"tcp_adjust_mss {mss} does not fit the tunnel: mtu {self.mtu} leaves "
                f"{self.mtu - 40} for TCP payload after the IPv4 and TCP headers"
            )
        for i, nhs in enumerate(self.nhrp.nhs):
            net, own = self._family(f"nhrp.nhs.{i}.address", nhs.address)
            if nhs.address not in net:
                raise ValueError(f"nhrp.nhs.{i}.address {nhs.address} is outside {net}")
            if nhs.address == own:
                raise ValueError(f"nhrp.nhs.{i}.address is this interface's own address")
        for i, m in enumerate(self.nhrp.map):
            net, _ = self._family(f"nhrp.map.{i}.address", m.address)
            if m.address not in net:
                raise ValueError(f"nhrp.map.{i}.address {m.address} is outside {net}")
        for i, route in enumerate(self.routes):
            if route.prefix.version == 6 and self.ipv6_address is None:
                raise ValueError(f"routes.{i}: IPv6 routes need the interface's ipv6_address")
            if route.via == "nhs" and not any(
                n.address.version == route.prefix.version for n in self.nhrp.nhs
            ):
                raise ValueError(
                    f"routes.{i}.via: nhs, but this interface has no IPv{route.prefix.version} NHS"
                )
        return self

    @property
    def underlay_ipv6(self) -> bool:
        """GRE over IPv6: the NBMA address (tunnel.source) is IPv6."""
        return isinstance(self.tunnel.source, IPv6Address)

    def _underlay_family(self) -> None:
        """One underlay family per interface (tunnel.source's), and only
        where the data plane and features carry it: the userspace data plane
        (raw AF_INET6 GRE sockets); not yet the eBPF and kernel planes, path
        MTU discovery or per-tunnel QoS."""
        src = self.tunnel.source
        fam = f"IPv{src.version}"
        nbmas: list[tuple[str, IPv4Address | IPv6Address]] = [
            (f"nhrp.nhs.{i}.nbma", n.nbma) for i, n in enumerate(self.nhrp.nhs)
        ]
        nbmas += [(f"nhrp.map.{i}.nbma", m.nbma) for i, m in enumerate(self.nhrp.map)]
        nbmas += [
            (f"nhrp.map_multicast.{i}", m)
            for i, m in enumerate(self.nhrp.map_multicast)
            if not isinstance(m, str)
        ]
        for where, nbma in nbmas:
            if nbma.version != src.version:
                raise ValueError(
                    f"{where} {nbma} is IPv{nbma.version} but "
                    f"tunnel.source {src} is {fam}: one underlay family per interface"
                )
        if not self.underlay_ipv6:
            return
        if self.dataplane in ("ebpf", "kernel"):
            raise ValueError(
                f"dataplane: {self.dataplane} does not do an IPv6 underlay (tunnel.source "
                f"{src}) yet; use userspace or auto"
            )
        if self.tunnel.path_mtu_discovery:
            raise ValueError(
                f"tunnel.path_mtu_discovery is IPv4 only for now; tunnel.source {src} is IPv6"
            )
        if self.qos is not None:
            raise ValueError(
                f"qos: per-tunnel QoS classifies IPv4 underlay addresses only; "
                f"tunnel.source {src} is IPv6"
            )

    def _family(
        self, where: str, addr: IPv4Address | IPv6Address
    ) -> tuple[IPv4Network | IPv6Network, IPv4Address | IPv6Address]:
        """The tunnel network and own address of ``addr``'s family."""
        if isinstance(addr, IPv4Address):
            return self.address.network, self.address.ip
        if self.ipv6_address is None:
            raise ValueError(f"{where} {addr} is IPv6 but the interface has no ipv6_address")
        return self.ipv6_address.network, self.ipv6_address.ip

    @property
    def is_hub(self) -> bool:
        return self.nhrp.server if self.nhrp.server is not None else not self.nhrp.nhs

    def engine_config(self, family: int = 4) -> EngineConfig:
        """The NHRP engine of one protocol family (4 or 6): like Cisco's `ip
        nhrp` and `ipv6 nhrp`, each registers and resolves on its own, over
        the same NBMA address and GRE key; the NHRP settings are shared."""
        n = self.nhrp
        if family == 6:
            if self.ipv6_address is None:
                raise ValueError(f"interface {self.name} has no ipv6_address")
            own: IPv4Address | IPv6Address = self.ipv6_address.ip
        else:
            own = self.address.ip
        kind = type(own)
        return EngineConfig(
            protocol_address=own,
            nbma_address=self.tunnel.source,
            server=self.is_hub,
            nhs=tuple(
                NhsConfig(x.address, x.nbma, x.priority)
                for x in n.nhs
                if isinstance(x.address, kind)
            ),
            max_nhs=n.max_nhs,
            static_maps=tuple(
                StaticMap(m.address, m.nbma) for m in n.map if isinstance(m.address, kind)
            ),
            holding_time=n.holdtime,
            registration_unique=not n.registration_no_unique,
            resolution=n.resolution,
            redirect=n.redirect,
            shortcut=n.shortcut,
            authentication=n.authentication.encode() if n.authentication else None,
            auth_failure=n.auth_failure,
            mtu=self.mtu,
            max_send=n.max_send,
            group=n.group,
        )


# strongSwan proposal keywords (swanctl.conf "proposals"): algorithms joined
# by dashes, e.g. aes256gcm16-prfsha384-x25519.
Proposal = Annotated[str, Field(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$", max_length=200)]
_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(value: object) -> object:
    """strongSwan-style durations (``90``, ``30s``, ``10m``, ``4h``, ``1d``) to seconds."""
    if isinstance(value, str):
        m = _DURATION.match(value.strip())
        if m is None:
            raise ValueError(f"{value!r} is not a duration (a number of seconds, or 30s/10m/4h/1d)")
        return int(m.group(1)) * _UNIT[m.group(2)]
    return value


class IpsecIdentity(_Strict):
    """Who may claim which protocol addresses (identity binding): the peer's
    IKE identity as strongSwan authenticated it, and its tunnel addresses."""

    identity: Annotated[str, Field(min_length=1, max_length=255)]
    addresses: Annotated[list[IPv4Network | IPv6Network], Field(min_length=1)]


class Ipsec(_Strict):
    """IPsec proxy instantiation through strongSwan's charon (over VICI):
    one child SA for GRE between our NBMA address and each peer's, brought up
    when NHRP first needs the peer and torn down after its last binding goes."""

    # `managed`: dmvpn runs a private charon for this node (own
    # strongswan.conf, VICI socket and /run). `external`: an existing charon
    # at `vici_socket`, configured for kernel-libipsec by its operator.
    charon: Literal["managed", "external"] = "managed"
    vici_socket: Path | None = None
    # Where a managed charon keeps its files (default: a fresh directory
    # under /var/lib/dmvpn/ipsec, removed on exit).
    run_dir: Path | None = None
    # Authentication: a pre-shared key, or certificates (PEM files).
    psk: Annotated[str, Field(min_length=16, max_length=256)] | None = None
    ca: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    # Our IKE identity. Default: the NBMA address with a PSK; with
    # certificates the first interface's tunnel address, which must then be
    # an IP address in the certificate's subjectAltName.
    identity: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    ike_proposals: Annotated[list[Proposal], Field(min_length=1)] = ["aes256gcm16-prfsha384-x25519"]
    esp_proposals: Annotated[list[Proposal], Field(min_length=1)] = ["aes256gcm16-x25519"]
    # Who does ESP. `kernel`: the kernel's XFRM (charon with kernel-netlink
    # only), needed by `dataplane: kernel`, possible on the userspace plane
    # too (its raw GRE leaves through the IP stack, where XFRM applies).
    # `libipsec`: charon's kernel-libipsec, userspace ESP on a TUN device,
    # tunnel mode only, any Linux. `auto`: the kernel's where the host has
    # XFRM and esp4, else libipsec, decided by the daemon at start (an
    # external charon: libipsec, as its operator configured it).
    esp: Literal["auto", "kernel", "libipsec"] = "auto"
    # ESP mode. Default: transport with the kernel's ESP (what Cisco spokes
    # propose), tunnel with kernel-libipsec (it does tunnel mode only:
    # transport answers NO_PROPOSAL_CHOSEN, real-peers.md). NodeConfig fills
    # it in where the config decides ESP, else the daemon at start
    # (NodeConfig.resolved).
    mode: Literal["tunnel", "transport"] | None = None
    ike_lifetime: Annotated[int, Field(ge=300, le=86400 * 7)] = 14400
    child_lifetime: Annotated[int, Field(ge=120, le=86400)] = 3600
    dpd_delay: Annotated[int, Field(ge=1, le=3600)] = 10
    # A peer's SA stays this long after its last binding went (a binding
    # that comes back at once reuses it).
    idle_timeout: Annotated[int, Field(ge=0, le=86400)] = 10
    # The device kernel-libipsec creates; GRE is sent and received only
    # through it, so nothing leaves or enters in clear text.
    device: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,15}$")] = "ipsec0"
    # Identity binding: accept an NHRP registration or resolution answer
    # only from the peer whose IKE identity may claim the address. Default:
    # on with certificates, off with a PSK (everyone shares one key).
    identity_binding: bool | None = None
    identities: list[IpsecIdentity] = []

    _durations = field_validator(
        "ike_lifetime", "child_lifetime", "dpd_delay", "idle_timeout", mode="before"
    )(_seconds)

    @model_validator(mode="after")
    def _consistent(self) -> Ipsec:
        certs = [self.ca, self.certificate, self.private_key]
        if self.psk is not None and any(c is not None for c in certs):
            raise ValueError("choose one authentication: psk, or ca + certificate + private_key")
        if self.psk is None and not all(c is not None for c in certs):
            missing = [
                n
                for n, c in zip(("ca", "certificate", "private_key"), certs, strict=True)
                if c is None
            ]
            if len(missing) == 3:
                raise ValueError("needs authentication: psk, or ca + certificate + private_key")
            raise ValueError(f"certificate authentication also needs {', '.join(missing)}")
        if self.charon == "external" and self.vici_socket is None:
            raise ValueError("charon: external needs vici_socket (the running charon's socket)")
        if self.charon == "external" and self.run_dir is not None:
            raise ValueError("run_dir is only for charon: managed")
        if self.run_dir is not None and Path("/run") in (self.run_dir, *self.run_dir.parents):
            # charon gets its own /run (a bind mount), which would hide it.
            raise ValueError("run_dir must not be under /run (charon's own /run hides it)")
        if self.ike_lifetime <= self.child_lifetime:
            raise ValueError("ike_lifetime must be longer than child_lifetime")
        return self

    @property
    def uses_certificates(self) -> bool:
        return self.psk is None

    @property
    def binding_on(self) -> bool:
        return (
            self.identity_binding if self.identity_binding is not None else self.uses_certificates
        )

    def read_credentials(self) -> dict[str, bytes]:
        """The certificate files' contents; ConfigError naming a missing one."""
        out: dict[str, bytes] = {}
        problems = []
        for name in ("ca", "certificate", "private_key"):
            path = getattr(self, name)
            if path is None:
                continue
            try:
                out[name] = Path(path).read_bytes()
            except OSError as exc:
                problems.append(f"ipsec.{name}: cannot read {path}: {exc.strerror}")
        if problems:
            raise ConfigError("ipsec", problems)
        return out


class Vrrp(_Strict):
    """First-hop redundancy on a LAN interface (daemon/vrrp.py): VRRPv3 for
    IPv4, the gateway `address` held by the master of group `vrid`; with
    `track_nhs` a spoke holds it only while one of its NHSes is up."""

    interface: Annotated[str, Field(min_length=1, max_length=15)]
    vrid: Annotated[int, Field(ge=1, le=255)]
    address: IPv4Address
    priority: Annotated[int, Field(ge=1, le=254)] = 100
    interval: Annotated[float, Field(ge=0.01, le=40.95)] = 1.0
    track_nhs: bool = True


class NodeConfig(_Strict):
    node: Annotated[str, Field(min_length=1, max_length=64)]
    interfaces: Annotated[list[Interface], Field(min_length=1)]
    routes: list[Route] = []
    # Where the management API listens (a UNIX socket).
    socket: Path | None = None
    ipsec: Ipsec | None = None
    # Dual spoke: the site LAN's gateway address, shared with the other spoke.
    vrrp: list[Vrrp] = []

    def tunnel_of(self, hop: IPv4Address | IPv6Address) -> Interface | None:
        """The interface whose tunnel network holds `hop` (either family)."""
        for itf in self.interfaces:
            nets: list[IPv4Network | IPv6Network] = [itf.address.network]
            if itf.ipv6_address is not None:
                nets.append(itf.ipv6_address.network)
            if any(hop in net for net in nets):
                return itf
        return None

    @model_validator(mode="after")
    def _unique(self) -> NodeConfig:
        names = [i.name for i in self.interfaces]
        if len(set(names)) != len(names):
            raise ValueError("interface names must be unique")
        groups = [(v.interface, v.vrid) for v in self.vrrp]
        if len(set(groups)) != len(groups):
            raise ValueError("vrrp: each (interface, vrid) once")
        ids = [i.nhrp.network_id for i in self.interfaces]
        if len(set(ids)) != len(ids):
            raise ValueError("each interface needs its own nhrp.network_id")
        if any(r.prefix.version == 6 for r in self.routes) and not any(
            i.ipv6_address is not None for i in self.interfaces
        ):
            raise ValueError("IPv6 routes need an interface with an ipv6_address")
        for i, route in enumerate(self.routes):
            if route.via == "nhs" and not any(
                n.address.version == route.prefix.version
                for itf in self.interfaces
                for n in itf.nhrp.nhs
            ):
                raise ValueError(
                    f"routes.{i}.via: nhs, but no interface has an IPv{route.prefix.version} NHS"
                )
            if route.track is not None and isinstance(route.via, tuple):
                nhs = {n.address for itf in self.interfaces for n in itf.nhrp.nhs}
                for hop in route.via:
                    if hop not in nhs and self.tunnel_of(hop) is None:
                        raise ValueError(
                            f"routes.{i}.via: {hop} is on no interface's tunnel network "
                            "(track sends its echoes through the tunnel)"
                        )
        if self.ipsec is not None:
            if len({i.tunnel.namespace for i in self.interfaces}) > 1:
                # One charon per node, in the underlay namespace (front-door VRF).
                raise ValueError(
                    "with ipsec, every interface needs the same tunnel.namespace "
                    "(one charon, in the underlay's namespace)"
                )
            kernel = [itf.dataplane == "kernel" for itf in self.interfaces]
            if any(kernel) and not all(kernel):
                # One charon per node: kernel ESP (XFRM) or kernel-libipsec's
                # device, not both.
                raise ValueError(
                    "with ipsec, every interface is on dataplane: kernel or none is "
                    "(one charon: the kernel's ESP or kernel-libipsec)"
                )
            esp = self.ipsec.esp
            if self.ipsec.charon == "external" and esp == "auto" and not all(kernel):
                # What its operator configured it for (Ipsec.charon); on the
                # kernel plane, the kernel's XFRM.
                esp = "libipsec"
            if any(kernel) and esp == "libipsec":
                raise ValueError(
                    "ipsec.esp: libipsec cannot protect dataplane: kernel (the kernel's "
                    "mGRE needs the kernel's ESP)"
                )
            if self.ipsec.mode == "transport" and esp == "libipsec":
                raise ValueError(
                    "ipsec.mode: transport needs the kernel's ESP; kernel-libipsec "
                    "(ipsec.esp: libipsec) does tunnel mode only"
                )
            if self.ipsec.mode is None and (esp != "auto" or all(kernel)):
                # Otherwise the daemon decides at start (NodeConfig.resolved).
                mode = "transport" if esp == "kernel" or all(kernel) else "tunnel"
                # Frozen models: the resolved default is written once, here.
                object.__setattr__(self, "ipsec", self.ipsec.model_copy(update={"mode": mode}))
            for i, itf in enumerate(self.interfaces):
                if itf.underlay_ipv6:
                    raise ValueError(
                        f"interfaces.{i}.tunnel.source: IPsec over an IPv6 underlay is not "
                        "done yet (GRE over IPv6 runs in clear)"
                    )
                if itf.dataplane == "ebpf":
                    # bpf_redirect bypasses xfrm: protected GRE would leave in clear.
                    raise ValueError(
                        f"interfaces.{i}.dataplane: ebpf cannot carry IPsec-protected GRE "
                        "(its redirects bypass xfrm); use userspace or auto"
                    )
            # Interfaces may share a tunnel.source (clouds in VRFs, told apart
            # by GRE key below): they then share the one GRE child SA to each
            # peer's NBMA address, which the manager counts for both.
        # One GRE socket per interface sees every GRE packet of its underlay
        # namespace and keeps those of its key: two interfaces with the same
        # key on the same source could not tell their packets apart.
        seen: dict[tuple[str | None, IPv4Address | IPv6Address, int | None], int] = {}
        for i, itf in enumerate(self.interfaces):
            where = (itf.tunnel.namespace, itf.tunnel.source, itf.tunnel.key)
            if where in seen:
                key = "no key" if itf.tunnel.key is None else f"key {itf.tunnel.key}"
                raise ValueError(
                    f"interfaces.{i}.tunnel.key: {key} is already used by interfaces."
                    f"{seen[where]} on the same underlay ({itf.tunnel.source}"
                    f"{' in ' + itf.tunnel.namespace if itf.tunnel.namespace else ''}): "
                    "each cloud on one underlay needs its own tunnel.key"
                )
            seen[where] = i
        shaped: dict[str | None, int] = {}
        for i, itf in enumerate(self.interfaces):
            if itf.qos is None:
                continue
            if itf.tunnel.namespace in shaped:
                # One HTB root per underlay device, its classes keyed by NBMA
                # address: two clouds' shapers would replace each other's.
                raise ValueError(
                    f"interfaces.{i}.qos: interfaces.{shaped[itf.tunnel.namespace]} already "
                    "shapes this underlay; per-tunnel QoS on one interface per underlay "
                    "namespace (its tc root and per-NBMA classes would be shared)"
                )
            shaped[itf.tunnel.namespace] = i
        return self

    def resolved(self, kernel_esp: bool, kernel_plane: bool) -> NodeConfig:
        """The config as the daemon runs it, once it has looked at its host
        (daemon/node.py `decide_ipsec`): with ipsec, ESP is the kernel's
        (`kernel_esp`) or kernel-libipsec's, and the mode defaults to
        transport or tunnel accordingly; `kernel_plane` puts interfaces on
        `dataplane: auto` on the kernel plane (only with the kernel's ESP:
        one charon serves the node). ValueError: the config asks what the
        host lacks. Without ipsec: unchanged."""
        ipsec = self.ipsec
        if ipsec is None:
            return self
        if not kernel_esp and ipsec.mode == "transport":
            raise ValueError(
                "ipsec.mode: transport needs the kernel's ESP, which this host lacks "
                "(kernel-libipsec does tunnel mode only)"
            )
        mode = ipsec.mode or ("transport" if kernel_esp else "tunnel")
        esp = "kernel" if kernel_esp else "libipsec"
        interfaces = [
            i.model_copy(update={"dataplane": "kernel"})
            if kernel_plane and kernel_esp and i.dataplane == "auto"
            else i
            for i in self.interfaces
        ]
        return self.model_copy(
            update={
                "interfaces": interfaces,
                "ipsec": ipsec.model_copy(update={"mode": mode, "esp": esp}),
            }
        )

    @property
    def kernel_esp(self) -> bool:
        """IPsec through the kernel's XFRM (charon with kernel-netlink only):
        `ipsec.esp: kernel` (as the daemon resolves `auto`), or the
        interfaces on the kernel data plane."""
        if self.ipsec is None:
            return False
        return self.ipsec.esp == "kernel" or all(i.dataplane == "kernel" for i in self.interfaces)

    def ipsec_identity(self) -> str | None:
        """Our IKE identity (see Ipsec.identity)."""
        if self.ipsec is None:
            return None
        if self.ipsec.identity is not None:
            return self.ipsec.identity
        if self.ipsec.uses_certificates:
            return str(self.interfaces[0].address.ip)
        return None  # strongSwan's default: the IKE address


class ConfigError(Exception):
    """A config file that cannot be used, with one line per problem."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


def _problems(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        out.append(f"{where}: {msg}")
    return out


def parse_config(data: Any, source: Path | str = "<config>") -> NodeConfig:
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, _problems(exc)) from None


def read_yaml(path: Path) -> Any:
    """The YAML document in ``path``, or ConfigError naming where it breaks."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror}"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", exc)
        raise ConfigError(path, [f"{where}not valid YAML ({problem})"]) from None


def missing_namespaces(config: NodeConfig, netns_dir: Path = NETNS_DIR) -> list[str]:
    """The config's namespaces (`namespace`, `tunnel.namespace`) that do not
    exist here, one problem each with its path: like Cisco's "VRF not
    configured", the VRF must be made (`ip netns add`) before it is used."""
    problems = []
    for i, itf in enumerate(config.interfaces):
        named = (("namespace", itf.namespace), ("tunnel.namespace", itf.tunnel.namespace))
        for where, name in named:
            if name is not None and not (netns_dir / name).exists():
                problems.append(
                    f"interfaces.{i}.{where}: no network namespace {name!r} "
                    f"({netns_dir / name}); create it first (`ip netns add {name}`)"
                )
    return problems


def load_config(path: Path) -> NodeConfig:
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(path, ["(top level): expected a mapping of settings"])
    config = parse_config(data, path)
    if problems := missing_namespaces(config):
        raise ConfigError(path, problems)
    if config.ipsec is not None:
        # Certificate paths are relative to the file naming them; unreadable
        # ones refuse the file now, before anything changes.
        base = Path(path).parent
        moved = {}
        for name in ("ca", "certificate", "private_key"):
            given = getattr(config.ipsec, name)
            if given is not None and not given.is_absolute():
                moved[name] = base / given
        if moved:
            config = config.model_copy(update={"ipsec": config.ipsec.model_copy(update=moved)})
        try:
            config.ipsec.read_credentials()  # type: ignore[union-attr]
        except ConfigError as exc:
            raise ConfigError(path, exc.problems) from None
    return config
