"""NBMA addresses on the TAP: the link-layer address each peer has there.

IPv4 underlay: 02:00 + the four address bytes, so a frame's destination MAC
names the NBMA address with no table. IPv6 underlay (16 bytes do not fit in
a MAC): 06:00 + the first four bytes of a BLAKE2b digest of the address,
the same on every node (a peer's EUI-64 link-local address maps back to it,
nd.link_local_nbma), and a table maps it back; filled whenever a MAC is
made for an address (a binding, an NHS, GRE received from it), which
always happens before a frame can name that MAC. Both are locally
administered unicast addresses (bit 1 set, bit 0 clear).
"""

from __future__ import annotations

from hashlib import blake2b
from ipaddress import IPv4Address, IPv6Address

Nbma = IPv4Address | IPv6Address

_V4 = b"\x02\x00"
_V6 = b"\x06\x00"
# MAC -> IPv6 NBMA address, process-wide (a digest is the same for every
# interface). A clash (two addresses with one digest, about 1 in 2^32 per
# pair) keeps the first; `clashes` counts the others.
_v6_by_mac: dict[bytes, IPv6Address] = {}
_v6_mac: dict[IPv6Address, bytes] = {}
clashes = 0


def nbma_mac(nbma: Nbma) -> bytes:
    """The link-layer address the peer at ``nbma`` has on the TAP."""
    if isinstance(nbma, IPv4Address):  # NbmaAddress (nbma.py) too
        return _V4 + nbma.packed
    assert isinstance(nbma, IPv6Address)
    mac = _v6_mac.get(nbma)
    if mac is None:
        global clashes
        mac = _V6 + blake2b(nbma.packed, digest_size=4).digest()
        _v6_mac[nbma] = mac
        if _v6_by_mac.setdefault(mac, nbma) != nbma:
            clashes += 1
    return mac


def mac_nbma(mac: bytes) -> Nbma | None:
    """The NBMA address a TAP MAC names, None if none."""
    head = mac[:2]
    if head == _V4:
        return IPv4Address(mac[2:])
    if head == _V6:
        return _v6_by_mac.get(bytes(mac))
    return None
