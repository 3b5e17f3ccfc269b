"""Fixed-window rate limit arithmetic (pure); the counter itself lives in Redis."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RateDecision:
    limit: int
    remaining: int
    reset_at: int  # unix seconds when the window ends
    retry_after: int  # seconds until the next request can pass (0 when allowed)
    allowed: bool

    def headers(self) -> dict[str, str]:
        out = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_at),
        }
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after)
        return out


def window_start(now: float, window_s: int) -> int:
    return int(now // window_s) * window_s


def decide(count: int, limit: int, now: float, window_s: int = 60) -> RateDecision:
    """The answer for the ``count``-th request (1-based) in the window containing ``now``."""
    start = window_start(now, window_s)
    reset_at = start + window_s
    allowed = count <= limit
    retry_after = 0 if allowed else max(1, math.ceil(reset_at - now))
    return RateDecision(
        limit=limit,
        remaining=max(0, limit - count),
        reset_at=reset_at,
        retry_after=retry_after,
        allowed=allowed,
    )
