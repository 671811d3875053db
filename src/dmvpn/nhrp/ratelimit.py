"""Token buckets: Cisco's ``ip nhrp max-send`` idea, so a traffic flood
cannot become an NHRP storm."""

from __future__ import annotations

from collections.abc import Hashable


class TokenBucket:
    """``rate`` packets per ``interval`` seconds, bursts up to ``rate``."""

    __slots__ = ("interval", "last", "rate", "tokens")

    def __init__(self, rate: int, interval: float) -> None:
        self.rate = rate
        self.interval = interval
        self.tokens = float(rate)
        self.last: float | None = None

    def take(self, now: float) -> bool:
        if self.last is not None and now > self.last:
            self.tokens = min(
                self.rate, self.tokens + (now - self.last) * self.rate / self.interval
            )
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class PerKeyInterval:
    """At most one event per key per ``interval`` seconds (bounded memory)."""

    def __init__(self, interval: float, max_keys: int = 65536) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[Hashable, float] = {}

    def allow(self, key: Hashable, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        if len(self._last) >= self.max_keys:
            cutoff = now - self.interval
            self._last = {k: t for k, t in self._last.items() if t > cutoff}
        self._last[key] = now
        return True
