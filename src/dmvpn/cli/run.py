"""`dmvpn run -c node.yaml`: the node daemon."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from dmvpn.config import ConfigError, load_config

from .check import report


@click.command("run")
@click.option(
    "-c",
    "--config",
    "path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The node's YAML file.",
)
def run_cmd(path: Path) -> None:
    """Run a DMVPN node until SIGTERM (which deregisters and cleans up)."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        report(path, exc)
        click.echo(f"{path}: refused; nothing was changed", err=True)
        sys.exit(1)
    from dmvpn.daemon.node import Node  # needs pyroute2 and root; only here

    asyncio.run(Node(config, path=path).run())
