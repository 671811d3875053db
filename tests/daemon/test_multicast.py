"""The `map multicast` set kept binding by binding (daemon/multicast.py):
O(1) per binding, what a replication iterates. Sans-IO; milliseconds."""

from __future__ import annotations

from ipaddress import IPv4Address

from dmvpn.config import parse_config
from dmvpn.daemon.interface import multicast_items
from dmvpn.daemon.multicast import MulticastTargets

A = IPv4Address
HUB, HUB2 = A("192.0.2.1"), A("192.0.2.2")


def test_dynamic_peers_join_and_leave_with_their_bindings() -> None:
    m = MulticastTargets(["dynamic"])
    m.bind(A("10.0.0.2"), A("198.18.0.1"))
    m.bind(A("10.0.0.3"), A("198.18.0.2"))
    assert list(m) == [A("198.18.0.1"), A("198.18.0.2")] and len(m) == 2
    m.unbind(A("10.0.0.2"))
    assert list(m) == [A("198.18.0.2")] and len(m) == 1
    m.unbind(A("10.0.0.2"))  # twice: nothing more
    m.unbind(A("10.9.9.9"))  # never dynamic (a static or cached binding)
    assert list(m) == [A("198.18.0.2")]


def test_a_peer_stays_while_any_of_its_dynamic_bindings_does() -> None:
    # A dual-stack spoke: an IPv4 and an IPv6 address from one NBMA address.
    m = MulticastTargets(["dynamic"])
    m.bind(A("10.0.0.2"), A("198.18.0.1"))
    m.bind(A("10.0.0.22"), A("198.18.0.1"))
    assert list(m) == [A("198.18.0.1")]
    m.unbind(A("10.0.0.2"))
    assert list(m) == [A("198.18.0.1")]
    m.unbind(A("10.0.0.22"))
    assert list(m) == [] and len(m) == 0


def test_a_binding_that_moves_takes_its_peer_along() -> None:
    m = MulticastTargets(["dynamic"])
    m.bind(A("10.0.0.2"), A("198.18.0.1"))
    m.bind(A("10.0.0.2"), A("198.18.0.9"))  # the spoke came back from elsewhere
    assert list(m) == [A("198.18.0.9")]


def test_configured_items_in_order_no_address_twice() -> None:
    m = MulticastTargets([(HUB, HUB2), "dynamic", (A("203.0.113.5"),)])
    m.bind(A("10.0.0.2"), HUB2)  # also configured: once, where configured
    m.bind(A("10.0.0.3"), A("198.18.0.1"))
    assert list(m) == [HUB, HUB2, A("198.18.0.1"), A("203.0.113.5")]
    assert len(m) == 4 and HUB2 in m and A("198.18.0.1") in m
    m.unbind(A("10.0.0.2"))
    assert list(m) == [HUB, HUB2, A("198.18.0.1"), A("203.0.113.5")] and len(m) == 4


def test_without_dynamic_bindings_are_counted_but_not_replicated_to() -> None:
    m = MulticastTargets([(HUB,)])
    m.bind(A("10.0.0.2"), A("198.18.0.1"))
    assert list(m) == [HUB] and len(m) == 1 and m.dynamic_peers == 1
    m.configure(["dynamic", (HUB,)])  # SIGHUP adds `dynamic`: the peers are there
    assert list(m) == [A("198.18.0.1"), HUB] and len(m) == 2


def test_items_from_the_config() -> None:
    cfg = parse_config(
        {
            "node": "spoke1",
            "interfaces": [
                {
                    "name": "dmvpn0",
                    "address": "10.0.0.11/24",
                    "tunnel": {"source": "198.51.100.11"},
                    "nhrp": {
                        "network_id": 1,
                        "nhs": [
                            {"address": "10.0.0.2", "nbma": str(HUB2), "priority": 2},
                            {"address": "10.0.0.1", "nbma": str(HUB), "priority": 1},
                        ],
                        "map_multicast": ["nhs", "dynamic", "203.0.113.5"],
                    },
                }
            ],
        }
    ).interfaces[0]
    assert multicast_items(cfg) == [(HUB, HUB2), "dynamic", (A("203.0.113.5"),)]
