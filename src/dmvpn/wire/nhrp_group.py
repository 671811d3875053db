"""The NHRP group of a Registration Request (Cisco per-tunnel QoS).

Cisco's `ip nhrp group NAME` on a spoke is carried to the hub in the
Registration Request, in a Vendor Private Extension (RFC 2332 5.3.6: type 8,
a 3-byte IEEE OUI, then vendor data); the hub's `ip nhrp map group NAME
service-policy output POLICY` picks the policy by that name ("Per-Tunnel QoS
for DMVPN", Cisco IOS XE DMVPN configuration guide).

Layout, as this codec writes and reads it::

    type 0x0008 (compulsory bit clear) | length 3 + n | OUI 00 00 0C | NAME (n bytes)

What is known and what is chosen:

- Wireshark's NHRP dissector (epan/dissectors/packet-nhrp.c,
  ``NHRP_EXT_VENDOR_PRIV``) reads the value as a 3-byte Vendor ID followed
  by opaque data; it has no Cisco-specific decoding, so tshark shows
  "Vendor ID=Cisco, Data=<the name in hex>". tests/tools checks that.
- The OUI is Cisco's (00:00:0C). The name is its ASCII bytes, unpadded and
  without a terminator, like Cisco's cleartext authentication value.
- The compulsory bit is clear: an NHS that does not do per-tunnel QoS
  (nhrpd, OpenNHRP, a Cisco hub without `map group`) must ignore it rather
  than refuse the registration (RFC 2332 5.3: error 1 only for an unknown
  compulsory extension).
- No public capture of an IOS registration carrying a group was found to
  check the name's bytes against; `dmvpn decode` shows any other vendor data
  as it is, so a capture that differs is visible rather than misread.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import DecodeError, EncodeError
from .extensions import Extension, VendorPrivateExtension

CISCO_OUI = b"\x00\x00\x0c"
# Cisco's CLI takes a WORD; 64 bytes is this codec's bound (names longer than
# that are refused at config load, never truncated on the wire).
GROUP_MAX = 64


def group_problem(name: str) -> str | None:
    """Why ``name`` cannot be an NHRP group, or None if it can."""
    if not name:
        return "is empty"
    if len(name) > GROUP_MAX:
        return f"is {len(name)} characters long, at most {GROUP_MAX}"
    if not name.isascii() or not name.isprintable() or " " in name:
        return "must be printable ASCII without spaces (a Cisco WORD)"
    return None


def group_extension(name: str) -> VendorPrivateExtension:
    """The Vendor Private Extension carrying NHRP group ``name``."""
    problem = group_problem(name)
    if problem is not None:
        raise EncodeError(f"NHRP group {name!r} {problem}")
    return VendorPrivateExtension(oui=CISCO_OUI, data=name.encode("ascii"))


def group_of(extensions: Iterable[Extension]) -> str | None:
    """The NHRP group a packet carries (None: none). A Cisco Vendor Private
    Extension whose data is not a valid group name is a DecodeError (the
    caller counts it and serves the peer without a group); vendor data of
    another OUI is not ours to read."""
    for ext in extensions:
        if isinstance(ext, VendorPrivateExtension) and ext.oui == CISCO_OUI:
            try:
                name = ext.data.decode("ascii")
            except UnicodeDecodeError:
                raise DecodeError("NHRP group is not ASCII", 0) from None
            problem = group_problem(name)
            if problem is not None:
                raise DecodeError(f"NHRP group {name!r} {problem}", 0)
            return name
    return None
