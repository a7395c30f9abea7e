"""Commands on one aggregate take turns within a process: a lock per aggregate.

With optimistic concurrency alone, eight requests changing one instance at once race: each loads
it, one saves, and the other seven lose, load it again and retry, over and over (the core
benchmark's shared instance: twice the work per request and a long p95). Taking turns, they
queue instead: a lock per aggregate, held from the command's first load to its save. The locks
are striped (one of 1,024, chosen by the aggregate's id), so two aggregates may share one; a
command holds one at most, so no two commands wait for each other in a circle. Other processes
still race, and a command that loses to one of them is retried (`Alma._retrying`).
"""

from __future__ import annotations

import threading
from uuid import UUID

STRIPES = 1024


class AggregateLocks:
    def __init__(self) -> None:
        self._locks = [threading.Lock() for _ in range(STRIPES)]

    def take(self, aggregate_id: UUID) -> threading.Lock:
        """Waits for the aggregate's turn and returns its lock, which the caller releases."""
        lock = self._locks[aggregate_id.int % STRIPES]
        lock.acquire()
        return lock
