"""A timer heap with lazy cancellation, and the keys the engine schedules.

Owners schedule ``(when, key)`` and check on firing whether the key is still
wanted (a generation, or the entry's creation time, that no longer matches).
A key is due once, at the time it was last scheduled for: scheduling it
again later (a registration refreshed, so its ExpireTimer moves out) only
records the new time, and the heap entry already there is re-queued when it
comes up. So a hub whose 50,000 spokes refresh every few minutes keeps one
heap entry per binding, not one per refresh (issue 20: 299 MB of stale
entries after 630k refreshes), at O(log n) per timer.
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
        # key -> when it is due (the last time it was scheduled for).
        self._due: dict[TimerKey, float] = {}

    def schedule(self, when: float, key: TimerKey) -> None:
        old = self._due.get(key)
        self._due[key] = when
        # Later than the entry in the heap: that entry is re-queued when it
        # comes up. Earlier: a new entry; the old one is skipped on popping.
        if old is None or when < old:
            heapq.heappush(self._heap, (when, next(self._seq), key))

    def next_deadline(self) -> float | None:
        """The first heap entry's time: possibly a key since moved later (the
        caller wakes, pop_due re-queues it and returns nothing), never late."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[TimerKey]:
        due: list[TimerKey] = []
        heap, wanted = self._heap, self._due
        while heap and heap[0][0] <= now:
            when, _, key = heapq.heappop(heap)
            at = wanted.get(key)
            if at is None:
                continue  # fired already (an entry left by a move earlier)
            if at > now:
                if at > when:  # moved later: back in at its new time
                    heapq.heappush(heap, (at, next(self._seq), key))
                continue
            del wanted[key]
            due.append(key)
        return due

    def __len__(self) -> int:
        """Keys waiting to be due (not heap entries)."""
        return len(self._due)

    @property
    def heap_size(self) -> int:
        """Heap entries: at most a few more than keys (memory, tests)."""
        return len(self._heap)
