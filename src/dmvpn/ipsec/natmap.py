"""GRE through IPsec NAT traversal: the post-NAT view of a NATed peer's GRE.

Why: the SAs are tunnel mode (kernel-libipsec does no other) with traffic
selectors on the NBMA addresses, `A/32[gre] === B/32[gre]`. A spoke behind
NAT only knows its inside address, so it proposes `inside/32[gre]` as its
selector and its GRE, inside the ESP, carries that address as source. The
peer (a hub, or a public spoke answering its IKE) sees the spoke's IKE and
ESP come from the NAT's public address. NHRP must bind the spoke there
(the only address that reaches it, and the one the NAT extension speaks of),
so on this side the GRE of such an SA is translated, statelessly, between
the two views:

    in   (decapsulated)  GRE from `inside`  ->  from `public`
    out  (to the SA)     GRE to   `public`  ->  to   `inside`  (the SA's selector)

`mappings` reads them from charon's SAs (pure); `NatView` keeps one
nftables table (owner flag: it goes with the daemon) with a rule pair per
mapping. Stateless on purpose: conntrack would pin a GRE flow that arrived
before its mapping to the untranslated addresses for minutes.

Limits (docs/NAT.md): two NATed peers with the same inside address, or two
behind one public address (a shared PAT), cannot both be told apart by
address alone; the first mapping wins and the clash is reported.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from ipaddress import IPv4Address, ip_address
from typing import Any

from dmvpn import nftables as nft

from .settings import CHILD

__all__ = ["NatView", "mappings", "selector_problem"]

TABLE = "dmvpn_natt"
# Before anything that reads GRE addresses: the raw GRE socket sees the
# packet after the input hook, libipsec after the output hook.
PRIORITY = -200
NETWORK_HEADER = 1
SADDR, DADDR = 12, 16
# nft_payload: write register 1 back, fixing the IPv4 header checksum.
PAYLOAD_SREG, PAYLOAD_CSUM_TYPE, PAYLOAD_CSUM_OFFSET = 5, 6, 7
CSUM_INET, IPV4_CSUM_OFFSET = 1, 10


def _ts_address(ts: Any) -> IPv4Address | None:
    """The one IPv4 address of a traffic selector like `172.31.1.11/32[gre]`."""
    text = str(ts).split("[", 1)[0]
    addr, _, length = text.partition("/")
    try:
        ip = ip_address(addr)
    except ValueError:
        return None
    if not isinstance(ip, IPv4Address) or length not in ("", "32"):
        return None
    return ip


def _children(sa: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        c
        for c in sa.get("child-sas", {}).values()
        if c.get("name") == CHILD and c.get("state") == "INSTALLED"
    ]


def selector_problem(sa: dict[str, Any]) -> str | None:
    """Why the GRE child of this IKE SA must not stand: its peer's selector is
    not one address, or not the peer's own address without NAT between us
    (the responder template accepts any GRE selector so that a NATed peer's
    inside address passes; only NAT excuses a selector other than the
    peer's address)."""
    remote = sa.get("remote-host")
    nat = sa.get("nat-remote") == "yes"
    for child in _children(sa):
        for ts in child.get("remote-ts") or []:
            ip = _ts_address(ts)
            if ip is None:
                return f"selector {ts} is not one IPv4 address"
            if str(ip) != remote and not nat:
                return f"selector {ts} is not the peer's address {remote} and no NAT was detected"
    return None


def mappings(sas: Iterable[dict[str, Any]]) -> dict[IPv4Address, IPv4Address]:
    """Inside address -> public address of every established, NATed GRE SA
    whose peer's selector is its inside address (first one wins)."""
    out: dict[IPv4Address, IPv4Address] = {}
    for sa in sas:
        if sa.get("state") != "ESTABLISHED" or sa.get("nat-remote") != "yes":
            continue
        try:
            public = ip_address(str(sa.get("remote-host")))
        except ValueError:
            continue
        if not isinstance(public, IPv4Address) or selector_problem(sa) is not None:
            continue
        for child in _children(sa):
            for ts in child.get("remote-ts") or []:
                inside = _ts_address(ts)
                if inside is not None and inside != public:
                    out.setdefault(inside, public)
    return out


def _rewrite(match_offset: int, match: IPv4Address, to: IPv4Address) -> list[bytes]:
    """`meta nfproto ipv4 meta l4proto gre ip {s,d}addr MATCH ip {s,d}addr set TO`."""
    return [
        nft.meta(nft.NFT_META_NFPROTO),
        nft.cmp(nft.NFT_CMP_EQ, bytes([nft.NFPROTO_IPV4])),
        nft.meta(nft.NFT_META_L4PROTO),
        nft.cmp(nft.NFT_CMP_EQ, bytes([socket.IPPROTO_GRE])),
        nft.expr(
            "payload",
            nft.u32(nft.PAYLOAD_DREG, nft.NFT_REG_1),
            nft.u32(nft.PAYLOAD_BASE, NETWORK_HEADER),
            nft.u32(nft.PAYLOAD_OFFSET, match_offset),
            nft.u32(nft.PAYLOAD_LEN, 4),
        ),
        nft.cmp(nft.NFT_CMP_EQ, match.packed),
        nft.load(to.packed),
        nft.expr(
            "payload",
            nft.u32(PAYLOAD_SREG, nft.NFT_REG_1),
            nft.u32(nft.PAYLOAD_BASE, NETWORK_HEADER),
            nft.u32(nft.PAYLOAD_OFFSET, match_offset),
            nft.u32(nft.PAYLOAD_LEN, 4),
            nft.u32(PAYLOAD_CSUM_TYPE, CSUM_INET),
            nft.u32(PAYLOAD_CSUM_OFFSET, IPV4_CSUM_OFFSET),
        ),
        nft.counter(),
    ]


def chains(view: dict[IPv4Address, IPv4Address]) -> list[nft.Chain]:
    """The table's two chains for these mappings."""
    inbound = [_rewrite(SADDR, inside, public) for inside, public in sorted(view.items())]
    outbound = [_rewrite(DADDR, public, inside) for inside, public in sorted(view.items())]
    return [
        nft.Chain("in", nft.NF_INET_LOCAL_IN, PRIORITY, inbound),
        nft.Chain("out", nft.NF_INET_LOCAL_OUT, PRIORITY, outbound),
    ]


class NatView:
    """The translation table, made again whenever the mappings change (none:
    no table)."""

    def __init__(self) -> None:
        self.view: dict[IPv4Address, IPv4Address] = {}
        self._table: nft.OwnedTable | None = None

    def sync(self, view: dict[IPv4Address, IPv4Address]) -> bool:
        """Install `view`; True if it changed. OSError if nftables refuses."""
        if view == self.view:
            return False
        if self._table is not None:
            self._table.release()
            self._table = None
        self.view = dict(view)
        if view:
            self._table = nft.OwnedTable(TABLE, chains(view))
        return True

    def close(self) -> None:
        self.sync({})
