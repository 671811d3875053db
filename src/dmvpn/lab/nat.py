"""Build the lab's NAT routers (dmvpn.lab.natplan) in namespaces of their own.

    PREFIX<nat>   wan0 (veth to the underlay bridge, the public address),
                  br0 (the inside bridge, one port "v-<spoke>" per spoke behind it),
                  forwarding on, nftables: masquerade out of wan0, and a
                  stateful filter that lets in from wan0 only what answers a
                  flow started inside (what a home or office NAT does)

The input filter matters for hole punching: without it, unsolicited GRE
from a peer to the public address is accepted locally and its conntrack
entry (peer -> public) is confirmed; the inside spoke's own GRE to that peer
then clashes with it and is dropped for as long as the peer keeps sending.
Dropped packets leave no conntrack entry, so the spoke's first packet out
opens the mapping both ways.

`Lab.up()` calls `build()` after the underlay bridge and before the routers,
and `route_spoke()` for each spoke behind a NAT router; `Lab.down()` deletes
these namespaces with the others (their names are PREFIX + NAT router name).

The ruleset is the plainest PAT: `masquerade` translates UDP and TCP source
ports when two inside hosts would clash. GRE has no ports: conntrack tracks
it by addresses alone (key 0 without the PPTP helper), so the second inside
host to send GRE to the same outside peer clashes with the first and its
packets are dropped (conntrack's insert_failed counter); docs/NAT.md.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import TYPE_CHECKING, TypedDict

from .natplan import NatPlan
from .topology import NodePlan

if TYPE_CHECKING:
    from .netns import Lab

__all__ = ["WAN_INTERFACE", "NatStatus", "build", "route_spoke", "ruleset", "status"]

WAN_INTERFACE = "wan0"
INSIDE_BRIDGE = "br0"  # the same name as the underlay's: a spoke's uplink is "a bridge"


class NatStatus(TypedDict):
    """One row of `lab status` for a NAT router."""

    name: str
    namespace: str
    public: str
    inside: str
    spokes: list[str]
    up: bool


def ruleset() -> str:
    """The NAT router's nftables ruleset (`nft -f`)."""
    return f"""\
table ip dmvpnlab {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{WAN_INTERFACE}" masquerade
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "{WAN_INTERFACE}" ct state new,invalid counter drop
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{WAN_INTERFACE}" ct state new,invalid counter drop
    }}
}}
"""


def build(lab: Lab) -> None:
    """Create every NAT router of the lab's topology (its namespace exists)."""
    nats = lab.topology.nat_routers
    if not nats:
        return
    if shutil.which("nft") is None:
        # The lab's NAT is nftables: say so before anything half-works.
        from .netns import LabError

        raise LabError("the topology has NAT routers but 'nft' is not installed (nftables)")
    for nat in nats:
        _build_one(lab, nat)


def _build_one(lab: Lab, nat: NatPlan) -> None:
    from .netns import BRIDGE

    inet, ns = lab.namespace("inet"), lab.namespace(nat.name)
    port = f"v-{nat.name}"
    lab._ip(
        "-n", inet, "link", "add", port, "type", "veth", "peer", "name", WAN_INTERFACE, "netns", ns
    )
    lab._ip("-n", inet, "link", "set", port, "master", BRIDGE, "up")
    lab._ip("-n", ns, "addr", "add", str(nat.public), "dev", WAN_INTERFACE)
    lab._ip("-n", ns, "link", "set", WAN_INTERFACE, "up")
    lab._ip("-n", ns, "link", "add", INSIDE_BRIDGE, "type", "bridge")
    lab._ip("-n", ns, "addr", "add", str(nat.inside), "dev", INSIDE_BRIDGE)
    lab._ip("-n", ns, "link", "set", INSIDE_BRIDGE, "up")
    lab._run(
        [lab.ip, "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
        what="enable forwarding on a NAT router",
    )
    _nft(lab, ns, ruleset())


def _nft(lab: Lab, ns: str, rules: str) -> None:
    from .netns import CommandError

    argv = [lab.ip, "netns", "exec", ns, "nft", "-f", "-"]
    res = subprocess.run(argv, input=rules, capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise CommandError(argv, res.returncode, res.stderr, "load the NAT ruleset")


def route_spoke(lab: Lab, spoke: NodePlan) -> None:
    """A spoke behind a NAT router reaches everything through it."""
    assert spoke.nat is not None
    nat = {n.name: n for n in lab.topology.nat_routers}[spoke.nat]
    # Where its nbma0 is: with front_door_vrf, the underlay namespace.
    ns = lab.underlay_namespace(spoke.name)
    lab._ip("-n", ns, "route", "add", "default", "via", str(nat.inside.ip))


def status(lab: Lab, existing: set[str]) -> list[NatStatus]:
    """The NAT routers for `lab status`: addresses, spokes, namespace up."""
    return [
        NatStatus(
            name=n.name,
            namespace=lab.namespace(n.name),
            public=str(n.public),
            inside=str(n.inside),
            spokes=list(n.spokes),
            up=lab.namespace(n.name) in existing,
        )
        for n in lab.topology.nat_routers
    ]
