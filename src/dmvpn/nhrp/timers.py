"""A timer heap with lazy cancellation, and the keys the engine schedules.

Owners schedule ``(when, key)``; a key due again later simply gets a new
entry, and the owner checks on firing whether the key is still wanted (a
generation, or the entry's creation time, that no longer matches). This
keeps a hub with 100,000 registrations at O(log n) per timer.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from itertools import count
from typing import TypeAlias

from dmvpn.wire import Address


@dataclass(frozen=True, slots=True)
class ExpireTimer:
    """A cache entry's holding time runs out (unless it was renewed)."""

    protocol: Address
    prefix_length: int


@dataclass(frozen=True, slots=True)
class NhsTimer:
    """Retransmit, refresh or give up the registration with one NHS."""

    index: int
    generation: int


@dataclass(frozen=True, slots=True)
class ResolutionTimer:
    """Retransmit a Resolution Request, or give up on it."""

    request_id: int
    generation: int


@dataclass(frozen=True, slots=True)
class RefreshTimer:
    """At 2/3 of a resolved entry's holding time: re-resolve it if in use."""

    protocol: Address
    prefix_length: int
    created: float


TimerKey: TypeAlias = ExpireTimer | NhsTimer | ResolutionTimer | RefreshTimer


class Timers:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerKey]] = []
        self._seq = count()

    def schedule(self, when: float, key: TimerKey) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), key))

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[TimerKey]:
        due: list[TimerKey] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap)[2])
        return due

    def __len__(self) -> int:
        return len(self._heap)
