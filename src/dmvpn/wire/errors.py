"""The one exception every decoder in :mod:`dmvpn.wire` raises."""

from __future__ import annotations


class DecodeError(ValueError):
    """Bytes that are not a valid packet of the expected kind.

    ``offset`` is the byte offset, from the start of the buffer handed to the
    decoder, of the field found wrong; ``reason`` says what is wrong with it.
    """

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"{reason} (at offset {offset})")
        self.reason = reason
        self.offset = offset


class EncodeError(ValueError):
    """A packet value that cannot be put on the wire (a field out of range)."""
