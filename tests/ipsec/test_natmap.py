"""NAT traversal's view of charon's SAs (pure): which GRE to translate, and
which selectors to refuse."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

from dmvpn.ipsec.natmap import chains, mappings, selector_problem

A = IPv4Address


def _sa(remote: str, ts: list[str], *, nat: bool, state: str = "ESTABLISHED") -> dict[str, Any]:
    child = {"name": "gre", "state": "INSTALLED", "remote-ts": ts}
    return {
        "state": state,
        "remote-host": remote,
        "nat-remote": "yes" if nat else "no",
        "child-sas": {"gre-1": child},
    }


def test_a_natted_peer_is_translated_from_its_inside_address() -> None:
    sas = [
        _sa("172.30.0.201", ["172.31.1.11/32[gre]"], nat=True),
        _sa("172.30.0.12", ["172.30.0.12/32[gre]"], nat=False),  # public: nothing to do
        _sa("172.30.0.202", ["172.31.2.13/32[gre]"], nat=True, state="CONNECTING"),
    ]
    assert mappings(sas) == {A("172.31.1.11"): A("172.30.0.201")}
    assert all(selector_problem(sa) is None for sa in sas)


def test_selectors_other_than_the_peer_without_nat_are_refused() -> None:
    # A peer that is not behind NAT claiming another address's GRE.
    other = _sa("172.30.0.12", ["172.30.0.13/32[gre]"], nat=False)
    assert "not the peer's address" in (selector_problem(other) or "")
    assert mappings([other]) == {}
    # Everything's GRE: never, NAT or not.
    wide = _sa("172.30.0.201", ["0.0.0.0/0[gre]"], nat=True)
    assert "not one IPv4 address" in (selector_problem(wide) or "")
    assert mappings([wide]) == {}


def test_the_first_of_two_peers_with_one_inside_address_wins() -> None:
    sas = [
        _sa("172.30.0.201", ["192.168.0.2/32[gre]"], nat=True),
        _sa("172.30.0.202", ["192.168.0.2/32[gre]"], nat=True),
    ]
    assert mappings(sas) == {A("192.168.0.2"): A("172.30.0.201")}


def test_one_rule_each_way_per_mapping() -> None:
    inbound, outbound = chains({A("172.31.1.11"): A("172.30.0.201")})
    assert (inbound.name, outbound.name) == ("in", "out")
    assert len(inbound.rules) == len(outbound.rules) == 1
    # in: the inside source matched, the public one written; out: the reverse.
    assert A("172.31.1.11").packed in b"".join(inbound.rules[0][:6])
    assert A("172.30.0.201").packed in b"".join(outbound.rules[0][:6])
