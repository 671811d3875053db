"""Which address the tunnel moves to when the underlay address changes (pure)."""

from __future__ import annotations

from ipaddress import IPv4Address

from dmvpn.daemon.underlay import pick_source

A = IPv4Address
OLD = A("172.30.0.11")


def test_the_source_stays_while_any_device_holds_it() -> None:
    rows = [(1, A("127.0.0.1"), 254), (2, OLD, 0), (2, A("172.30.0.50"), 0)]
    assert pick_source(OLD, None, rows) == (None, 2)


def test_a_new_global_address_on_the_same_device_takes_over() -> None:
    rows = [(1, A("127.0.0.1"), 254), (3, A("10.9.9.9"), 0), (2, A("172.30.0.111"), 0)]
    assert pick_source(OLD, 2, rows) == (A("172.30.0.111"), 2)


def test_nothing_changes_between_the_old_lease_and_the_new_one() -> None:
    # Gone, and nothing on its device yet (or only a link-scope address).
    assert pick_source(OLD, 2, [(1, A("127.0.0.1"), 254), (2, A("169.254.1.1"), 253)]) == (None, 2)
    # Never seen on any device: no guess at another device's address.
    assert pick_source(OLD, None, [(3, A("10.9.9.9"), 0)]) == (None, None)


def test_an_ipv6_underlay_moves_to_the_new_global_address() -> None:
    from ipaddress import IPv6Address as B

    old = B("fd30::11")
    rows = [(1, B("::1"), 254), (2, B("fe80::400:1ff:fe02:304"), 253), (2, B("fd30::111"), 0)]
    assert pick_source(old, 2, rows) == (B("fd30::111"), 2)
    assert pick_source(old, 2, [*rows[:2], (2, old, 0)]) == (None, 2)
    # Only the link-local address left: no move.
    assert pick_source(old, 2, rows[:2]) == (None, 2)
