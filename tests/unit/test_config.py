"""Node config files: good ones load, bad ones name every field and reason."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest
from click.testing import CliRunner

from dmvpn.cli import main
from dmvpn.config import ConfigError, load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_examples_load_and_map_to_engine_configs() -> None:
    hub = load_config(EXAMPLES / "hub.yaml").interfaces[0]
    spoke = load_config(EXAMPLES / "spoke.yaml").interfaces[0]
    assert hub.is_hub and not spoke.is_hub
    h, s = hub.engine_config(), spoke.engine_config()
    assert h.server and h.redirect and h.authentication == b"dmvpn42"
    assert not s.server and s.shortcut and not s.registration_unique
    assert s.nhs[0].nbma == IPv4Address("192.0.2.1") and s.holding_time == 600
    assert spoke.tunnel.key == 42


BAD = """\
node: spoke9
interfaces:
  - name: this-name-is-far-too-long
    address: 10.0.0.11/24
    tunnel: {source: 198.51.100.300, key: -1}
    nhrp:
      network_id: 1
      holdtme: 60
      authentication: much-too-long
      nhs:
        - {address: 10.9.0.1, nbma: 192.0.2.1}
"""


def _problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "node.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_every_error_is_reported_with_its_path(tmp_path: Path) -> None:
    problems = _problems(tmp_path, BAD)
    text = "\n".join(problems)
    assert "interfaces.0.name: String should match pattern" in text
    assert "interfaces.0.tunnel.source:" in text
    assert "interfaces.0.tunnel.key: Input should be greater than or equal to 0" in text
    assert "interfaces.0.nhrp.holdtme: Extra inputs are not permitted" in text
    assert "interfaces.0.nhrp.authentication: String should have at most 8 characters" in text


def test_cross_field_errors(tmp_path: Path) -> None:
    text = BAD.replace("this-name-is-far-too-long", "dmvpn0").replace(".300", ".3")
    text = text.replace("key: -1", "key: 1").replace("holdtme", "holdtime")
    text = text.replace("much-too-long", "ok")
    (problem,) = _problems(tmp_path, text)
    assert problem == "interfaces.0: nhrp.nhs.0.address 10.9.0.1 is outside 10.0.0.0/24"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node: [unclosed", "line 1, column 16: not valid YAML"),
        ("- a list", "(top level): expected a mapping of settings"),
        ("node: x\n", "interfaces: Field required"),
    ],
)
def test_unusable_files(tmp_path: Path, text: str, expected: str) -> None:
    problems = _problems(tmp_path, text)
    assert any(expected in p for p in problems), problems


def test_dmvpn_check(tmp_path: Path) -> None:
    ok = CliRunner().invoke(main, ["check", str(EXAMPLES / "spoke.yaml")])
    assert ok.exit_code == 0 and "ok: node spoke1, dmvpn0 10.0.0.11/24" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    res = CliRunner().invoke(main, ["check", str(bad)])
    assert res.exit_code == 1
    assert f"{bad}: interfaces.0.nhrp.holdtme: Extra inputs are not permitted" in res.output
    missing = CliRunner().invoke(main, ["check", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 1 and "cannot read: No such file or directory" in missing.output
