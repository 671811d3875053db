"""NBMA addresses parsed once per peer, not once per packet.

A raw socket names a packet's source as text ("198.18.0.1"); turning that
into an `IPv4Address` parses four octets, and every dict keyed by it (the
forwarder's peer counters, the IPsec gate, the engine's refresh table and
cache, the send path's `str()`) then hashes it again through
`IPv4Address.__hash__`, a Python function that formats the integer in hex
each time. On a hub answering tens of thousands of refreshes a second that
was a dozen hashes and a parse per packet (issue 20).

`NbmaAddresses` keeps one `NbmaAddress` per source text: an `IPv4Address`
(equal to, hashing as, sorting and printing like the plain one, so every
table and every output is unchanged) that remembers its hash and its text.
The table is bounded: a flood of spoofed sources only empties it.
"""

from __future__ import annotations

from ipaddress import IPv4Address

__all__ = ["MAX_NBMA_ADDRESSES", "NbmaAddress", "NbmaAddresses"]

# Sources remembered at most (a hub's spokes, with room); beyond, the table
# starts again (a flood of spoofed sources must not grow memory).
MAX_NBMA_ADDRESSES = 1 << 18


class NbmaAddress(IPv4Address):
    """An `IPv4Address` whose hash and text are computed once."""

    __slots__ = ("_hash", "_text")

    def __init__(self, address: str | bytes | int) -> None:
        super().__init__(address)
        self._hash = IPv4Address.__hash__(self)
        text = IPv4Address.__str__(self)
        # The socket's own text when it is the canonical one (it is): one
        # string per peer, shared with NbmaAddresses' key.
        self._text: str = address if isinstance(address, str) and address == text else text

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"IPv4Address({self._text!r})"


class NbmaAddresses:
    """Source (text as a socket gives it, or the four packed bytes the C
    pump hands up) -> one shared `NbmaAddress`."""

    def __init__(self, limit: int = MAX_NBMA_ADDRESSES) -> None:
        self.limit = limit
        self._by_text: dict[str | bytes, NbmaAddress] = {}

    def __call__(self, text: str | bytes) -> NbmaAddress:
        addr = self._by_text.get(text)
        if addr is None:
            if len(self._by_text) >= self.limit:
                self._by_text.clear()
            addr = self._by_text[text] = NbmaAddress(text)
        return addr

    def __len__(self) -> int:
        return len(self._by_text)
