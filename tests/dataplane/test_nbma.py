"""NBMA addresses parsed once per peer (dataplane/nbma.py): interchangeable
with plain IPv4Address everywhere, one object per source, bounded."""

from __future__ import annotations

import pickle
from ipaddress import IPv4Address, IPv4Network

from dmvpn.dataplane.nbma import NbmaAddress, NbmaAddresses


def test_an_nbma_address_is_a_plain_ipv4_address_to_every_table() -> None:
    plain = IPv4Address("198.18.3.7")
    nbma = NbmaAddress("198.18.3.7")
    assert isinstance(nbma, IPv4Address)
    assert nbma == plain and plain == nbma and hash(nbma) == hash(plain)
    assert str(nbma) == "198.18.3.7" and repr(nbma) == repr(plain) == "IPv4Address('198.18.3.7')"
    assert f"{nbma}" == "198.18.3.7" and nbma.packed == plain.packed and int(nbma) == int(plain)
    # Keys of either kind find each other.
    assert {plain: 1}[nbma] == 1 and {nbma: 2}[plain] == 2
    assert len({plain, nbma}) == 1
    assert sorted([NbmaAddress("198.18.3.8"), plain, IPv4Address("198.18.3.6")]) == [
        IPv4Address("198.18.3.6"),
        plain,
        IPv4Address("198.18.3.8"),
    ]
    assert nbma != IPv4Address("198.18.3.8") and nbma < IPv4Address("198.18.3.8")
    assert nbma in IPv4Network("198.18.0.0/15") and not nbma.is_loopback
    assert nbma + 1 == IPv4Address("198.18.3.8") and hash(nbma + 1) == hash(plain + 1)
    assert pickle.loads(pickle.dumps(nbma)) == plain
    assert NbmaAddress(plain.packed) == plain and NbmaAddress(int(plain)) == plain


def test_one_object_per_source_text_or_packed_bytes() -> None:
    table = NbmaAddresses()
    a = table("198.18.0.1")
    assert table("".join(["198.18.", "0.1"])) is a  # a new str each packet, as recvfrom's
    b = table(bytes([198, 18, 0, 1]))
    assert b == a and table(bytes([198, 18, 0, 1])) is b
    assert table("198.18.0.2") == IPv4Address("198.18.0.2") and len(table) == 3
    text = "".join(["198.18.", "0.9"])
    assert str(table(text)) is text  # one string per peer, the key's
    assert str(table(bytes([198, 18, 0, 9]))) == text and str(NbmaAddress(int(a))) == str(a)


def test_a_flood_of_sources_only_empties_the_table() -> None:
    table = NbmaAddresses(limit=3)
    first = table("198.18.0.1")
    for i in range(2, 4):
        table(f"198.18.0.{i}")
    assert len(table) == 3 and table("198.18.0.1") is first
    fourth = table("198.18.0.4")  # over the limit: started again
    assert len(table) == 1 and fourth == IPv4Address("198.18.0.4")
    again = table("198.18.0.1")
    assert again == first and again is not first and len(table) == 2
    for i in range(10_000):
        table(f"198.19.{i >> 8}.{i & 255}")
    assert len(table) <= 3
