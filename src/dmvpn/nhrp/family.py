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

from dmvpn.wire import Address, NhrpPacket
from dmvpn.wire.cie import Cie
from dmvpn.wire.extensions import (
    ForwardTransitNhsExtension,
    NatAddressExtension,
    ResponderAddressExtension,
    ReverseTransitNhsExtension,
)

from .packets import afn_of

_WITH_CIES = (
    NatAddressExtension,
    ResponderAddressExtension,
    ForwardTransitNhsExtension,
    ReverseTransitNhsExtension,
)


def _foreign(addr: Address, want: type) -> bool:
    # Empty (no address given) is fine in any family; anything else must be
    # an address of the underlay's family (raw bytes are a length no family has).
    if type(addr) is bytes:
        return bool(addr)
    return type(addr) is not want


def _cies_foreign(cies: tuple[Cie, ...], want: type) -> bool:
    return any(_foreign(c.nbma, want) for c in cies)


def nbma_family_mismatch(pkt: NhrpPacket, src_nbma: Address, own_nbma: Address) -> str | None:
    """Why ``pkt`` (from ``src_nbma``) is not of the family of ``own_nbma``,
    or None when it is."""
    want = IPv6Address if isinstance(own_nbma, IPv6Address) else IPv4Address
    if pkt.afn != afn_of(own_nbma):
        return f"ar$afn {pkt.afn} on an IPv{6 if want is IPv6Address else 4} underlay"
    if _foreign(src_nbma, want) or _foreign(pkt.src_nbma, want):
        return "source NBMA address of the other family"
    if _cies_foreign(pkt.cies, want):
        return "CIE client NBMA address of the other family"
    for ext in pkt.extensions:
        if isinstance(ext, _WITH_CIES) and _cies_foreign(ext.cies, want):
            return f"{type(ext).__name__} CIE NBMA address of the other family"
    return None
