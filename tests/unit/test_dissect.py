"""Link types the decoder reads: the same GRE/NHRP under each framing."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmvpn.decode.dissect import LinkType, dissect_frame
from dmvpn.decode.examples import conversation
from dmvpn.decode.pcapfile import read_capture, write_pcap
from dmvpn.wire import decode_ethernet

FRAME = conversation()[0][1]
ETH = decode_ethernet(FRAME)
IP = ETH.payload


def _sll(ip: bytes) -> bytes:
    return bytes.fromhex("0000000100060200c633640b0000") + b"\x08\x00" + ip


def _sll2(ip: bytes) -> bytes:
    return b"\x08\x00\x00\x00" + bytes.fromhex("00000003000100060200c633640b0000") + ip


@pytest.mark.parametrize(
    ("linktype", "frame"),
    [
        (LinkType.ETHERNET, FRAME),
        (LinkType.RAW, IP),
        (LinkType.IPV4, IP),
        (LinkType.LINUX_SLL, _sll(IP)),
        (LinkType.LINUX_SLL2, _sll2(IP)),
        (LinkType.NULL, (2).to_bytes(4, "little") + IP),
        (LinkType.ETHERNET, FRAME[:12] + b"\x81\x00\x00\x64" + FRAME[12:]),  # 802.1Q
    ],
)
def test_linktypes(tmp_path: Path, linktype: int, frame: bytes) -> None:
    pcap = tmp_path / "x.pcap"
    write_pcap(pcap, linktype, [(1.0, frame)])
    lt, frames = read_capture(pcap)
    assert lt == linktype
    (rec,) = [dissect_frame(lt, n, ts, f) for n, (ts, f) in enumerate(frames, 1)]
    assert rec is not None and rec.nhrp is not None and rec.roundtrip
    assert (rec.outer_src, rec.outer_dst, rec.gre and rec.gre.key) == (
        "198.51.100.11",
        "192.0.2.1",
        100,
    )


def test_non_gre_frames_are_skipped() -> None:
    arp = bytes(6) + bytes(6) + b"\x08\x06" + bytes(28)
    assert dissect_frame(LinkType.ETHERNET, 1, 0.0, arp) is None
    assert dissect_frame(LinkType.ETHERNET, 1, 0.0, FRAME[:20]) is None
    assert dissect_frame(999, 1, 0.0, FRAME) is None
