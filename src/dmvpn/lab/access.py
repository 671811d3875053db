"""Build the lab's access routers (dmvpn.lab.accessplan) in namespaces of their own.

    PREFIX<spoke>acc   wan0 (veth to the underlay bridge, its own address),
                       br0 (a bridge with the spoke's port "v-<spoke>"),
                       forwarding and proxy ARP on both, the access link's
                       `mtu` on br0, its port and the spoke's nbma0; nftables
                       table `dmvpnlab_access` for `drop_icmp` and `firewall`

Proxy ARP keeps the spoke's underlay address: the router answers the
spoke's ARP for anything on the bridge (reached through wan0) and the
bridge's for the spoke (a /32 route through br0), so packets between them
are routed, and a packet bigger than the access link is fragmented, or with
DF dropped and answered with ICMP Fragmentation Needed, as by a real
access router.

`Lab.up()` calls `build()` after the underlay bridge and before the
routers (a spoke's port goes on the access router's br0), and `finish()`
once the spoke's nbma0 is up; `Lab.down()` deletes the namespaces with the
others.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import TYPE_CHECKING, TypedDict

from .accessplan import AccessPlan
from .topology import NodePlan

if TYPE_CHECKING:
    from .netns import Lab

__all__ = ["TABLE", "AccessStatus", "build", "finish", "ruleset", "status"]

WAN_INTERFACE = "wan0"
SPOKE_BRIDGE = "br0"  # the underlay's name: the spoke's port is put on "a bridge"
TABLE = "dmvpnlab_access"


class AccessStatus(TypedDict):
    """One row of `lab status` for an access router."""

    name: str
    namespace: str
    spoke: str
    address: str
    mtu: int | None
    drop_icmp: bool
    firewall: bool
    up: bool


def ruleset(acc: AccessPlan) -> str | None:
    """The access router's nftables ruleset (`nft -f`), or None: it needs none."""
    if not (acc.drop_icmp or acc.firewall):
        return None
    # The black hole first: ICMP errors are `related` and the firewall would
    # pass them. Its own Fragmentation Needed leaves through output.
    black_hole = (
        "icmp type destination-unreachable icmp code frag-needed counter drop"
        if acc.drop_icmp
        else ""
    )
    # docs/MTU.md's table, nothing more: GRE (NHRP inside), ESP, IKE and ESP
    # in UDP, Fragmentation Needed for path MTU discovery, and answers.
    firewall = (
        """ct state established,related counter accept
        ip protocol { gre, esp } counter accept
        udp dport { 500, 4500 } counter accept
        icmp type destination-unreachable icmp code frag-needed counter accept
        counter drop"""
        if acc.firewall
        else ""
    )
    return f"""\
table ip {TABLE} {{
    chain forward {{
        type filter hook forward priority filter; policy accept;
        {black_hole}
        {firewall}
    }}
    chain output {{
        type filter hook output priority filter; policy accept;
        {black_hole}
    }}
}}
"""


def build(lab: Lab) -> None:
    """Create every access router of the lab's topology (its namespace exists)."""
    routers = lab.topology.access_routers
    if any(ruleset(a) for a in routers) and shutil.which("nft") is None:
        from .netns import LabError

        raise LabError("the topology's access routers filter with nftables but 'nft' is missing")
    for acc in routers:
        _build_one(lab, acc)


def _sysctl(lab: Lab, ns: str, *settings: str) -> None:
    lab._run(
        [lab.ip, "netns", "exec", ns, "sysctl", "-qw", *settings],
        what="set up an access router",
    )


def _build_one(lab: Lab, acc: AccessPlan) -> None:
    from .netns import BRIDGE

    inet, ns = lab.namespace("inet"), lab.namespace(acc.name)
    port = f"v-{acc.name}"
    lab._ip(
        "-n", inet, "link", "add", port, "type", "veth", "peer", "name", WAN_INTERFACE, "netns", ns
    )
    lab._ip("-n", inet, "link", "set", port, "master", BRIDGE, "up")
    lab._ip("-n", ns, "addr", "add", str(acc.address), "dev", WAN_INTERFACE)
    lab._ip("-n", ns, "link", "set", WAN_INTERFACE, "up")
    lab._ip("-n", ns, "link", "add", SPOKE_BRIDGE, "type", "bridge")
    lab._ip("-n", ns, "link", "set", SPOKE_BRIDGE, "up")
    settings = ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0"]
    for dev in (WAN_INTERFACE, SPOKE_BRIDGE):
        # Answer at once: the default 0.8 s delay would slow every first packet.
        settings += [f"net.ipv4.conf.{dev}.proxy_arp=1", f"net.ipv4.neigh.{dev}.proxy_delay=0"]
    _sysctl(lab, ns, *settings)
    rules = ruleset(acc)
    if rules is not None:
        _nft(lab, ns, rules)


def _nft(lab: Lab, ns: str, rules: str) -> None:
    from .netns import CommandError

    argv = [lab.ip, "netns", "exec", ns, "nft", "-f", "-"]
    res = subprocess.run(argv, input=rules, capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise CommandError(argv, res.returncode, res.stderr, "load an access router's ruleset")


def finish(lab: Lab, spoke: NodePlan) -> None:
    """The spoke's port is on the access router's bridge and its nbma0 up:
    route its address there and give the access link its MTU."""
    from .netns import NBMA_INTERFACE

    assert spoke.access is not None and spoke.nbma is not None
    acc = {a.name: a for a in lab.topology.access_routers}[spoke.access]
    ns = lab.namespace(acc.name)
    lab._ip("-n", ns, "route", "add", f"{spoke.nbma.ip}/32", "dev", SPOKE_BRIDGE)
    if acc.mtu is not None:
        mtu = str(acc.mtu)
        lab._ip("-n", ns, "link", "set", f"v-{spoke.name}", "mtu", mtu)
        lab._ip("-n", ns, "link", "set", SPOKE_BRIDGE, "mtu", mtu)
        lab._ip("-n", lab.namespace(spoke.name), "link", "set", NBMA_INTERFACE, "mtu", mtu)


def status(lab: Lab, existing: set[str]) -> list[AccessStatus]:
    """The access routers for `lab status`."""
    return [
        AccessStatus(
            name=a.name,
            namespace=lab.namespace(a.name),
            spoke=a.spoke,
            address=str(a.address),
            mtu=a.mtu,
            drop_icmp=a.drop_icmp,
            firewall=a.firewall,
            up=lab.namespace(a.name) in existing,
        )
        for a in lab.topology.access_routers
    ]
