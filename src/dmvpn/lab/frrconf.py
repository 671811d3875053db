"""What an frr node of the topology runs: nhrpd.conf and the guest's network set-up.

Pure text from the topology (no I/O), so it is checked without root or a VM.
`dmvpn.lab.frrnode` writes these files and boots the guest that uses them.

The guest (a QEMU guest with Debian's kernel, `dmvpn.lab.vm`) has:

    nbma0   the underlay NIC, NBMA address (a tap bridged to the lab's underlay)
    lan0    a spoke's LAN NIC, LAN .1 (a tap bridged to the veth to its host)
    mgre0   a kernel multipoint GRE tunnel with the topology's key, the tunnel
            address as a /32 (nhrpd never registers without a /32)

and FRR's zebra + nhrpd configured with the same vocabulary as a native node
(network-id, holdtime, nhs, redirect, shortcut, authentication, no-unique).
"""

from __future__ import annotations

from ipaddress import IPv4Interface

from .topology import NodePlan, Topology

__all__ = [
    "FRR_LOGS",
    "GUEST_LAN",
    "GUEST_NBMA",
    "GUEST_TUNNEL",
    "NFLOG_GROUP",
    "guest_setup",
    "nhrpd_conf",
    "vtysh_command",
    "zebra_conf",
]

# The names a dmvpn router gives its interfaces too.
GUEST_NBMA = "nbma0"
GUEST_LAN = "lan0"
GUEST_TUNNEL = "mgre0"
# FRR logs straight into the guest's work directory (the 9p share, so they
# land in the lab's run directory as <node>.frr/logs/): a sticky world-writable
# directory, because FRR writes as its own user.
FRR_LOGS = "/run/out/logs"
# nhrpd learns of hairpinned traffic (to send Traffic Indications) only through
# NFLOG: `nhrp nflog-group` plus an iptables rule (real-peers.md).
NFLOG_GROUP = 1


def _ip(addr: IPv4Interface | None) -> str:
    assert addr is not None  # routers always have both addresses
    return str(addr.ip)


def _frr_node(topo: Topology, name: str) -> NodePlan:
    me = topo.plan(name)
    if me.role == "host" or me.kind != "frr":
        raise ValueError(f"{name} is not an frr router")
    return me


def nhrpd_conf(topo: Topology, name: str) -> str:
    """nhrpd's configuration for an frr hub or spoke."""
    me = _frr_node(topo, name)
    redirect = me.role == "hub" and topo.phase == 3
    lines = [f"hostname {name}", f"log file {FRR_LOGS}/nhrpd.log debugging", "debug nhrp common"]
    if redirect:
        lines.append(f"nhrp nflog-group {NFLOG_GROUP}")
    lines += ["!", f"interface {GUEST_TUNNEL}", " ip nhrp network-id 1"]
    lines.append(f" ip nhrp holdtime {topo.holdtime}")
    if topo.authentication is not None:
        lines.append(f" ip nhrp authentication {topo.authentication}")
    if me.role == "hub":
        if redirect:
            lines.append(" ip nhrp redirect")
    else:
        for hub in topo.hubs:
            lines.append(f" ip nhrp nhs {_ip(hub.tunnel)} nbma {_ip(hub.nbma)}")
        if me.registration_no_unique:
            lines.append(" ip nhrp registration no-unique")
        if topo.phase == 3:
            lines.append(" ip nhrp shortcut")
    lines += [f" tunnel source {GUEST_NBMA}", "!", ""]
    return "\n".join(lines)


def zebra_conf(name: str) -> str:
    return f"hostname {name}\nlog file {FRR_LOGS}/zebra.log\n!\n"


def guest_setup(topo: Topology, name: str) -> str:
    """The shell commands that give the guest its addresses, tunnel and routes.

    Run by the guest's init before zebra starts, so zebra reads the routes in.
    """
    me = _frr_node(topo, name)
    assert me.nbma is not None
    batch = [
        "link set lo up",
        f"addr add {me.nbma} dev {GUEST_NBMA}",
        f"link set {GUEST_NBMA} up",
        f"tunnel add {GUEST_TUNNEL} mode gre key {topo.key} ttl 64 dev {GUEST_NBMA}",
        f"addr add {_ip(me.tunnel)}/32 dev {GUEST_TUNNEL}",
        f"link set {GUEST_TUNNEL} up",
    ]
    if me.lan is not None:
        batch += [f"addr add {me.lan} dev {GUEST_LAN}", f"link set {GUEST_LAN} up"]

    # Overlay routes point `via` a tunnel address, `onlink`: a plain `dev
    # mgre0` route reaches nhrpd as "via 0.0.0.0", and then nhrpd neither
    # answers nor forwards Resolution Requests for it (real-peers.md).
    def via(prefix: str, node: NodePlan) -> str:
        return f"route add {prefix} via {_ip(node.tunnel)} dev {GUEST_TUNNEL} onlink"

    hub1 = topo.hubs[0]
    if me.role == "hub":
        for spoke in topo.spokes:
            assert spoke.lan is not None
            batch.append(via(str(spoke.lan.network), spoke))
    elif topo.phase == 2:
        for spoke in topo.spokes:
            if spoke.name != name:
                assert spoke.lan is not None
                batch.append(via(str(spoke.lan.network), spoke))
    else:
        batch.append(via(str(topo.lan_summary), hub1))
    if me.name != hub1.name:
        # The other routers' tunnel addresses (pings, `show` checks) via hub1.
        batch.append(via(str(topo.tunnel_network), hub1))
    lines = ["ip -batch - <<'EOB'", *batch, "EOB", "sysctl -qw net.ipv4.ip_forward=1"]
    if me.role == "hub" and topo.phase == 3:
        # At most four indications a minute per /24 pair, as FRR's documentation
        # shows; threshold 1 sends each at once (else up to a second late).
        # `iptables` is the root's default backend (nft on Debian 12 and 13).
        lines += [
            f"iptables -A FORWARD -i {GUEST_TUNNEL} -o {GUEST_TUNNEL} -m hashlimit "
            "--hashlimit-upto 4/minute --hashlimit-burst 1 --hashlimit-mode srcip,dstip "
            "--hashlimit-srcmask 24 --hashlimit-dstmask 24 --hashlimit-name loglimit-0 "
            f"-j NFLOG --nflog-group {NFLOG_GROUP} --nflog-threshold 1",
        ]
    return "\n".join(lines) + "\n"


# `dmvpn lab show NODE ARGS` on an frr node: our show vocabulary -> vtysh.
_SHOW = {
    ("nhrp",): "show ip nhrp cache",
    ("nhrp", "cache"): "show ip nhrp cache",
    ("nhrp", "nhs"): "show ip nhrp nhs",
    ("nhrp", "shortcut"): "show ip nhrp shortcut",
    ("dmvpn",): "show dmvpn",
}


def vtysh_command(args: list[str] | tuple[str, ...]) -> str:
    """The vtysh command for `dmvpn show ARGS` (`--json` -> nhrpd's `json`).

    Arguments starting with "ip" or "show" pass through as a vtysh command,
    so any of nhrpd's own show commands works too. ValueError if unknown.
    """
    words = [a for a in args if a != "--json"]
    as_json = len(words) != len(args)
    if words[:1] == ["show"]:
        command = " ".join(words)
    elif words[:1] == ["ip"]:
        command = "show " + " ".join(words)
    elif tuple(words) in _SHOW:
        command = _SHOW[tuple(words)]
    else:
        known = ", ".join(" ".join(k) for k in _SHOW)
        raise ValueError(
            f"no nhrpd equivalent of `show {' '.join(words)}` (known: {known}; "
            "or give nhrpd's own, e.g. `ip nhrp cache`)"
        )
    return command + (" json" if as_json else "")
