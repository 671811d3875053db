"""What SIGHUP may apply live, and what it refuses (and why)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dmvpn.config import parse_config
from dmvpn.daemon.reload import plan_reload

SPOKE = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "examples" / "spoke.yaml").read_text()
)


def _with(**nhrp: Any) -> Any:
    data = yaml.safe_load(yaml.safe_dump(SPOKE))
    data["interfaces"][0]["nhrp"].update(nhrp)
    return parse_config(data)


def test_live_knobs_and_routes_apply() -> None:
    old = parse_config(SPOKE)
    new_data = yaml.safe_load(yaml.safe_dump(SPOKE))
    new_data["interfaces"][0]["nhrp"].update(holdtime=300, shortcut=False, authentication="new")
    new_data["routes"] = [{"prefix": "172.16.0.0/12", "via": "10.0.0.1"}]
    plan = plan_reload(old, parse_config(new_data))
    assert plan.ok and set(plan.retune) == {"dmvpn0"}
    assert [str(r.prefix) for r in plan.add_routes] == ["172.16.0.0/12"]
    assert [str(r.prefix) for r in plan.remove_routes] == ["192.168.0.0/16"]
    assert plan_reload(old, parse_config(SPOKE)).empty


def test_structural_changes_are_refused_with_the_reason() -> None:
    old = parse_config(SPOKE)
    plan = plan_reload(old, _with(nhs=[{"address": "10.0.0.2", "nbma": "192.0.2.2"}]))
    (why,) = plan.refused
    assert "nhrp.nhs changed" in why and "dropping its tunnels" in why
    data = yaml.safe_load(yaml.safe_dump(SPOKE))
    data["interfaces"][0]["tunnel"]["key"] = 7
    assert "tunnel changed" in plan_reload(old, parse_config(data)).refused[0]
    data = yaml.safe_load(yaml.safe_dump(SPOKE))
    data["interfaces"][0]["dataplane"] = "ebpf"
    assert "dataplane changed" in plan_reload(old, parse_config(data)).refused[0]


def test_vrrp_and_tracked_next_hops_need_a_restart() -> None:
    old = parse_config(SPOKE)
    data = yaml.safe_load(yaml.safe_dump(SPOKE))
    data["vrrp"] = [{"interface": "lan0", "vrid": 1, "address": "192.168.1.1"}]
    assert "vrrp changed" in plan_reload(old, parse_config(data)).refused[0]
    data = yaml.safe_load(yaml.safe_dump(SPOKE))
    data["routes"].append({"prefix": "172.16.0.0/12", "via": ["10.0.0.9"], "track": {}})
    assert "track changed" in plan_reload(old, parse_config(data)).refused[0]
