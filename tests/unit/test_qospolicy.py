"""Per-tunnel QoS config: what is refused at load (with its path and why),
and the tc commands one spoke's shaper is made of. Pure; milliseconds."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import pytest

from dmvpn.config import ConfigError, parse_config
from dmvpn.qospolicy import (
    QosPolicy,
    Shaping,
    add_commands,
    parse_rate,
    rate_text,
    remove_commands,
)


def _node(qos: Any, *, nhs: bool = False, mtu: int = 1400, group: str | None = None) -> Any:
    nhrp: dict[str, Any] = {"network_id": 1}
    if nhs:
        nhrp["nhs"] = [{"address": "10.0.0.1", "nbma": "192.0.2.1"}]
    if group is not None:
        nhrp["group"] = group
    itf: dict[str, Any] = {
        "name": "dmvpn0",
        "address": "10.0.0.11/24" if nhs else "10.0.0.1/24",
        "mtu": mtu,
        "tunnel": {"source": "192.0.2.11" if nhs else "192.0.2.1", "key": 7},
        "nhrp": nhrp,
    }
    if qos is not None:
        itf["qos"] = qos
    return {"node": "n", "interfaces": [itf]}


def _problems(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    return exc.value.problems


def test_a_hub_policy_and_a_spoke_group_load() -> None:
    qos = {
        "groups": {
            "gold": {
                "rate": "10mbit",
                "ceil": "20mbit",
                "burst": "32kb",
                "classes": [{"name": "voice", "dscp": ["ef", 34], "rate": "2mbit"}],
            },
            "bronze": {"rate": 2_000_000},
        }
    }
    hub = parse_config(_node(qos)).interfaces[0]
    assert hub.qos is not None
    gold = hub.qos.groups["gold"]
    assert (gold.rate, gold.ceiling, gold.burst) == (10_000_000, 20_000_000, 32 * 1024)
    assert gold.classes[0].dscp == [46, 34]
    spoke = parse_config(_node(None, nhs=True, group="gold")).interfaces[0]
    assert spoke.engine_config().group == "gold"


@pytest.mark.parametrize(
    ("qos", "where", "why"),
    [
        ({"groups": {"g": {"rate": "fast"}}}, "qos.groups.g.rate", "not a rate"),
        ({"groups": {"g": {"rate": "1bit"}}}, "qos.groups.g.rate", "outside"),
        ({"groups": {"g": {"rate": "10mbit", "ceil": "5mbit"}}}, "qos.groups.g", "below rate"),
        (
            {
                "groups": {
                    "g": {
                        "rate": "10mbit",
                        "classes": [{"name": "v", "dscp": [64], "rate": 1000000}],
                    }
                }
            },
            "qos.groups.g.classes.0.dscp",
            "outside 0..63",
        ),
        (
            {
                "groups": {
                    "g": {
                        "rate": "10mbit",
                        "classes": [
                            {"name": "a", "dscp": ["ef"], "rate": "6mbit"},
                            {"name": "b", "dscp": ["af41"], "rate": "4mbit"},
                        ],
                    }
                }
            },
            "qos.groups.g",
            "add up to 10mbit",
        ),
        (
            {
                "groups": {
                    "g": {
                        "rate": "10mbit",
                        "classes": [
                            {"name": "a", "dscp": ["ef"], "rate": "1mbit"},
                            {"name": "b", "dscp": [46], "rate": "1mbit"},
                        ],
                    }
                }
            },
            "qos.groups.g",
            "already in class 'a'",
        ),
        ({"groups": {"has space": {"rate": "1mbit"}}}, "qos.groups", "without spaces"),
        ({"groups": {}}, "qos.groups", "at least 1"),
    ],
)
def test_policies_that_cannot_be_applied_are_refused_with_path(
    qos: Any, where: str, why: str
) -> None:
    problems = _problems(_node(qos))
    assert any(p.startswith(f"interfaces.0.{where}") and why in p for p in problems), problems


def test_burst_below_one_packet_and_qos_on_a_spoke_are_refused() -> None:
    (p,) = _problems(_node({"groups": {"g": {"rate": "1mbit", "burst": "1000b"}}}))
    assert "qos.groups.g.burst" in p and "less than one full packet" in p
    (p,) = _problems(_node({"groups": {"g": {"rate": "1mbit"}}}, nhs=True))
    assert "this is a spoke" in p
    (p,) = _problems(_node(None, nhs=True, group="a b"))
    assert p.startswith("interfaces.0.nhrp.group") and "without spaces" in p


def test_rates() -> None:
    assert parse_rate("10mbit") == 10_000_000
    assert parse_rate("1.5gbit") == 1_500_000_000
    assert parse_rate("125kbps") == 1_000_000  # tc: bps is bytes per second
    assert rate_text(10_000_000) == "10mbit" and rate_text(1_500_000) == "1500kbit"


def test_tc_commands_of_one_spoke() -> None:
    policy = QosPolicy.model_validate(
        {"rate": "10mbit", "classes": [{"name": "voice", "dscp": ["ef"], "rate": "2mbit"}]}
    )
    s = Shaping("eth0", 2, IPv4Address("192.0.2.11"), "gold", policy, gre_key=True)
    assert add_commands(s) == [
        "class replace dev eth0 parent 1: classid 1:20 htb rate 10000000bit ceil 10000000bit",
        "class replace dev eth0 parent 1:20 classid 1:21 htb rate 2000000bit ceil 10000000bit",
        # Inner DSCP of GRE with a key: 20 (IPv4) + 8 (GRE) + 1.
        "filter add dev eth0 parent 1:20 protocol ip prio 1 u32 match ip protocol 47 0xff "
        "match u8 0xb8 0xfc at 29 flowid 1:21",
        "filter add dev eth0 parent 1:20 protocol ip prio 2 u32 match ip dsfield 0xb8 0xfc "
        "flowid 1:21",
        "class replace dev eth0 parent 1:20 classid 1:2f htb rate 8000000bit ceil 10000000bit",
        "filter add dev eth0 parent 1:20 protocol all prio 3 u32 match u32 0 0 flowid 1:2f",
        "filter add dev eth0 parent 1: protocol ip prio 2 u32 match ip dst 192.0.2.11/32 "
        "flowid 1:20",
    ]
    assert remove_commands(s) == [
        "filter del dev eth0 parent 1: protocol ip prio 2",
        "filter del dev eth0 parent 1:20",
        "class del dev eth0 classid 1:21",
        "class del dev eth0 classid 1:2f",
        "class del dev eth0 classid 1:20",
    ]
