"""`dmvpn decode` and `dmvpn example-capture`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from dmvpn.decode.dissect import LinkType, dissect_frame
from dmvpn.decode.examples import conversation
from dmvpn.decode.pcapfile import CaptureError, read_capture, write_pcap
from dmvpn.decode.render import record_json, record_text


class Unreadable(click.ClickException):
    """A capture that cannot be read: exit status 2, like a usage error."""

    exit_code = 2


@click.command("decode")
@click.argument("capture", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per packet, per line.")
@click.option("--nhrp-only", is_flag=True, help="Skip GRE packets that carry no NHRP.")
def decode_cmd(capture: Path, as_json: bool, nhrp_only: bool) -> None:
    """Print every GRE/NHRP packet in a pcap or pcapng CAPTURE.

    Exits 1 if any NHRP packet failed to decode or to re-encode to the same
    bytes, 2 if the file cannot be read.
    """
    try:
        linktype, frames = read_capture(capture)
    except CaptureError as exc:
        raise Unreadable(str(exc)) from None
    if linktype not in LinkType.__members__.values():
        raise Unreadable(f"{capture}: link type {linktype} is not supported")
    bad = 0
    try:
        for number, (ts, frame) in enumerate(frames, 1):
            rec = dissect_frame(linktype, number, ts, frame)
            if rec is None or (nhrp_only and rec.nhrp_bytes is None):
                continue
            if rec.error is not None or rec.roundtrip is False:
                bad += 1
            if as_json:
                click.echo(json.dumps(record_json(rec), separators=(",", ":")))
            else:
                click.echo(record_text(rec) + "\n")
    except CaptureError as exc:
        raise Unreadable(str(exc)) from None
    if bad:
        click.echo(f"{bad} packet(s) failed to decode or to round-trip", err=True)
        sys.exit(1)


@click.command("example-capture")
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--describe", is_flag=True, help="Also print what each frame shows.")
def example_capture_cmd(output: Path, describe: bool) -> None:
    """Write a pcap of a phase 3 DMVPN exchange built by dmvpn's own encoder."""
    steps = conversation()
    write_pcap(output, LinkType.ETHERNET, ((1.0 + i * 0.25, f) for i, (_, f) in enumerate(steps)))
    if describe:
        for i, (desc, _) in enumerate(steps, 1):
            click.echo(f"#{i:<3} {desc}")
    click.echo(f"wrote {len(steps)} frames to {output}")
