"""`dmvpn check`'s summary of a dual-stack interface: what `show` will list
for it (the IPv6 tunnel address, and the NHSes the IPv6 engine registers with)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from dmvpn.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _check(name: str) -> str:
    res = CliRunner().invoke(main, ["check", str(EXAMPLES / name)])
    assert res.exit_code == 0, res.output
    return res.output


def test_check_names_the_ipv6_address_and_nhses() -> None:
    spoke = _check("spoke-dual-stack.yaml")
    assert (
        "dmvpn0 10.0.0.11/24 network-id 1, spoke of 1 NHS, IPv6 fd00::11/64 (1 IPv6 NHS)" in spoke
    )
    hub = _check("hub-dual-stack.yaml")
    assert "dmvpn0 10.0.0.1/24 network-id 1, hub (NHS), IPv6 fd00::1/64\n" in hub
    # An IPv4-only interface reads as before.
    assert _check("spoke.yaml").endswith("network-id 1, spoke of 1 NHS\n")


def test_check_says_gre_over_ipv6() -> None:
    out = _check("spoke-ipv6-underlay.yaml")
    assert out.endswith("spoke of 1 NHS, GRE over IPv6 from 2001:db8:30::11\n"), out
