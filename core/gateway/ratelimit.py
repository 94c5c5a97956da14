"""Per-terminal rate limiting: a token bucket per key, in each worker process.

Each worker keeps its own buckets (no shared state, nothing on the request path but a
dict lookup and some arithmetic). A terminal's connections may land on different
workers, so with N workers a terminal can get up to N times the configured rate; one
keep-alive connection stays on one worker and gets exactly the rate. Buckets of keys
not seen for a while are dropped, so the table cannot grow without bound.
"""

from __future__ import annotations

import math

MAX_BUCKETS = 50_000  # above this, buckets that have refilled are forgotten


class RateLimiter:
    """Token buckets: `rate` tokens a second, at most `burst`; rate <= 0 turns limiting off."""

    __slots__ = ("_buckets", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = float(rate)
        self.burst = max(1.0, float(burst))
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, time of last update]

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def check(self, key: str, now: float) -> float:
        """Take one token for key: 0.0 if allowed, else the seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._forget_full(now)
            self._buckets[key] = [self.burst - 1.0, now]
            return 0.0
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled (forgetting them changes nothing); if none, the oldest half."""
        refill = self.burst / self.rate
        full = [k for k, (_t, last) in self._buckets.items() if now - last >= refill]
        if not full:
            by_age = sorted(self._buckets.items(), key=lambda kv: kv[1][1])
            full = [k for k, _ in by_age[: len(by_age) // 2]]
        for k in full:
            del self._buckets[k]


def retry_after_header(seconds: float) -> tuple[str, str]:
    """The Retry-After header for a wait of `seconds` (whole seconds, at least 1)."""
    return ("retry-after", str(max(1, math.ceil(seconds))))
