"""Per-key rate limits and CORS, both off unless configured (ALMA_RATE_LIMIT, ALMA_CORS_ORIGINS).

The limiter is a token bucket per API key in this process's memory: with N replicas each one
limits separately, so a key may get up to N times the limit in all (set it per replica). It
needs no database round trip on the hot path, which a shared counter would.
"""

from __future__ import annotations

import math
import threading
import time

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from alma.settings import Settings


class RateLimiter:
    """`per_minute` requests a minute per key, in bursts of up to `per_minute`."""

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, key_id: str) -> int | None:
        """None when the request may go; otherwise the seconds until it may (Retry-After)."""
        now = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(key_id, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - then) * self.rate)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return None
            self._buckets[key_id] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / self.rate))


def install_security(app: FastAPI, settings: Settings) -> None:
    app.state.rate_limiter = RateLimiter(settings.rate_limit) if settings.rate_limit else None
    if settings.cors_origins:
        origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["*"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "If-Match",
                "X-Request-ID",
                "Idempotency-Key",
            ],
            expose_headers=["X-Request-ID", "Retry-After", "Idempotent-Replayed"],
        )
