"""The Internet checksum (RFC 1071), used by IPv4, GRE and NHRP."""

from __future__ import annotations


def internet_checksum(data: bytes | bytearray | memoryview) -> int:
    """One's-complement sum of 16-bit words, complemented.

    Summing the whole buffer as one big integer and folding it is far faster in
    CPython than a loop over words, and gives the same result: the sum of the
    words modulo 0xFFFF is what one's-complement addition computes.
    """
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    total = int.from_bytes(data, "big")
    # Fold: 2**16 = 1 (mod 0xFFFF), so the sum of 16-bit words mod 0xFFFF
    # equals the whole number mod 0xFFFF.
    folded = total % 0xFFFF
    if folded == 0 and total != 0:
        folded = 0xFFFF
    return (~folded) & 0xFFFF
