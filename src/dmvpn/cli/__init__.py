"""The `dmvpn` command.

The heavy subcommands (lab, decode, sim) are imported when used: `dmvpn run`
then loads the daemon without them, a fifth less CPU at start, which matters
in guests under emulation (dmvpn.lab.vmnode).
"""

from __future__ import annotations

import importlib

import click

from dmvpn import __version__

from .check import check_cmd
from .run import run_cmd
from .show import clear_group, events_cmd, show_group

# name -> (module under dmvpn.cli, attribute)
_LAZY = {
    "decode": ("decode", "decode_cmd"),
    "example-capture": ("decode", "example_capture_cmd"),
    "sim": ("sim", "sim_cmd"),
    "lab": ("lab", "lab_group"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *_LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in _LAZY:
            module, attr = _LAZY[cmd_name]
            cmd = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
            assert isinstance(cmd, click.Command) and cmd.name == cmd_name
            self.add_command(cmd)
        return self.commands.get(cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dmvpn")
def main() -> None:
    """dmvpn: Dynamic Multipoint VPN (mGRE + NHRP) for Linux."""


main.add_command(check_cmd)
main.add_command(run_cmd)
main.add_command(show_group)
main.add_command(clear_group)
main.add_command(events_cmd)
