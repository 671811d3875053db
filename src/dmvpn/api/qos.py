"""Per-tunnel QoS in the management API: `GET /v1/nhrp/group` (`dmvpn show
nhrp group`) and its metrics. Kept apart from views.py: it reads the
daemon's QoS shaper (daemon/qos.py) as well as the engines."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from dmvpn.nhrp import EntryType
from dmvpn.wire import address_text


def _engines(rt: Any) -> list[Any]:
    engine6 = getattr(rt, "engine6", None)
    return [rt.engine] if engine6 is None else [rt.engine, engine6]


def group_interface(rt: Any) -> dict[str, Any]:
    """One interface: the groups its registered spokes named (from the
    engines' cache), and, on a hub with `qos:`, the policies and each
    spoke's shaper with its HTB counters."""
    registered = [
        {
            "protocol": address_text(e.protocol),
            "nbma": address_text(e.nbma) if e.nbma is not None else None,
            "group": e.group,
        }
        for engine in _engines(rt)
        for e in engine.entries()
        if e.type == EntryType.DYNAMIC
    ]
    shaper = getattr(rt, "qos", None)
    own = rt.engine.config.group
    return {
        "interface": rt.cfg.name,
        "group": own,  # what this node sends in its registrations (spoke)
        "registered": registered,
        "qos": shaper.view() if shaper is not None else None,
    }


def group_view(node: str, interfaces: Iterable[Any]) -> dict[str, Any]:
    return {"node": node, "interfaces": [group_interface(rt) for rt in interfaces]}


def qos_metrics(interfaces: Iterable[Any]) -> Iterator[Metric]:
    shaped = GaugeMetricFamily(
        "dmvpn_qos_peer_shaped",
        "1 when what the hub sends to this NBMA peer is shaped by its NHRP group's policy",
        labels=["interface", "peer", "group"],
    )
    rate = GaugeMetricFamily(
        "dmvpn_qos_peer_rate_bits",
        "The shaping rate (bit/s) of this NBMA peer's HTB class",
        labels=["interface", "peer", "group"],
    )
    sent = CounterMetricFamily(
        "dmvpn_qos_peer_bytes",
        "Bytes sent through this NBMA peer's shaper (HTB class)",
        labels=["interface", "peer", "group"],
    )
    drops = CounterMetricFamily(
        "dmvpn_qos_peer_drops",
        "Packets this NBMA peer's shaper dropped",
        labels=["interface", "peer", "group"],
    )
    for rt in interfaces:
        shaper = getattr(rt, "qos", None)
        if shaper is None:
            continue
        for p in shaper.view()["peers"]:
            labels = [rt.cfg.name, p["nbma"], p["group"] or ""]
            shaped.add_metric(labels, 1 if p["shaped"] else 0)
            if p["shaped"]:
                for s in shaper.peers.values():
                    if s.shaping is not None and str(s.nbma) == p["nbma"]:
                        rate.add_metric(labels, s.shaping.policy.rate)
                counters = p.get("counters", {})
                sent.add_metric(labels, counters.get("bytes", 0))
                drops.add_metric(labels, counters.get("drops", 0))
    yield from (shaped, rate, sent, drops)


def add_shaping(data: dict[str, Any], interfaces: Iterable[Any]) -> None:
    """`show dmvpn`: each peer of a hub with per-tunnel QoS gets "qos" (its
    group and shaper), as Cisco's `show dmvpn detail` lists the policy."""
    shapers = {rt.cfg.name: getattr(rt, "qos", None) for rt in interfaces}
    for itf in data["interfaces"]:
        shaper = shapers.get(itf["interface"])
        if shaper is None:
            continue
        rows = {p["nbma"]: p for p in shaper.view()["peers"]}
        for peer in itf["peers"]:
            row = rows.get(peer["nbma"])
            peer["qos"] = (
                None
                if row is None
                else {
                    "group": row["group"],
                    "shaped": row["shaped"],
                    "rate": row.get("rate"),
                    "ceil": row.get("ceil"),
                    "classid": row.get("classid"),
                    "why_unshaped": row["why_unshaped"],
                }
            )
