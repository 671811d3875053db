"""nf_tables over netlink: a table that lives exactly as long as its owner.

The daemon puts a few packet rules in the kernel (the IKE hold while charon
starts, ipsec/hold.py; TCP MSS clamping on a DMVPN interface,
dataplane/mss.py). Each is one nftables table with the `owner` flag
(Linux 5.12): it belongs to the netlink socket that made it and the kernel
deletes it when that socket closes, so a daemon that dies, even by SIGKILL,
never leaves a rule behind, and no `nft` binary is needed.

This module only speaks the protocol (linux/netfilter/nf_tables.h): messages
and expressions are built as bytes by the helpers below, and `OwnedTable`
sends them in one batch and reads rule counters back.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP, NLM_F_CREATE = 0x1, 0x4, 0x300, 0x400
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_F_NESTED = 0x8000
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 16, 17
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE, NFT_MSG_GETRULE = 0, 3, 6, 7
NFPROTO_INET, NFPROTO_IPV4, NFPROTO_IPV6 = 1, 2, 10
NFT_TABLE_F_OWNER = 0x2
# Hooks.
NF_INET_PRE_ROUTING, NF_INET_LOCAL_IN, NF_INET_FORWARD = 0, 1, 2
NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING = 3, 4
NF_DROP, NF_ACCEPT = 0, 1
NFT_REG_VERDICT, NFT_REG_1 = 0, 1
NFT_META_IIFNAME, NFT_META_OIFNAME, NFT_META_NFPROTO, NFT_META_L4PROTO = 6, 7, 15, 16
NFT_PAYLOAD_TRANSPORT_HEADER = 2
NFT_CMP_EQ, NFT_CMP_NEQ, NFT_CMP_GT = 0, 1, 4
NFT_EXTHDR_OP_TCPOPT = 1
# Attribute numbers.
TABLE_NAME, TABLE_FLAGS = 1, 2
CHAIN_TABLE, CHAIN_NAME, CHAIN_HOOK, CHAIN_POLICY, CHAIN_TYPE = 1, 3, 4, 5, 7
HOOK_HOOKNUM, HOOK_PRIORITY = 1, 2
RULE_TABLE, RULE_CHAIN, RULE_EXPRESSIONS = 1, 2, 4
LIST_ELEM, EXPR_NAME, EXPR_DATA = 1, 1, 2
DATA_VALUE, DATA_VERDICT, VERDICT_CODE = 1, 2, 1
META_DREG, META_KEY = 1, 2
CMP_SREG, CMP_OP, CMP_DATA = 1, 2, 3
PAYLOAD_DREG, PAYLOAD_BASE, PAYLOAD_OFFSET, PAYLOAD_LEN = 1, 2, 3, 4
BITWISE_SREG, BITWISE_DREG, BITWISE_LEN, BITWISE_MASK, BITWISE_XOR = 1, 2, 3, 4, 5
EXTHDR_DREG, EXTHDR_TYPE, EXTHDR_OFFSET, EXTHDR_LEN, EXTHDR_OP, EXTHDR_SREG = 1, 2, 3, 4, 6, 7
IMMEDIATE_DREG, IMMEDIATE_DATA = 1, 2
COUNTER_PACKETS = 2
IFNAMSIZ = 16


# -- attributes -----------------------------------------------------------------


def attr(kind: int, payload: bytes) -> bytes:
    head = struct.pack("=HH", 4 + len(payload), kind)
    return head + payload + b"\0" * (-len(payload) % 4)


def nested(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def string(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack(">i" if value < 0 else ">I", value))


def parse(data: bytes) -> dict[int, bytes]:
    """Attributes by type (the first of each)."""
    out: dict[int, bytes] = {}
    for kind, value in _walk(data):
        out.setdefault(kind & ~NLA_F_NESTED, value)
    return out


def elements(data: bytes) -> list[bytes]:
    """The payloads of a nested list, in order."""
    return [value for _kind, value in _walk(data)]


def _walk(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    pos = 0
    while pos + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, pos)
        if length < 4:
            break
        out.append((kind, data[pos + 4 : pos + length]))
        pos += (length + 3) & ~3
    return out


# -- expressions (what `nft` would print) --------------------------------------


def expr(name: str, *data: bytes) -> bytes:
    return nested(LIST_ELEM, string(EXPR_NAME, name), nested(EXPR_DATA, *data))


def _value(data: bytes) -> bytes:
    return attr(DATA_VALUE, data)


def meta(key: int) -> bytes:
    """`meta KEY` into register 1."""
    return expr("meta", u32(META_DREG, NFT_REG_1), u32(META_KEY, key))


def cmp(op: int, value: bytes) -> bytes:
    """Register 1 compared with ``value`` (as bytes: big endian compares)."""
    return expr("cmp", u32(CMP_SREG, NFT_REG_1), u32(CMP_OP, op), nested(CMP_DATA, _value(value)))


def transport(offset: int, length: int) -> bytes:
    """``length`` bytes of the transport header at ``offset`` into register 1."""
    return expr(
        "payload",
        u32(PAYLOAD_DREG, NFT_REG_1),
        u32(PAYLOAD_BASE, NFT_PAYLOAD_TRANSPORT_HEADER),
        u32(PAYLOAD_OFFSET, offset),
        u32(PAYLOAD_LEN, length),
    )


def mask(bits: bytes) -> bytes:
    """Register 1 &= ``bits``."""
    return expr(
        "bitwise",
        u32(BITWISE_SREG, NFT_REG_1),
        u32(BITWISE_DREG, NFT_REG_1),
        u32(BITWISE_LEN, len(bits)),
        nested(BITWISE_MASK, _value(bits)),
        nested(BITWISE_XOR, _value(bytes(len(bits)))),
    )


def tcp_option(kind: int, offset: int, length: int) -> bytes:
    """`tcp option KIND` bytes into register 1 (no match without the option)."""
    return expr(
        "exthdr",
        u32(EXTHDR_DREG, NFT_REG_1),
        attr(EXTHDR_TYPE, bytes([kind])),
        u32(EXTHDR_OFFSET, offset),
        u32(EXTHDR_LEN, length),
        u32(EXTHDR_OP, NFT_EXTHDR_OP_TCPOPT),
    )


def set_tcp_option(kind: int, offset: int, length: int) -> bytes:
    """Register 1 written into `tcp option KIND` (the kernel fixes the checksum)."""
    return expr(
        "exthdr",
        u32(EXTHDR_SREG, NFT_REG_1),
        attr(EXTHDR_TYPE, bytes([kind])),
        u32(EXTHDR_OFFSET, offset),
        u32(EXTHDR_LEN, length),
        u32(EXTHDR_OP, NFT_EXTHDR_OP_TCPOPT),
    )


def load(value: bytes) -> bytes:
    """`immediate` ``value`` into register 1."""
    return expr("immediate", u32(IMMEDIATE_DREG, NFT_REG_1), nested(IMMEDIATE_DATA, _value(value)))


def verdict(code: int) -> bytes:
    data = nested(IMMEDIATE_DATA, nested(DATA_VERDICT, u32(VERDICT_CODE, code)))
    return expr("immediate", u32(IMMEDIATE_DREG, NFT_REG_VERDICT), data)


def counter() -> bytes:
    return expr("counter")


def ifname(name: str) -> bytes:
    """An interface name as `meta iifname/oifname` holds it (IFNAMSIZ, NUL padded)."""
    raw = name.encode()
    if len(raw) >= IFNAMSIZ:
        raise ValueError(f"interface name {name!r} is longer than {IFNAMSIZ - 1} bytes")
    return raw + b"\0" * (IFNAMSIZ - len(raw))


# -- tables ---------------------------------------------------------------------


@dataclass(frozen=True)
class Chain:
    """A base chain: ``hook`` at ``priority``, policy accept, and its rules
    (each a sequence of expressions)."""

    name: str
    hook: int
    priority: int
    rules: Sequence[Sequence[bytes]]
    type: str = "filter"


class OwnedTable:
    """An `inet` table with the owner flag, made at construction in the
    caller's network namespace; gone at `release()` or when the process
    exits. OSError (EEXIST, EPERM, ...) names the table."""

    def __init__(self, name: str, chains: Sequence[Chain]) -> None:
        self.name = name
        self.chains = tuple(chains)
        self._seq = itertools.count(int(time.time()) & 0xFFFFFF)
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
        self, kind: int, flags: int, payload: bytes, seq: int, family: int = NFPROTO_INET
    ) -> bytes:
        res_id = NFNL_SUBSYS_NFTABLES if kind in (NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END) else 0
        body = struct.pack("=BBH", family, 0, socket.htons(res_id)) + payload
        return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body

    def _install(self) -> None:
        assert self.sock is not None
        nft = NFNL_SUBSYS_NFTABLES << 8
        parts = [
            (
                nft | NFT_MSG_NEWTABLE,
                string(TABLE_NAME, self.name) + u32(TABLE_FLAGS, NFT_TABLE_F_OWNER),
            )
        ]
        for chain in self.chains:
            hook = nested(
                CHAIN_HOOK, u32(HOOK_HOOKNUM, chain.hook), u32(HOOK_PRIORITY, chain.priority)
            )
            parts.append(
                (
                    nft | NFT_MSG_NEWCHAIN,
                    string(CHAIN_TABLE, self.name)
                    + string(CHAIN_NAME, chain.name)
                    + hook
                    + u32(CHAIN_POLICY, NF_ACCEPT)
                    + string(CHAIN_TYPE, chain.type),
                )
            )
            for rule in chain.rules:
                parts.append(
                    (
                        nft | NFT_MSG_NEWRULE,
                        string(RULE_TABLE, self.name)
                        + string(RULE_CHAIN, chain.name)
                        + nested(RULE_EXPRESSIONS, *rule),
                    )
                )
        seqs = [next(self._seq) for _ in range(len(parts) + 2)]
        create = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK
        batch = [self._message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, b"", seqs[0], 0)]
        for (kind, payload), seq in zip(parts, seqs[1:-1], strict=True):
            batch.append(self._message(kind, create, payload, seq))
        batch.append(self._message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, b"", seqs[-1], 0))
        self.sock.send(b"".join(batch))
        waiting = set(seqs[1:-1])
        while waiting:
            for kind, seq, body in self._receive():
                if kind != NLMSG_ERROR:
                    continue
                (error,) = struct.unpack_from("=i", body)
                if error:
                    raise OSError(-error, f"nftables: {self.name}: {os.strerror(-error)}")
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

    def counted(self, chain: str) -> int | None:
        """Packets counted by the rules of ``chain`` so far (None if unreadable)."""
        if self.sock is None:
            return None
        nft = NFNL_SUBSYS_NFTABLES << 8
        seq = next(self._seq)
        try:
            self.sock.send(
                self._message(
                    nft | NFT_MSG_GETRULE,
                    NLM_F_REQUEST | NLM_F_DUMP,
                    string(RULE_TABLE, self.name) + string(RULE_CHAIN, chain),
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
                    total += _rule_packets(body[4:])  # after the nfgenmsg
        except OSError:
            return None

    def release(self) -> None:
        """Closing the owning socket deletes the table. (The socket is
        close-on-exec, as Python makes them: a child such as charon must not
        inherit it, or the table would live as long as the child.)"""
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _rule_packets(rule: bytes) -> int:
    packets = 0
    for elem in elements(parse(rule).get(RULE_EXPRESSIONS, b"")):
        e = parse(elem)
        if e.get(EXPR_NAME, b"").rstrip(b"\0") == b"counter":
            value = parse(e.get(EXPR_DATA, b"")).get(COUNTER_PACKETS)
            if value is not None and len(value) == 8:
                packets += struct.unpack(">Q", value)[0]
    return packets
