"""The memory process's formers: threads that take the windows due, instance by instance.

One former per instance at a time takes that instance's windows in order until none is due
(`work`), so a slow window holds back its own instance only; at most `workers` instances are
worked on at once (the model calls within are bounded by `Pace`). An instance taken again
while its former runs is worked on again once it finishes, so no window recorded meanwhile
waits for the next look at the table. A former that fails leaves its windows due: its instance
rests a while, then is taken again (`Later`: shortly, nothing logged; a lost partition: by
its new owner).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from uuid import UUID

from alma.projections import Later
from alma.projections.partitions import Fenced, Progress

log = logging.getLogger(__name__)

LATER_S = 0.2  # the local model gave way to a chat: try again this soon
REST_S = 0.2  # after a failure, doubled each time, at most `REST_MAX_S`
REST_MAX_S = 5.0


class Formers:
    def __init__(self, workers: int, work: Callable[[UUID, Progress], None]) -> None:
        self.work = work
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="formation")
        self._state = threading.Condition()
        self._running: set[UUID] = set()
        self._again: set[UUID] = set()
        self._resting: dict[UUID, tuple[float, int]] = {}  # until when, failures so far

    def take(self, scopes: Iterable[UUID], progress: Progress) -> None:
        """Works on these instances' due windows, those of the partitions `progress` owns."""
        now = time.monotonic()
        with self._state:
            for scope in scopes:
                owned = progress.of(scope)
                if owned is None or self._resting.get(scope, (0.0, 0))[0] > now:
                    continue
                if scope in self._running:
                    self._again.add(scope)
                    continue
                self._running.add(scope)
                self._pool.submit(self._former, scope, owned)

    def drain(self) -> None:
        """Waits for every former running or asked for."""
        with self._state:
            while self._running:
                self._state.wait()

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)

    def _former(self, scope: UUID, progress: Progress) -> None:
        while True:
            try:
                self.work(scope, progress)
                failed = False
            except Later:
                failed = True
                self._rest(scope, LATER_S, counted=False)
            except Fenced as error:
                failed = True
                log.warning("memory formation: %s", error)
            except Exception:
                failed = True
                log.exception("memory formation failed for %s; trying again", scope)
                self._rest(scope, REST_S, counted=True)
            with self._state:
                if not failed:
                    self._resting.pop(scope, None)
                if scope in self._again and not failed:
                    self._again.discard(scope)
                    continue
                self._again.discard(scope)
                self._running.discard(scope)
                self._state.notify_all()
                return

    def _rest(self, scope: UUID, pause: float, counted: bool) -> None:
        with self._state:
            failures = self._resting.get(scope, (0.0, 0))[1] + counted
            if counted:
                pause = min(REST_MAX_S, pause * 2 ** (failures - 1))
            self._resting[scope] = (time.monotonic() + pause, failures)
