"""Retransmitted Registration Requests answered with the reply already sent.

In a registration storm (50,000 spokes at once, after a hub reboot) a spoke
not answered within a second sends the same request again (RFC 2332 5.2.3:
retransmissions keep the request ID), and again 2 and 4 s later. The hub's
receive queue then holds the original and its copies: in the issue 20
benchmark 140,000 requests for 50,000 spokes, 90,000 of them copies, each
decoded and registered again. A copy (the very same bytes, from the same
NBMA address, within WINDOW seconds of the answer) is answered here with the
same reply, without decoding it, provided the binding it made still points
at that NBMA address. The max-send budget still applies.

Memory: one entry per NBMA address answered within WINDOW (an OrderedDict
in answer order, trimmed from the front), at most MAX_ENTRIES.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

from dmvpn.wire import Address

from .cache import Cache, EntryType
from .outputs import SendPacket

__all__ = ["ReplayCache"]

WINDOW = 10.0
MAX_ENTRIES = 100_000


class _Answer(NamedTuple):
    request: bytes
    at: float
    reply: SendPacket
    protocol: Address


class ReplayCache:
    def __init__(self, window: float = WINDOW, max_entries: int = MAX_ENTRIES) -> None:
        self.window = window
        self.max_entries = max_entries
        self._answers: OrderedDict[Address, _Answer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    def lookup(self, data: bytes, src_nbma: Address, now: float, cache: Cache) -> SendPacket | None:
        """The reply to send again, if `data` is a copy of a request answered
        within the window whose binding still stands."""
        answer = self._answers.get(src_nbma)
        if answer is None or answer.request != data or now - answer.at > self.window:
            return None
        entry = cache.host(answer.protocol)
        if entry is None or entry.type is not EntryType.DYNAMIC or entry.nbma != src_nbma:
            return None
        return answer.reply

    def remember(
        self, data: bytes, src_nbma: Address, now: float, reply: SendPacket, protocol: Address
    ) -> None:
        answers = self._answers
        answers.pop(src_nbma, None)
        answers[src_nbma] = _Answer(data, now, reply, protocol)
        while answers:
            first = next(iter(answers.values()))
            if len(answers) <= self.max_entries and now - first.at <= self.window:
                break
            answers.popitem(last=False)

    def clear(self) -> None:
        self._answers.clear()
