"""The NBMA address family of a packet against the interface's underlay.

An interface has one underlay family (its NBMA address is IPv4 or IPv6,
docs/ARCHITECTURE.md "IPv6 underlay"). A packet whose ``ar$afn`` or any
NBMA address it carries (the fixed header's source NBMA, a CIE's client
NBMA, the CIEs of the NAT, responder and transit extensions) is of the
other family is dropped before anything reads it: a binding to an address
the data plane cannot reach would only black-hole traffic.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from dmvpn.wire import Address, AddressFamily, NhrpPacket
from dmvpn.wire.extensions import (
    ForwardTransitNhsExtension,
    NatAddressExtension,
    ResponderAddressExtension,
    ReverseTransitNhsExtension,
)

# Checked on every packet a hub receives: type tests, no calls per address
# (about a tenth of a decode).
_WITH_CIES: frozenset[type] = frozenset(
    (
        NatAddressExtension,
        ResponderAddressExtension,
        ForwardTransitNhsExtension,
        ReverseTransitNhsExtension,
    )
)
_AFN: dict[type, int] = {IPv4Address: int(AddressFamily.IPV4), IPv6Address: int(AddressFamily.IPV6)}


def nbma_family_mismatch(pkt: NhrpPacket, src_nbma: Address, own_nbma: Address) -> str | None:
    """Why ``pkt`` (from ``src_nbma``) is not of the family of ``own_nbma``,
    or None when it is. An empty address (none given) fits any family;
    raw bytes of another length fit none."""
    # isinstance, not type(): the data plane hands over subclasses (an
    # IPv4Address caching its hash, dataplane/nbma.py).
    if isinstance(own_nbma, IPv4Address):
        want: type = IPv4Address
    elif isinstance(own_nbma, IPv6Address):
        want = IPv6Address
    else:
        return None  # no IP underlay (raw bytes): nothing to compare with
    afn = _AFN[want]
    if pkt.afn != afn:
        return f"ar$afn {pkt.afn} on an IPv{4 if afn == 1 else 6} underlay"
    for a in (src_nbma, pkt.src_nbma):
        if not isinstance(a, want) and (type(a) is not bytes or a):
            return "source NBMA address of the other family"
    for c in pkt.cies:
        a = c.nbma
        if not isinstance(a, want) and (type(a) is not bytes or a):
            return "CIE client NBMA address of the other family"
    for ext in pkt.extensions:
        if type(ext) in _WITH_CIES:  # one set lookup, not four isinstance calls
            for c in ext.cies:  # type: ignore[union-attr]
                a = c.nbma
                if not isinstance(a, want) and (type(a) is not bytes or a):
                    return f"{type(ext).__name__} CIE NBMA address of the other family"
    return None
