"""The hub's QoS shaper state: which tc batches it runs as registrations come,
move, change group and go. tc itself is replaced by a recorder here (the
real tc runs in tests/e2e/test_qos.py); milliseconds, no root."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import Any

from dmvpn.daemon.qos import QosShaper, TcError
from dmvpn.qospolicy import Qos

A = IPv4Address
QOS = Qos.model_validate({"groups": {"gold": {"rate": "10mbit"}, "bronze": {"rate": "1mbit"}}})


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.fail = False
        self.logs: list[tuple[str, dict[str, Any]]] = []

    def run(self, lines: list[str]) -> None:
        self.batches.append(lines)
        if self.fail:
            raise TcError("RTNETLINK answers: Operation not supported")

    def log(self, kind: str, message: str, **details: Any) -> None:
        self.logs.append((kind, details))


def _shaper(rec: Recorder, device: str | None = "nbma0") -> QosShaper:
    return QosShaper(
        QOS,
        gre_key=True,
        log=rec.log,
        interface="dmvpn0",
        device_of=lambda nbma: device,
        run=rec.run,
        stats=lambda device: {},
    )


def test_register_move_regroup_and_leave() -> None:
    rec = Recorder()
    q = _shaper(rec)
    q.peer_group(A("10.0.0.11"), A("172.30.0.11"), "gold")
    (first,) = rec.batches
    assert first[0] == "qdisc replace dev nbma0 root handle 1: htb default 0"
    assert first[-1].endswith("match ip dst 172.30.0.11/32 flowid 1:10")
    # A second spoke: the next slot, no second root.
    q.peer_group(A("10.0.0.12"), A("172.30.0.12"), "bronze")
    assert "root" not in rec.batches[-1][0] and "flowid 1:20" in rec.batches[-1][-1]
    # spoke 11 moves to another NBMA address: old shaper out, new one in (slot 1 again).
    q.peer_group(A("10.0.0.11"), A("172.30.0.99"), "gold")
    removed, added = rec.batches[-2:]
    assert removed[0] == "filter del dev nbma0 parent 1: protocol ip prio 1"
    assert added[-1].endswith("match ip dst 172.30.0.99/32 flowid 1:10")
    # It changes group: the shaper is rebuilt with the new rate.
    q.peer_group(A("10.0.0.11"), A("172.30.0.99"), "bronze")
    assert "rate 1000000bit" in rec.batches[-1][0]
    # It leaves.
    q.unbind(A("10.0.0.11"), A("172.30.0.99"))
    assert rec.batches[-1][-1] == "class del dev nbma0 classid 1:10"
    view = q.view()
    assert [p["nbma"] for p in view["peers"]] == ["172.30.0.12"]
    q.close()
    assert rec.batches[-1] == ["qdisc del dev nbma0 root handle 1:"]


def test_dual_stack_registrations_share_one_shaper() -> None:
    rec = Recorder()
    q = _shaper(rec)
    q.peer_group(A("10.0.0.11"), A("172.30.0.11"), "gold")
    q.peer_group(IPv6Address("fd00::11"), A("172.30.0.11"), "gold")
    assert len(rec.batches) == 1  # nothing changed for the second
    q.unbind(A("10.0.0.11"), A("172.30.0.11"))
    assert len(rec.batches) == 1  # the IPv6 registration still names gold
    q.unbind(IPv6Address("fd00::11"), A("172.30.0.11"))
    assert len(rec.batches) == 2 and q.view()["peers"] == []


def test_unknown_group_and_failures_leave_the_spoke_unshaped() -> None:
    rec = Recorder()
    q = _shaper(rec)
    q.peer_group(A("10.0.0.11"), A("172.30.0.11"), "platinum")
    assert rec.batches == []
    assert rec.logs[-1] == (
        "qos-unknown-group",
        {"interface": "dmvpn0", "nbma": "172.30.0.11", "group": "platinum"},
    )
    (peer,) = q.view()["peers"]
    assert not peer["shaped"] and peer["why_unshaped"] == "no policy for group 'platinum'"
    rec.fail = True
    q.peer_group(A("10.0.0.12"), A("172.30.0.12"), "gold")
    assert rec.logs[-1][0] == "qos-error"
    row = next(p for p in q.view()["peers"] if p["nbma"] == "172.30.0.12")
    assert not row["shaped"] and "Operation not supported" in row["why_unshaped"]
    no_route = Recorder()
    q = _shaper(no_route, device=None)
    q.peer_group(A("10.0.0.11"), A("172.30.0.11"), "gold")
    assert no_route.batches == [] and q.view()["peers"][0]["why_unshaped"].startswith("no route")
