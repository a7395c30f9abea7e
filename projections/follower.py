"""Follows an application's event log in order, by polling, and feeds one read model.

eventsourcing 9.5 cannot subscribe to a SQLite store, so one polling loop serves both stores.
In-process writers call `wake()` so a follower in the same process reacts at once; followers in
other processes notice within `poll_interval`.

One event must not stop a projection for everyone: a batch that fails for a reason other than an
unreachable store is applied again one event at a time, and an event that still fails on its own,
`ATTEMPTS` times, is skipped and recorded in `Skips` (shown by /health, counted by /metrics,
forgotten by a rebuild). A store that cannot be reached is waited for, however long: nothing is
skipped for it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

import httpx
import psycopg
from chromadb.errors import InternalError, RateLimitError
from eventsourcing import persistence
from eventsourcing.application import Application
from eventsourcing.persistence import Notification

from alma.domain.erasure import Unreadable
from alma.domain.errors import Erased
from alma.projections.skips import Skipped, Skips

log = logging.getLogger(__name__)

ATTEMPTS = 4  # an event failing on its own this many times, a while apart, is skipped
# A store or service that cannot be reached now: waited for, never a reason to skip.
TRANSIENT = (
    OSError,  # connections refused or reset, timeouts
    sqlite3.OperationalError,  # locked
    psycopg.OperationalError,  # down, restarting, pool exhausted
    psycopg.InterfaceError,
    persistence.OperationalError,
    persistence.InterfaceError,
    httpx.TransportError,  # Chroma's server
    InternalError,
    RateLimitError,
)


class Later(Exception):
    """Raised by a read model that cannot go on yet for a reason that is no failure (the memory
    process gave the local model up to a chat): the batch is tried again shortly, unlogged."""


class ReadModel(Protocol):
    """What a follower feeds: it says how far it has read and takes the next events in order,
    each with its position in the log, recording the new position with their effects."""

    name: str

    def position(self) -> int: ...

    def process(self, batch: Sequence[tuple[Any, int]]) -> None: ...


class Follower:
    def __init__(
        self,
        app: Application[Any],
        model: ReadModel,
        poll_interval: float = 0.2,
        batch_size: int = 200,
        skips: Skips | None = None,
    ) -> None:
        """Without `skips`, an event that cannot be applied stops the follower (and a test's
        crash is a crash)."""
        self.app = app
        self.model = model
        self.skips = skips
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._advanced = threading.Condition()  # notified when this process's loop moves on
        self._thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.model.name

    def position(self) -> int:
        return self.model.position()

    def lag(self) -> int:
        """Events written to the log that this projection has not processed yet."""
        return max(0, (self.app.recorder.max_notification_id() or 0) - self.position())

    def run_once(self) -> int:
        """Processes the next batch; returns how many events it handled."""
        notifications = self.app.recorder.select_notifications(
            start=self.position() + 1, limit=self.batch_size
        )
        if not notifications:
            return 0
        try:
            self.model.process([(self._event(n), n.id) for n in notifications])
        except TRANSIENT:
            raise
        except Exception:
            if self.skips is None:
                raise
            return self._one_by_one(notifications)
        return len(notifications)

    def _one_by_one(self, notifications: Sequence[Notification]) -> int:
        """Applies the events one at a time up to the first that fails on its own, skipped
        then; returns how many it handled."""
        for handled, notification in enumerate(notifications, start=1):
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    self.model.process([(self._event(notification), notification.id)])
                    break
                except TRANSIENT:
                    raise
                except Exception as error:
                    if attempt == ATTEMPTS:
                        self._skip(notification, error)
                        return handled
                    if self._stopping.wait(0.25 * 2**attempt):
                        raise  # stopping: the next start tries it again, nothing is skipped
        return len(notifications)

    def _skip(self, notification: Notification, error: Exception) -> None:
        assert self.skips is not None
        log.error(
            "projection %s skips the event at position %d (%s): %s",
            self.name,
            notification.id,
            notification.originator_id,
            error,
            exc_info=error,
        )
        self.skips.record(
            Skipped(
                self.name,
                notification.id,
                str(notification.originator_id),
                type(error).__name__,
                str(error),
            )
        )
        # Read as an event of an erased scope, which every read model passes over.
        unreadable = Unreadable(notification.originator_id, notification.originator_version)
        self.model.process([(unreadable, notification.id)])

    def _event(self, notification: Notification) -> Any:
        try:
            return self.app.mapper.to_domain_event(notification)
        except Erased:
            return Unreadable(notification.originator_id, notification.originator_version)

    def catch_up(self) -> None:
        while self.run_once():
            pass

    def wake(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"follow-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wakeup.set()
        if self._thread is not None:
            # A batch is finished, never cut: a thread still embedding when the interpreter exits
            # aborts the whole process (torch: "terminate called without an active exception").
            self._thread.join(timeout=120)

    def wait(self, position: int, timeout: float) -> bool:
        """True once everything up to `position` is processed; False if `timeout` passes first.
        A follower running in this process is woken and returns the moment its loop passes
        `position`; one in another process is polled, more slowly as the wait goes on."""
        deadline = time.monotonic() + timeout
        pause = 0.002
        while self.position() < position:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._wakeup.set()
            with self._advanced:
                self._advanced.wait(min(pause, remaining))
            pause = min(pause * 2, 0.05)
        return True

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                handled = self.run_once()
                failures = 0
            except Later:
                self._stopping.wait(self.poll_interval)
                continue
            except Exception:
                failures += 1
                log.exception("projection %s failed; retrying", self.name)
                self._stopping.wait(min(0.1 * 2**failures, 5.0))
                continue
            if handled:
                with self._advanced:
                    self._advanced.notify_all()
            else:
                self._wakeup.wait(self.poll_interval)
                self._wakeup.clear()
