from __future__ import annotations

import json

from click.testing import CliRunner

from dmvpn.cli import main


def test_sim_json_has_the_documented_fields() -> None:
    res = CliRunner().invoke(
        main,
        [
            "sim",
            "--spokes",
            "50",
            "--phase",
            "3",
            "--json",
            "--kill-hub-at",
            "5",
            "--restart-hub-after",
            "5",
            "--holding-time",
            "60",
        ],
    )
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    for key in (
        "registered_spokes",
        "seconds_until_all_registered",
        "shortcuts_formed",
        "packets_via_hub",
        "packets_direct",
        "nhrp_messages_sent",
        "wall_seconds",
    ):
        assert key in r
    assert r["registered_spokes"] == 50 and r["shortcuts_formed"] == 50
    failure = r["hub_failure"]
    assert failure["spokes_back_on_hub1"] == 50
    # Registered at t=0 with holding time 60: they refresh at t=20, 10 s
    # after the hub came back at t=10.
    assert 9 <= failure["seconds_until_all_back"] <= 11


def test_sim_phase1_and_bad_usage() -> None:
    res = CliRunner().invoke(main, ["sim", "--spokes", "4", "--phase", "1", "--json"])
    r = json.loads(res.output)
    assert r["packets_direct"] == 0 and r["packets_via_hub"] == 40
    res = CliRunner().invoke(main, ["sim", "--phase", "4"])
    assert res.exit_code == 2 and "--phase" in res.output
