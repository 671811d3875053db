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

import itertools
import os
import socket
import struct
import time

NETLINK_NETFILTER = 12
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP, NLM_F_CREATE = 0x1, 0x4, 0x300, 0x400
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_F_NESTED = 0x8000
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 16, 17
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE, NFT_MSG_GETRULE = 0, 3, 6, 7
NFPROTO_INET = 1
NFT_TABLE_F_OWNER = 0x2
NF_INET_LOCAL_IN = 1
NF_DROP, NF_ACCEPT = 0, 1
NFT_REG_VERDICT, NFT_REG_1 = 0, 1
NFT_META_L4PROTO = 16
NFT_PAYLOAD_TRANSPORT_HEADER = 2
NFT_CMP_EQ = 0
# Attribute numbers (linux/netfilter/nf_tables.h).
TABLE_NAME, TABLE_FLAGS = 1, 2
CHAIN_TABLE, CHAIN_NAME, CHAIN_HOOK, CHAIN_POLICY, CHAIN_TYPE = 1, 3, 4, 5, 7
HOOK_HOOKNUM, HOOK_PRIORITY = 1, 2
RULE_TABLE, RULE_CHAIN, RULE_EXPRESSIONS = 1, 2, 4
LIST_ELEM, EXPR_NAME, EXPR_DATA = 1, 1, 2
DATA_VALUE, DATA_VERDICT, VERDICT_CODE = 1, 2, 1
META_DREG, META_KEY = 1, 2
CMP_SREG, CMP_OP, CMP_DATA = 1, 2, 3
PAYLOAD_DREG, PAYLOAD_BASE, PAYLOAD_OFFSET, PAYLOAD_LEN = 1, 2, 3, 4
IMMEDIATE_DREG, IMMEDIATE_DATA = 1, 2
COUNTER_PACKETS = 2

TABLE = "dmvpn_ike_hold"
CHAIN = "input"
IKE_PORTS = (500, 4500)
# Before the usual filter chains (0): a drop anywhere is final anyway.
PRIORITY = -300


def _attr(kind: int, payload: bytes) -> bytes:
    head = struct.pack("=HH", 4 + len(payload), kind)
    return head + payload + b"\0" * (-len(payload) % 4)


def _nested(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(attrs))


def _str(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack(">i" if value < 0 else ">I", value))


def _expr(name: str, *data: bytes) -> bytes:
    return _nested(LIST_ELEM, _str(EXPR_NAME, name), _nested(EXPR_DATA, *data))


def _cmp_eq(value: bytes) -> bytes:
    return _expr(
        "cmp",
        _u32(CMP_SREG, NFT_REG_1),
        _u32(CMP_OP, NFT_CMP_EQ),
        _nested(CMP_DATA, _attr(DATA_VALUE, value)),
    )


def _drop_udp_to(port: int) -> bytes:
    """`meta l4proto udp th dport PORT counter drop` as expressions."""
    l4proto = _expr("meta", _u32(META_DREG, NFT_REG_1), _u32(META_KEY, NFT_META_L4PROTO))
    dport = _expr(
        "payload",
        _u32(PAYLOAD_DREG, NFT_REG_1),
        _u32(PAYLOAD_BASE, NFT_PAYLOAD_TRANSPORT_HEADER),
        _u32(PAYLOAD_OFFSET, 2),
        _u32(PAYLOAD_LEN, 2),
    )
    verdict = _nested(IMMEDIATE_DATA, _nested(DATA_VERDICT, _u32(VERDICT_CODE, NF_DROP)))
    drop = _expr("immediate", _u32(IMMEDIATE_DREG, NFT_REG_VERDICT), verdict)
    return _nested(
        RULE_EXPRESSIONS,
        l4proto,
        _cmp_eq(bytes([socket.IPPROTO_UDP])),
        dport,
        _cmp_eq(struct.pack(">H", port)),
        _expr("counter"),
        drop,
    )


def _attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    pos = 0
    while pos + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, pos)
        if length < 4:
            break
        out.setdefault(kind & ~NLA_F_NESTED, data[pos + 4 : pos + length])
        pos += (length + 3) & ~3
    return out


def _elems(data: bytes) -> list[bytes]:
    out = []
    pos = 0
    while pos + 4 <= len(data):
        length, _kind = struct.unpack_from("=HH", data, pos)
        if length < 4:
            break
        out.append(data[pos + 4 : pos + length])
        pos += (length + 3) & ~3
    return out


class IkeHold:
    """Incoming IKE (UDP 500/4500) to this network namespace is dropped from
    construction until `release()` (or until this process exits)."""

    def __init__(self) -> None:
        self._seq = itertools.count(int(time.time()) & 0xFFFFFF)
        self.since = time.monotonic()
        self.sock: socket.socket | None = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER
        )
        try:
            self.sock.settimeout(2.0)
            self.sock.bind((0, 0))
            self._install()
        except OSError:
            self.sock.close()
            self.sock = None
            raise

    def _message(
        self,
        kind: int,
        flags: int,
        payload: bytes,
        seq: int,
        family: int = NFPROTO_INET,
        res_id: int = 0,
    ) -> bytes:
        body = struct.pack("=BBH", family, 0, socket.htons(res_id)) + payload
        return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body

    def _install(self) -> None:
        assert self.sock is not None
        nft = NFNL_SUBSYS_NFTABLES << 8
        create = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK
        hook = _nested(
            CHAIN_HOOK, _u32(HOOK_HOOKNUM, NF_INET_LOCAL_IN), _u32(HOOK_PRIORITY, PRIORITY)
        )
        parts = [
            (
                nft | NFT_MSG_NEWTABLE,
                _str(TABLE_NAME, TABLE) + _u32(TABLE_FLAGS, NFT_TABLE_F_OWNER),
            ),
            (
                nft | NFT_MSG_NEWCHAIN,
                _str(CHAIN_TABLE, TABLE)
                + _str(CHAIN_NAME, CHAIN)
                + hook
                + _u32(CHAIN_POLICY, NF_ACCEPT)
                + _str(CHAIN_TYPE, "filter"),
            ),
        ] + [
            (
                nft | NFT_MSG_NEWRULE,
                _str(RULE_TABLE, TABLE) + _str(RULE_CHAIN, CHAIN) + _drop_udp_to(port),
            )
            for port in IKE_PORTS
        ]
        seqs = [next(self._seq) for _ in range(len(parts) + 2)]
        batch = [
            self._message(
                NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, b"", seqs[0], 0, NFNL_SUBSYS_NFTABLES
            )
        ]
        for (kind, payload), seq in zip(parts, seqs[1:-1], strict=True):
            batch.append(self._message(kind, create, payload, seq))
        batch.append(
            self._message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, b"", seqs[-1], 0, NFNL_SUBSYS_NFTABLES)
        )
        self.sock.send(b"".join(batch))
        waiting = set(seqs[1:-1])
        while waiting:
            for kind, seq, body in self._receive():
                if kind != NLMSG_ERROR:
                    continue
                (error,) = struct.unpack_from("=i", body)
                if error:
                    raise OSError(-error, f"nftables: {TABLE}: {os.strerror(-error)}")
                waiting.discard(seq)

    def _receive(self) -> list[tuple[int, int, bytes]]:
        assert self.sock is not None
        data = self.sock.recv(65536)
        out = []
        pos = 0
        while pos + 16 <= len(data):
            length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, pos)
            if length < 16:
                break
            out.append((kind, seq, data[pos + 16 : pos + length]))
            pos += (length + 3) & ~3
        return out

    def dropped(self) -> int | None:
        """IKE packets dropped so far (None if the counters cannot be read)."""
        if self.sock is None:
            return None
        nft = NFNL_SUBSYS_NFTABLES << 8
        seq = next(self._seq)
        try:
            self.sock.send(
                self._message(
                    nft | NFT_MSG_GETRULE,
                    NLM_F_REQUEST | NLM_F_DUMP,
                    _str(RULE_TABLE, TABLE) + _str(RULE_CHAIN, CHAIN),
                    seq,
                )
            )
            total = 0
            while True:
                for kind, got, body in self._receive():
                    if got != seq:
                        continue
                    if kind == NLMSG_DONE:
                        return total
                    if kind == NLMSG_ERROR:
                        return None
                    total += _counted(body[4:])  # after the nfgenmsg
        except OSError:
            return None

    def release(self) -> None:
        """IKE passes again: closing the owning socket deletes the table.
        (The socket is close-on-exec, as Python makes them: charon must not
        inherit it, or the hold would live as long as charon.)"""
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _counted(rule: bytes) -> int:
    packets = 0
    for elem in _elems(_attrs(rule).get(RULE_EXPRESSIONS, b"")):
        expr = _attrs(elem)
        if expr.get(EXPR_NAME, b"").rstrip(b"\0") == b"counter":
            value = _attrs(expr.get(EXPR_DATA, b"")).get(COUNTER_PACKETS)
            if value is not None and len(value) == 8:
                packets += struct.unpack(">Q", value)[0]
    return packets
