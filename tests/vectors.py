"""The real captures in ../shared/vectors, frame by frame."""

from __future__ import annotations

from pathlib import Path

from dmvpn.decode.dissect import GreRecord, dissect_frame
from dmvpn.decode.pcapfile import read_capture

NHRP_CAPTURES = [
    "cloutd_NHRP.pcapng",
    "tcpdump_NHRP-responder-address.pcap",
    "tcpdump_NHRP_registration.pcap",
    "tcpdump_ios_nhrp.pcap",
]


def records(path: Path) -> list[GreRecord]:
    linktype, frames = read_capture(path)
    out = []
    for n, (ts, frame) in enumerate(frames, 1):
        rec = dissect_frame(linktype, n, ts, frame)
        if rec is not None:
            out.append(rec)
    return out


def nhrp_payloads(directory: Path) -> list[bytes]:
    """The NHRP bytes of every NHRP packet in the vectors (malformed one included)."""
    out = []
    for path in sorted(directory.glob("*.pcap*")):
        out += [r.nhrp_bytes for r in records(path) if r.nhrp_bytes is not None]
    return out
