"""Follows an application's event log in order, by polling, and feeds one read model the events
of the partitions this process owns.

eventsourcing 9.5 cannot subscribe to a SQLite store, so one polling loop serves both stores.
In-process writers call `wake()` so a follower in the same process reacts at once; followers in
other processes notice within `poll_interval`.

The work is split into partitions (`partitions.py`): each follower claims, every
`claim_interval`, its fair share of them from `Locks` (PostgreSQL advisory locks; on SQLite it
owns them all), reads the log once from the lowest position of those it owns, and hands the read
model the events of its partitions with a `Progress` that moves every owned partition to the end
of what was read, fenced. An instance's events are in one partition, read in log order, so they
are applied in order. How far a projection has got is the lowest position of its partitions.

One event must not stop a projection for everyone: a batch that fails for a reason other than an
unreachable store is applied again one event at a time, and an event that still fails on its own,
`ATTEMPTS` times, is skipped and recorded in `Skips` (shown by /health, counted by /metrics,
forgotten by a rebuild). A store that cannot be reached is waited for, however long: nothing is
skipped for it.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

import httpx
import psycopg
from chromadb.errors import InternalError, RateLimitError
from eventsourcing import persistence
from eventsourcing.application import Application
from eventsourcing.persistence import Notification

from alma.domain.erasure import Unreadable
from alma.domain.errors import Erased
from alma.projections.partitions import (
    Fenced,
    PartitionCountChanged,
    PartitionTable,
    Progress,
    Stopped,
    partition_of,
    scope_partition,
)
from alma.projections.skips import Skipped, Skips
from alma.stores.locks import Locks
from alma.stores.sql import SqlStore

log = logging.getLogger(__name__)

CATCH_UP_WAIT_S = 600.0
SEEN_FOR_S = 0.01
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
    """What a follower feeds: the store its positions live in, the name of its partitions'
    rows (`key`; the memory index's changes with its generation), where new partitions start,
    and the next events of some partitions in order, each with its position in the log, whose
    effects it writes with `progress.advance` (or after `progress.check`) in one transaction."""

    name: str
    store: SqlStore

    def key(self) -> str: ...

    def start(self) -> int: ...

    def process(self, batch: Sequence[tuple[Any, int]], progress: Progress) -> None: ...


@runtime_checkable
class Deferring(Protocol):
    """A read model whose work outlives its batch: `process` only makes it durable, with the
    partitions' positions, and the work is done afterwards (the memory process's windows). Its
    work still due counts as not processed: in `position`, `wait`, the lag and the status."""

    def due(self) -> dict[UUID, int]:
        """Each instance with work still due, and the log position of the oldest."""
        ...

    def tend(self, progress: Progress) -> None:
        """Takes up, without waiting for it, the work due in the partitions of `progress`
        (those this worker owns now), including what earlier owners left."""
        ...

    def drain(self) -> None:
        """Waits for the work taken up in this process."""
        ...


@dataclass(frozen=True)
class PartitionLag:
    """One partition of a projection, as /health and `alma projections status` show it."""

    partition: int
    position: int
    lag_events: int
    lag_seconds: float  # how long the oldest event it has not read has waited; 0 when none
    owner: str | None  # the worker holding it now; None while no worker does


class Follower:
    def __init__(
        self,
        app: Application[Any],
        model: ReadModel,
        locks: Locks,
        partitions: int,
        poll_interval: float = 0.2,
        batch_size: int = 200,
        skips: Skips | None = None,
        claim_interval: float = 1.0,
    ) -> None:
        """Without `skips`, an event that cannot be applied stops the follower (and a test's
        crash is a crash)."""
        self.app = app
        self.model = model
        self.locks = locks
        self.partitions = partitions
        self.table = PartitionTable(model.store)
        self.skips = skips
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.claim_interval = claim_interval
        self.greedy = False  # claims every free partition, not its fair share (a rebuild)
        self._fences: dict[int, int] = {}  # partitions owned now, with the fence of each
        self._key: str | None = None
        self._next_claim = 0.0
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._advanced = threading.Condition()  # notified when this process's loop moves on
        self._thread: threading.Thread | None = None
        self._seen = (0.0, 0)  # (when, position) last read for `wait`, shared by the waiters
        self._seen_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.model.name

    def position(self) -> int:
        """The position every partition has reached: everything up to it is processed. The
        first to ask makes the partitions, at the read model's start."""
        key = self.model.key()
        low = self.table.low(key)
        if low is None:
            self.table.ensure(key, self.partitions, self.model.start)
            low = self.table.low(key) or 0
        return min([low, *(p - 1 for p in self._due().values())])

    def _due(self) -> dict[UUID, int]:
        return self.model.due() if isinstance(self.model, Deferring) else {}

    def lag(self) -> int:
        """Events written to the log that some partition has not processed yet."""
        return max(0, (self.app.recorder.max_notification_id() or 0) - self.position())

    def owned(self) -> list[int]:
        """The partitions this process owns now."""
        return sorted(self._fences)

    def status(self) -> list[PartitionLag]:
        """Each partition's position, lag in events and in seconds, and owner."""
        key = self.model.key()
        head = self.app.recorder.max_notification_id() or 0
        owners = self.locks.owners(key)
        now = datetime.now(UTC)
        due: dict[int, int] = {}  # each partition's oldest work still due
        for scope, position in self._due().items():
            partition = scope_partition(scope, self.partitions)
            due[partition] = min(position, due.get(partition, position))
        waited: dict[int, float] = {}
        lags = []
        for row in self.table.partitions(key):
            reached = min(row.position, due.get(row.partition, row.position + 1) - 1)
            behind = max(0, head - reached)
            if behind and reached not in waited:
                waited[reached] = self._waited(reached + 1, now)
            lags.append(
                PartitionLag(
                    row.partition,
                    reached,
                    behind,
                    waited.get(reached, 0.0) if behind else 0.0,
                    owners.get(row.partition),
                )
            )
        return lags

    def _waited(self, position: int, now: datetime) -> float:
        """Seconds since the event at `position` was recorded."""
        for notification in self.app.recorder.select_notifications(start=position, limit=1):
            event = self._event(notification)
            timestamp = getattr(event, "timestamp", None)
            if isinstance(timestamp, datetime):
                return round(max(0.0, (now - timestamp).total_seconds()), 3)
        return 0.0

    # Claiming partitions

    def _claim(self, key: str, force: bool = False) -> None:
        """Keeps this process's fair share of partitions: lets go of those it no longer holds
        (its lock connection died) and of more than its share, and takes free ones up to it."""
        if key != self._key:
            self._let_go(self._key)
            self._key = key
            force = True
        now = time.monotonic()
        if not force and now < self._next_claim:
            return
        self._next_claim = now + self.claim_interval
        held = self.locks.held(key)
        for partition in [p for p in self._fences if p not in held]:
            del self._fences[partition]
            log.warning("projection %s lost partition %d", self.name, partition)
        rows = self.table.partitions(key)
        if not rows:
            self.table.ensure(key, self.partitions, self.model.start)
        elif len(rows) != self.partitions:
            self._resplit(key, len(rows))
        share = self.partitions
        if not self.greedy:
            share = math.ceil(self.partitions / self.locks.members())
        for partition in sorted(self._fences)[share:]:
            del self._fences[partition]
            self.locks.unlock(key, partition)
        first = zlib.crc32(self.locks.worker.encode()) % self.partitions
        for step in range(self.partitions):
            if len(self._fences) >= share:
                break
            partition = (first + step) % self.partitions
            if partition in self._fences or not self.locks.try_lock(key, partition):
                continue
            try:
                self._fences[partition] = self.table.take(key, partition, self.locks.worker)
            except Exception:
                self.locks.unlock(key, partition)
                raise
            log.debug("projection %s took partition %d", self.name, partition)

    def _resplit(self, key: str, old: int) -> None:
        """The rows were made for another ALMA_PARTITIONS: split again, at their lowest
        position, once no worker holds any old partition (this one takes them all first)."""
        taken = [p for p in range(old) if self.locks.try_lock(key, p)]
        try:
            if len(taken) < old:
                raise PartitionCountChanged(
                    f"projection {self.name} has {old} partitions and this worker wants "
                    f"{self.partitions}: stop the workers that still run with {old}"
                )
            self.table.resplit(key, self.partitions)
            log.warning("projection %s split again into %d partitions", self.name, self.partitions)
        finally:
            for partition in taken:
                self.locks.unlock(key, partition)
            self._fences.clear()

    def _let_go(self, key: str | None) -> None:
        if key is not None:
            for partition in self._fences:
                self.locks.unlock(key, partition)
        self._fences.clear()

    # Following

    def run_once(self) -> int:
        """Processes the next batch of the partitions owned; returns how many events of the
        log it read past."""
        key = self.model.key()
        self._claim(key)
        if not self._fences:
            return 0
        fences = dict(self._fences)

        def held() -> bool:
            return set(fences) <= self.locks.held(key)

        if isinstance(self.model, Deferring):
            self.model.tend(
                Progress(
                    self.model.store, key, fences, 0, held, self.partitions, self._stopping.is_set
                )
            )
        positions = self.table.positions(key, sorted(fences))
        notifications = self.app.recorder.select_notifications(
            start=min(positions.values()) + 1, limit=self.batch_size
        )
        if not notifications:
            return 0
        ours = []
        for notification in notifications:
            partition = partition_of(notification, self.partitions, self._memory_scope)
            if partition in fences and notification.id > positions[partition]:
                ours.append(notification)
        progress = Progress(
            self.model.store,
            key,
            fences,
            notifications[-1].id,
            held,
            self.partitions,
            self._stopping.is_set,
        )
        try:
            self._apply(ours, progress)
        except Stopped:
            return 0  # nothing of the batch was written: the next start reads it again
        except Fenced as error:
            log.warning("projection %s: %s; claiming again", self.name, error)
            self._let_go(key)
            self._claim(key, force=True)
        return len(notifications)

    def _apply(self, notifications: Sequence[Notification], progress: Progress) -> None:
        if not notifications:
            with self.model.store.transaction() as cursor:
                progress.advance(cursor)
            return
        try:
            self.model.process([(self._event(n), n.id) for n in notifications], progress)
        except (*TRANSIENT, Fenced, Stopped):
            raise
        except Exception:
            if self.skips is None:
                raise
            self._one_by_one(notifications, progress)

    def _memory_scope(self, memory_id: UUID) -> UUID:
        try:
            scope: UUID = self.app.mapper.memory_scope(memory_id)  # type: ignore[attr-defined]
        except Erased:
            return memory_id  # erased: every read model passes its events over, in any order
        return scope

    def _one_by_one(self, notifications: Sequence[Notification], progress: Progress) -> None:
        """Applies the events one at a time, skipping each that fails on its own."""
        for notification in notifications:
            step = progress.at(notification.id)
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    self.model.process([(self._event(notification), notification.id)], step)
                    break
                except (*TRANSIENT, Fenced, Stopped):
                    raise
                except Exception as error:
                    if attempt == ATTEMPTS:
                        self._skip(notification, error, step)
                        break
                    if self._stopping.wait(0.25 * 2**attempt):
                        raise  # stopping: the next start tries it again, nothing is skipped
        with self.model.store.transaction() as cursor:
            progress.advance(cursor)

    def _skip(self, notification: Notification, error: Exception, progress: Progress) -> None:
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
        self.model.process([(unreadable, notification.id)], progress)

    def _event(self, notification: Notification) -> Any:
        try:
            return self.app.mapper.to_domain_event(notification)
        except Erased:
            return Unreadable(notification.originator_id, notification.originator_version)

    def catch_up(self) -> None:
        """Processes everything written so far in the partitions this process can take (all
        of them unless other workers hold some), then lets them go. With this follower's
        thread running, waits for it instead."""
        if self._thread is not None and self._thread.is_alive():
            self.wait(self.app.recorder.max_notification_id() or 0, CATCH_UP_WAIT_S)
            return
        self.greedy = True
        key = self.model.key()
        try:
            self._claim(key, force=True)
            while self.run_once():
                pass
            if isinstance(self.model, Deferring):
                self.model.drain()
        finally:
            self.greedy = False
            self._let_go(self._key)

    def wake(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"follow-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wakeup.set()
        if self._thread is not None:
            # A batch is left at its next step (`Progress.stopping`), never cut in the middle of
            # one: a thread still embedding when the interpreter exits aborts the whole process
            # (torch: "terminate called without an active exception").
            self._thread.join(timeout=120)
        try:
            self._let_go(self._key)
        except Exception:  # the locks' connection is gone already: so are its locks
            self._fences.clear()

    def wait(self, position: int, timeout: float) -> bool:
        """True once everything up to `position` is processed; False if `timeout` passes first.
        A follower running in this process is woken and returns the moment its loop passes
        `position`; one in another process is polled, more slowly as the wait goes on."""
        deadline = time.monotonic() + timeout
        pause = 0.002
        while self._recent_position() < position:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._wakeup.set()
            with self._advanced:
                self._advanced.wait(min(pause, remaining))
            pause = min(pause * 2, 0.05)
        return True

    def _recent_position(self) -> int:
        """The position, read at most every `SEEN_FOR_S` however many wait at once (the
        memory process's windows all wait for the index)."""
        with self._seen_lock:
            when, position = self._seen
            if time.monotonic() - when > SEEN_FOR_S:
                position = self.position()
                self._seen = (time.monotonic(), position)
            return position

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
                with self._seen_lock:
                    self._seen = (0.0, 0)  # moved on: the waiters read the position afresh
                with self._advanced:
                    self._advanced.notify_all()
            else:
                self._wakeup.wait(self.poll_interval)
                self._wakeup.clear()
