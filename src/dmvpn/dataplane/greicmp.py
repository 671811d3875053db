"""No ICMP from the kernel's ip_gre for the GRE the userspace plane reads.

Where ip_gre is loaded (most servers, every guest of the lab), the kernel's
GRE demux hands each GRE packet to ip_gre, and ip_gre answers one that no
kernel tunnel claims with ICMP port unreachable (ip_gre.c, `gre_rcv`), even
though our raw GRE socket takes the packet too. The peer receives the ICMP
in clear text even with IPsec (it is not GRE: no XFRM policy of ours covers
it), and a peer on the kernel's GRE (nhrpd's) counts it as a tunnel error
and answers its next packets with errors of its own. Seen in the lab: our
spoke on the userspace plane in a guest, an nhrpd hub, every echo over the
tunnel followed by an ICMP port unreachable quoting the hub's GRE.

One table the daemon owns (dmvpn/nftables.py: the kernel removes it when
the daemon exits), in the underlay's namespace, drops them:

    chain out { type filter hook output priority 0;
                meta nfproto ipv4 meta l4proto icmp
                icmp type 3 code 3      (destination / port unreachable)
                @th,136,8 47            (the quoted packet is GRE: its
                                         protocol byte, 8 + 9 bytes in)
                counter drop }
"""

from __future__ import annotations

import socket
from pathlib import Path

from dmvpn import nftables as nft

__all__ = ["GreIcmpFilter", "ip_gre_loaded", "quiet_rule"]

ICMP_DEST_UNREACH, ICMP_PORT_UNREACH = 3, 3
QUOTED_PROTOCOL = 8 + 9  # ICMP header, then the quoted IPv4 header's protocol


def ip_gre_loaded() -> bool:
    return Path("/sys/module/ip_gre").exists()


def quiet_rule() -> list[bytes]:
    return [
        nft.meta(nft.NFT_META_NFPROTO),
        nft.cmp(nft.NFT_CMP_EQ, bytes([nft.NFPROTO_IPV4])),
        nft.meta(nft.NFT_META_L4PROTO),
        nft.cmp(nft.NFT_CMP_EQ, bytes([socket.IPPROTO_ICMP])),
        nft.transport(0, 2),
        nft.cmp(nft.NFT_CMP_EQ, bytes([ICMP_DEST_UNREACH, ICMP_PORT_UNREACH])),
        nft.transport(QUOTED_PROTOCOL, 1),
        nft.cmp(nft.NFT_CMP_EQ, bytes([socket.IPPROTO_GRE])),
        nft.counter(),
        nft.verdict(nft.NF_DROP),
    ]


class GreIcmpFilter:
    """The table for one interface, made in the caller's namespace."""

    def __init__(self, interface: str) -> None:
        chain = nft.Chain("out", nft.NF_INET_LOCAL_OUT, 0, [quiet_rule()])
        self._table = nft.OwnedTable(f"dmvpn_greicmp_{interface}", [chain])

    def dropped(self) -> int | None:
        return self._table.counted("out")

    def release(self) -> None:
        self._table.release()
