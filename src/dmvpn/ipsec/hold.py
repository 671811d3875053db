"""Hold peers' IKE while a fresh charon is being configured.

Why: charon opens its IKE sockets (UDP 500 and 4500) when it loads its
plugins and answers from the moment its worker threads run; dmvpn can load
connections and credentials over VICI only after that. An IKE_SA_INIT that
arrives in between finds no IKE config and charon answers it with
NO_PROPOSAL_CHOSEN: a peer (a spoke starting with its hub, every spoke when
a hub restarts) then reports a failure that is not the real one and backs
off. strongSwan 5.9.8 has no way to defer that: `start-scripts` run after
the worker threads start, `initiator_only` and the interface filters are
read once at start, and a connection cannot be loaded before VICI serves.

So the daemon drops incoming UDP 500/4500 in its network namespace from
before charon starts until its connections are loaded. Dropped, not
refused: the peer's IKE retransmits and its next try is answered by a
configured charon. The drop is an nftables table with the `owner` flag
(Linux 5.12): it belongs to the netlink socket that made it and the kernel
deletes it when that socket closes, so a daemon that dies, even by
SIGKILL, never leaves IKE blocked.
"""

from __future__ import annotations

import socket
import struct
import time

from dmvpn import nftables as nft

TABLE = "dmvpn_ike_hold"
CHAIN = "input"
IKE_PORTS = (500, 4500)
# Before the usual filter chains (0): a drop anywhere is final anyway.
PRIORITY = -300


def _drop_udp_to(port: int) -> list[bytes]:
    """`meta l4proto udp th dport PORT counter drop` as expressions."""
    return [
        nft.meta(nft.NFT_META_L4PROTO),
        nft.cmp(nft.NFT_CMP_EQ, bytes([socket.IPPROTO_UDP])),
        nft.transport(2, 2),
        nft.cmp(nft.NFT_CMP_EQ, struct.pack(">H", port)),
        nft.counter(),
        nft.verdict(nft.NF_DROP),
    ]


class IkeHold:
    """Incoming IKE (UDP 500/4500) to this network namespace is dropped from
    construction until `release()` (or until this process exits)."""

    def __init__(self) -> None:
        self.since = time.monotonic()
        chain = nft.Chain(
            CHAIN, nft.NF_INET_LOCAL_IN, PRIORITY, [_drop_udp_to(p) for p in IKE_PORTS]
        )
        self._table = nft.OwnedTable(TABLE, [chain])

    def dropped(self) -> int | None:
        """IKE packets dropped so far (None if the counters cannot be read)."""
        return self._table.counted(CHAIN)

    def release(self) -> None:
        """IKE passes again: closing the owning socket deletes the table
        (close-on-exec, so charon does not inherit it: nftables.py)."""
        self._table.release()
