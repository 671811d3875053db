"""The `dmvpn` command."""

from __future__ import annotations

import click

from dmvpn import __version__

from .check import check_cmd
from .decode import decode_cmd, example_capture_cmd
from .lab import lab_group
from .run import run_cmd
from .show import clear_group, events_cmd, show_group
from .sim import sim_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dmvpn")
def main() -> None:
    """dmvpn: Dynamic Multipoint VPN (mGRE + NHRP) for Linux."""


main.add_command(decode_cmd)
main.add_command(example_capture_cmd)
main.add_command(sim_cmd)
main.add_command(check_cmd)
main.add_command(run_cmd)
main.add_command(lab_group)
main.add_command(show_group)
main.add_command(clear_group)
main.add_command(events_cmd)
