"""TCP MSS clamping on a DMVPN interface (Cisco `ip tcp adjust-mss N`).

Why: the tunnel's MTU (1400 by default) is below the 1500 that hosts on the
LANs assume, and the path MTU discovery that would tell them so often fails
(ICMP filtered on the way). Lowering the MSS option of every TCP SYN and
SYN-ACK that crosses the tunnel makes both ends send segments that fit, with
no ICMP needed.

How: one nftables table the daemon owns (dmvpn/nftables.py; the kernel
removes it when the daemon exits), in the interface's network namespace:

    chain in  { type filter hook prerouting priority mangle;
                iifname TAP meta nfproto ipv4 tcp flags syn
                    tcp option maxseg size > N tcp option maxseg size set N counter
                iifname TAP meta nfproto ipv6 ... N - 20 ... }
    chain out { type filter hook postrouting priority mangle;
                oifname TAP ... the same }

`inet`, so IPv4 and IPv6 alike (IPv6 20 bytes less: its header is 20 bytes
longer, so the same N would not fit; Cisco sets `ipv6 tcp adjust-mss`
apart); both directions, whether the segment is
forwarded (LAN <-> cloud) or the router's own. It never raises an MSS
(`> N` before the set). Every data plane passes the TAP through these hooks:
the userspace path and the C pump read and write the TAP, the eBPF plane's
programs sit on the TAP's egress (after postrouting) and redirect decapsulated
packets into its ingress (before prerouting). The kernel's exthdr set fixes
the TCP checksum, partial (offloaded) checksums included.
"""

from __future__ import annotations

import socket
import struct

from dmvpn import nftables as nft

__all__ = ["MssClamp", "clamp_rule"]

TCPOPT_MAXSEG = 2
TCP_FLAGS_OFFSET = 13
TCP_SYN = 0x02
# Cisco applies adjust-mss after its own mangling; NF_IP_PRI_MANGLE (-150)
# runs before the filter chains, so a LAN firewall sees the clamped value.
PRIORITY = -150


def clamp_rule(direction: int, interface: str, family: int, mss: int) -> list[bytes]:
    """`iifname|oifname IF meta nfproto FAMILY meta l4proto tcp tcp flags &
    syn != 0 tcp option maxseg size > MSS tcp option maxseg size set MSS
    counter`."""
    size = struct.pack(">H", mss)
    return [
        nft.meta(direction),
        nft.cmp(nft.NFT_CMP_EQ, nft.ifname(interface)),
        nft.meta(nft.NFT_META_NFPROTO),
        nft.cmp(nft.NFT_CMP_EQ, bytes([family])),
        nft.meta(nft.NFT_META_L4PROTO),
        nft.cmp(nft.NFT_CMP_EQ, bytes([socket.IPPROTO_TCP])),
        nft.transport(TCP_FLAGS_OFFSET, 1),
        nft.mask(bytes([TCP_SYN])),
        nft.cmp(nft.NFT_CMP_NEQ, b"\0"),
        # Option kind 2, length 4: the size is bytes 2-3 (RFC 9293 3.2).
        nft.tcp_option(TCPOPT_MAXSEG, 2, 2),
        nft.cmp(nft.NFT_CMP_GT, size),
        nft.load(size),
        nft.set_tcp_option(TCPOPT_MAXSEG, 2, 2),
        nft.counter(),
    ]


class MssClamp:
    """The clamp on one interface, from construction until `release()`."""

    def __init__(self, interface: str, mss: int) -> None:
        self.interface, self.mss = interface, mss

        def rules(direction: int) -> list[list[bytes]]:
            # The IPv6 header is 20 bytes longer than IPv4's: the same
            # packet size leaves 20 bytes less for the segment.
            return [
                clamp_rule(direction, interface, nft.NFPROTO_IPV4, mss),
                clamp_rule(direction, interface, nft.NFPROTO_IPV6, mss - 20),
            ]

        chains = [
            nft.Chain("in", nft.NF_INET_PRE_ROUTING, PRIORITY, rules(nft.NFT_META_IIFNAME)),
            nft.Chain("out", nft.NF_INET_POST_ROUTING, PRIORITY, rules(nft.NFT_META_OIFNAME)),
        ]
        self._table = nft.OwnedTable(f"dmvpn_mss_{interface}", chains)

    def clamped(self) -> dict[str, int]:
        """SYNs whose MSS was lowered so far, by direction (into the cloud:
        `out`; from it: `in`). Missing when the counters cannot be read."""
        out = {}
        for chain in ("in", "out"):
            n = self._table.counted(chain)
            if n is not None:
                out[chain] = n
        return out

    def release(self) -> None:
        self._table.release()
