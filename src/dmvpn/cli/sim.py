"""`dmvpn sim`: a standard DMVPN scenario in the virtual-time simulator."""

from __future__ import annotations

import json
import time

import click

from dmvpn.nhrp.sim import run_scenario


@click.command("sim")
@click.option("--hubs", type=click.IntRange(1, 16), default=1, show_default=True)
@click.option("--spokes", type=click.IntRange(1, 200_000), default=10, show_default=True)
@click.option("--phase", type=click.IntRange(1, 3), default=3, show_default=True)
@click.option(
    "--loss",
    type=click.FloatRange(0.0, 0.9),
    default=0.0,
    show_default=True,
    help="Probability that the underlay drops any one NHRP packet.",
)
@click.option(
    "--kill-hub-at",
    type=click.FloatRange(min=0.0),
    default=None,
    help="Virtual second at which hub1 dies.",
)
@click.option(
    "--restart-hub-after",
    type=click.FloatRange(min=0.0),
    default=None,
    help="Seconds after its death that hub1 comes back (empty cache).",
)
@click.option(
    "--traffic-seconds",
    type=click.IntRange(1, 3600),
    default=10,
    show_default=True,
    help="How long spoke pairs exchange one packet a second each way.",
)
@click.option("--holding-time", type=click.IntRange(3, 65535), default=7200, show_default=True)
@click.option(
    "--hub-max-send",
    type=click.IntRange(1),
    default=100_000,
    show_default=True,
    help="The hubs' `max-send`: NHRP packets per 10 s.",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def sim_cmd(
    hubs: int,
    spokes: int,
    phase: int,
    loss: float,
    kill_hub_at: float | None,
    restart_hub_after: float | None,
    traffic_seconds: int,
    holding_time: int,
    hub_max_send: int,
    seed: int,
    as_json: bool,
) -> None:
    """Every spoke registers; spokes 1-2, 3-4, ... send each other a packet
    a second; optionally hub1 fails. Deterministic for a given seed."""
    if restart_hub_after is not None and kill_hub_at is None:
        raise click.UsageError("--restart-hub-after needs --kill-hub-at")
    # The simulator reads no clock; the wall time is measured here.
    wall = time.perf_counter()
    result = run_scenario(
        hubs=hubs,
        spokes=spokes,
        phase=phase,
        loss=loss,
        seed=seed,
        kill_hub_at=kill_hub_at,
        restart_hub_after=restart_hub_after,
        traffic_seconds=traffic_seconds,
        holding_time=holding_time,
        hub_max_send=hub_max_send,
    )
    result["wall_seconds"] = round(time.perf_counter() - wall, 3)
    if as_json:
        click.echo(json.dumps(result))
        return
    width = max(len(k) for k in result)
    for key, value in result.items():
        click.echo(f"{key:<{width}}  {value}")
