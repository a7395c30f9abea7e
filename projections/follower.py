"""Follows an application's event log in order, by polling, and feeds one projection.

eventsourcing 9.5 cannot subscribe to a SQLite store, so one polling loop serves both stores.
In-process writers call `wake()` so a follower in the same process reacts at once; followers in
other processes notice within `poll_interval`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from eventsourcing.application import Application
from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection

from projections.listings import ListingView

log = logging.getLogger(__name__)


class Follower:
    def __init__(
        self,
        app: Application[Any],
        projection: Projection[ListingView],
        poll_interval: float = 0.2,
        batch_size: int = 200,
    ) -> None:
        self.app = app
        self.projection = projection
        self.view: ListingView = projection.view
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return type(self.projection).name

    def position(self) -> int:
        return self.view.max_tracking_id(self.app.name) or 0

    def lag(self) -> int:
        """Events written to the log that this projection has not processed yet."""
        return max(0, (self.app.recorder.max_notification_id() or 0) - self.position())

    def run_once(self) -> int:
        """Processes the next batch; returns how many events it handled."""
        notifications = self.app.recorder.select_notifications(
            start=self.position() + 1, limit=self.batch_size
        )
        for notification in notifications:
            domain_event = self.app.mapper.to_domain_event(notification)
            self.projection.process_event(domain_event, Tracking(self.app.name, notification.id))
        return len(notifications)

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
            self._thread.join(timeout=10)

    def wait(self, position: int, timeout: float) -> bool:
        """True once everything up to `position` is processed; False if `timeout` passes first."""
        deadline = time.monotonic() + timeout
        pause = 0.002
        while self.position() < position:
            if time.monotonic() >= deadline:
                return False
            self._wakeup.set()
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        return True

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                handled = self.run_once()
                failures = 0
            except Exception:
                failures += 1
                log.exception("projection %s failed; retrying", self.name)
                self._stopping.wait(min(0.1 * 2**failures, 5.0))
                continue
            if not handled:
                self._wakeup.wait(self.poll_interval)
                self._wakeup.clear()
