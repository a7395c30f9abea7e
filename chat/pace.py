"""How many model calls the memory process keeps in flight, and how it slows down.

At most `limit` calls at once. A model that answers 429 halves how many may be in flight and
holds every new call until its Retry-After has passed (`backoff_s` when it gives none); each
answer lets one more in again, up to `limit`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from alma import metrics


class Pace:
    def __init__(self, limit: int, backoff_s: float = 1.0) -> None:
        self.limit = limit
        self.backoff_s = backoff_s
        self.allowed = limit
        self.in_flight = 0
        self._resume_at = 0.0
        self._state = threading.Condition()

    @contextmanager
    def call(self) -> Iterator[None]:
        """Waits for a free place, holds it while the caller asks the model."""
        with self._state:
            while True:
                pause = self._resume_at - time.monotonic()
                if pause > 0:
                    self._state.wait(pause)
                elif self.in_flight < self.allowed:
                    break
                else:
                    self._state.wait()
            self.in_flight += 1
            metrics.MEMORY_FORMATION_IN_FLIGHT.set(self.in_flight)
        try:
            yield
        finally:
            with self._state:
                self.in_flight -= 1
                metrics.MEMORY_FORMATION_IN_FLIGHT.set(self.in_flight)
                self._state.notify_all()

    def answered(self) -> None:
        with self._state:
            if self.allowed < self.limit:
                self.allowed += 1
                self._state.notify_all()

    def limited(self, retry_after_s: float | None) -> None:
        """The model answered 429: fewer calls at once, none until it said to come back."""
        wait = self.backoff_s if retry_after_s is None else retry_after_s
        with self._state:
            self.allowed = max(1, self.allowed // 2)
            self._resume_at = max(self._resume_at, time.monotonic() + wait)
            metrics.MEMORY_FORMATION_ALLOWED.set(self.allowed)
