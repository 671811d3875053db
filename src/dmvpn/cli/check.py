"""`dmvpn check FILE`: validate a node config without touching anything."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dmvpn.config import ConfigError, Interface, load_config

# What an interface without `dataplane:` gets (config.Interface).
DEFAULT_DATAPLANE = Interface.model_fields["dataplane"].default


def report(path: Path, exc: ConfigError) -> None:
    """Every problem of a refused file, one line each, on stderr."""
    for problem in exc.problems:
        click.echo(f"{path}: {problem}", err=True)


@click.command("check")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
def check_cmd(config: Path) -> None:
    """Print every error in CONFIG with its path; exit 1 if there is any."""
    try:
        node = load_config(config)
    except ConfigError as exc:
        report(config, exc)
        sys.exit(1)
    for itf in node.interfaces:
        nhs4 = [n for n in itf.nhrp.nhs if n.address.version == 4]
        role = "hub (NHS)" if itf.is_hub else f"spoke of {len(nhs4)} NHS"
        dual = ""
        if itf.ipv6_address is not None:
            # The IPv6 engine registers with the `ipv6 nhrp nhs` entries only.
            nhs6 = len(itf.nhrp.nhs) - len(nhs4)
            dual = f", IPv6 {itf.ipv6_address}" + ("" if itf.is_hub else f" ({nhs6} IPv6 NHS)")
        click.echo(
            f"{config}: ok: node {node.node}, {itf.name} {itf.address} "
            f"network-id {itf.nhrp.network_id}, {role}{dual}"
            # The default data plane goes unsaid; any other choice is news.
            + (f", dataplane {itf.dataplane}" if itf.dataplane != DEFAULT_DATAPLANE else "")
            + (f", tcp adjust-mss {itf.tcp_adjust_mss}" if itf.tcp_adjust_mss else "")
            + (f", GRE over IPv6 from {itf.tunnel.source}" if itf.underlay_ipv6 else "")
        )
    if node.ipsec is not None:
        sec = node.ipsec
        auth = "certificates" if sec.uses_certificates else "pre-shared key"
        # ipsec.esp: auto (the default) is decided by the daemon on its host.
        mode = (
            f"{sec.mode} mode"
            if sec.mode
            else "transport mode with the kernel's ESP where the host has it, else tunnel mode"
        )
        click.echo(
            f"{config}: ok: ipsec {auth}, charon {sec.charon}, {mode}, "
            f"IKE {' '.join(sec.ike_proposals)}, ESP {' '.join(sec.esp_proposals)}, "
            f"identity binding {'on' if sec.binding_on else 'off'}"
        )
