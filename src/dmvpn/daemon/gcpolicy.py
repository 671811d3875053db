"""The daemon's garbage-collector settings.

A hub's state is long-lived objects (cache entries, timers, per-peer
counters) and its per-packet work makes short-lived ones that reference
counting frees at once, almost none in cycles. CPython's default first
generation threshold (700 allocations) then runs a collection every few
hundred packets, each scanning young objects that are about to die anyway,
and the older generations re-scan the whole binding table as it grows: at
50,000 spokes a full collection is tens of milliseconds, an answer's
latency spike (issue 20).

So, once start-up is done: what start-up made (modules, config, sockets)
is frozen out of collection for good (``gc.freeze``), and the first
generation is collected every ``GEN0`` allocations instead of 700. Cycles
are still collected, only less often.
"""

from __future__ import annotations

import gc

GEN0 = 50_000
GEN1 = 20
GEN2 = 20


def settle() -> tuple[int, int, int]:
    """Apply the policy after start-up; returns the thresholds it set."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0, GEN1, GEN2)
    return gc.get_threshold()
