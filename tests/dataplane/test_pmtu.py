"""Path MTU discovery in the forwarder (dataplane/pmtu.py), I/O replaced by
lists: DF copied, what does not fit answered with ICMP, and path MTU reports
believed only when they could be about our own GRE."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

from dmvpn.dataplane.forwarding import EMSGSIZE, Forwarder, nbma_mac
from dmvpn.dataplane.pmtu import AGE, PathMtuCache, frag_needed, wants_df
from dmvpn.wire import GrePacket, IPv4Header, IPv6Header, internet_checksum
from tests.dataplane.test_forwarding import LOCAL_MAC, FakeEngine

A = IPv4Address
PEER = A("198.51.100.12")
ROUTER = A("203.0.113.1")
HOST = "192.168.1.10"


class Plane:
    """What the forwarder sends, by socket."""

    def __init__(self) -> None:
        self.plain: list[tuple[IPv4Address, bytes]] = []
        self.df: list[tuple[IPv4Address, bytes]] = []
        self.icmp: list[tuple[IPv4Address | IPv6Address, bytes]] = []
        self.df_error = 0
        self.fw = Forwarder(
            engine=FakeEngine(),
            tunnel_address=A("10.0.0.11"),
            local_mac=LOCAL_MAC,
            key=42,
            send_gre=lambda n, d: self.plain.append((n, d)),
            write_tap=lambda frame: None,
            path_mtu=PathMtuCache(),
            send_gre_df=self._send_df,
            send_icmp=lambda dst, m: self.icmp.append((dst, m)),
        )

    def _send_df(self, nbma: IPv4Address, data: bytes) -> int:
        if self.df_error:
            # As the data plane does: the local error is read back at once.
            self.fw.path_mtu_error(nbma, 1380, b"", True, None, 0.0)
            return self.df_error
        self.df.append((nbma, data))
        return 0

    def send(self, size: int, df: bool = True, now: float = 0.0) -> bytes:
        inner = IPv4Header(
            src=A(HOST), dst=A("192.168.2.10"), protocol=17, flags_fragment=0x4000 if df else 0
        ).encode(bytes(size - 20))
        self.fw.from_tap(nbma_mac(PEER) + LOCAL_MAC + b"\x08\x00" + inner, now)
        return inner


def quote(key: int = 42) -> bytes:
    """What an ICMP error about our GRE to PEER quotes, from the GRE header on."""
    return GrePacket(0x0800, bytes(8), key=key).encode()[:16]


def test_df_is_copied_and_what_fits_goes() -> None:
    p = Plane()
    p.send(1000, df=True)
    p.send(1000, df=False)
    assert [n for n, _ in p.df] == [PEER] and [n for n, _ in p.plain] == [PEER]
    assert wants_df(
        IPv6Header(src=IPv6Address("fd00::1"), dst=IPv6Address("fd00::2"), next_header=17).encode(
            bytes(1300)
        )
    )
    assert not wants_df(
        IPv6Header(src=IPv6Address("fd00::1"), dst=IPv6Address("fd00::2"), next_header=17).encode(
            bytes(1200)
        )
    )


def test_a_learned_mtu_answers_the_sender_with_frag_needed() -> None:
    p = Plane()
    p.send(100)  # PEER is a peer we sent to
    p.fw.path_mtu_error(PEER, 1300, quote(), False, ROUTER, 1.0)
    assert p.fw.stats["pmtu.learned.icmp"] == 1
    inner = p.send(1400, now=2.0)
    assert len(p.df) == 1  # the 1400-byte packet was not sent
    dst, message = p.icmp[-1]
    assert dst == A(HOST)
    kind, code, _csum, _unused, mtu = struct.unpack("!BBHHH", message[:8])
    # 1300 less the outer IPv4 header (20) and GRE with a key (8).
    assert (kind, code, mtu) == (3, 4, 1272)
    assert internet_checksum(message) == 0 and message[8:] == inner[:548]
    assert message == frag_needed(inner, 1272)
    # What fits still goes, with DF.
    p.send(1272, now=3.0)
    assert len(p.df) == 2
    # The learned value ages out (RFC 1191 6.3): the big packet is tried again.
    p.send(1400, now=1.0 + AGE)
    assert len(p.df) == 3


def test_a_local_emsgsize_is_learned_and_answered() -> None:
    p = Plane()
    p.df_error = EMSGSIZE
    p.send(1400)
    assert p.fw.stats["pmtu.learned.local"] == 1
    assert struct.unpack("!H", p.icmp[-1][1][6:8])[0] == 1380 - 28


def test_reports_that_cannot_be_about_our_gre_change_nothing() -> None:
    p = Plane()
    p.fw.path_mtu_error(PEER, 1300, quote(), False, ROUTER, 0.0)  # never sent there
    p.send(100)
    p.fw.path_mtu_error(PEER, 1300, quote(key=7), False, ROUTER, 0.0)  # another cloud
    p.fw.path_mtu_error(PEER, 1300, b"\x00", False, ROUTER, 0.0)  # no GRE header
    p.fw.path_mtu_error(PEER, 300, quote(), False, ROUTER, 0.0)  # below 576
    assert p.fw.path_mtu is not None and p.fw.path_mtu.get(PEER, 0.0) is None
    p.fw.path_mtu_error(PEER, 1300, quote(), False, ROUTER, 0.0)
    p.fw.path_mtu_error(PEER, 1450, quote(), False, ROUTER, 0.0)  # never raised
    assert p.fw.path_mtu.get(PEER, 0.0) == 1300
    stats = p.fw.stats
    assert stats["pmtu.rejected.unknown_peer"] == 1 and stats["pmtu.rejected.bad_quote"] == 2
    assert stats["pmtu.rejected.mtu"] == 2 and stats["pmtu.learned.icmp"] == 1


def test_icmp_errors_are_rate_limited() -> None:
    p = Plane()
    p.send(100)
    p.fw.path_mtu_error(PEER, 1300, quote(), False, ROUTER, 0.0)
    for _ in range(150):
        p.send(1400, now=5.5)
    assert len(p.icmp) == 100 and p.fw.stats["pmtu.icmp_rate_limited"] == 50
    p.send(1400, now=6.0)
    assert len(p.icmp) == 101
