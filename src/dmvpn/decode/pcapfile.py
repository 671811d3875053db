"""Reading and writing capture files (pcap and pcapng, through dpkt)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import dpkt

PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


class CaptureError(Exception):
    """A file that is not a capture we can read."""


def read_capture(path: Path) -> tuple[int, Iterator[tuple[float, bytes]]]:
    """(link type, iterator of (timestamp, frame bytes)) of a pcap/pcapng file.

    pcapng files are read with the link type of their first interface (dpkt's
    limitation; captures made by tcpdump/tshark on one interface have one).
    """
    fh: BinaryIO = path.open("rb")
    magic = fh.read(4)
    fh.seek(0)
    try:
        reader = dpkt.pcapng.Reader(fh) if magic == PCAPNG_MAGIC else dpkt.pcap.Reader(fh)
    except (ValueError, dpkt.dpkt.Error) as exc:
        fh.close()
        raise CaptureError(f"{path}: not a pcap or pcapng file ({exc})") from None
    linktype = int(reader.datalink())

    def frames() -> Iterator[tuple[float, bytes]]:
        try:
            for ts, buf in reader:
                yield float(ts), bytes(buf)
        except (ValueError, dpkt.dpkt.Error) as exc:
            raise CaptureError(f"{path}: truncated or corrupt capture ({exc})") from None
        finally:
            fh.close()

    return linktype, frames()


def write_pcap(path: Path, linktype: int, frames: Iterable[tuple[float, bytes]]) -> None:
    """Write frames to a classic pcap file."""
    with path.open("wb") as fh:
        writer = dpkt.pcap.Writer(fh, snaplen=65535, linktype=linktype)
        for ts, buf in frames:
            writer.writepkt(buf, ts=ts)
