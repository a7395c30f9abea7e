"""What alma replaces inside the eventsourcing library (the version pinned in pyproject.toml).

Each piece below re-implements or reaches into a library internal; `tests/test_library_pin.py`
records the source of each and fails when an upgrade changes one, so that this module is read
again against the new library before the pin moves.

- `replay` replaces `eventsourcing.application.project_aggregate`, the projector that rebuilds
  an aggregate from its events, for loads (`CachingRepository.get`) and snapshots: the library
  asserts that every event satisfies `CanMutateProtocol`, a runtime Protocol check per event
  that was most of the time spent loading an instance.
- `copy_of` replaces the `deepcopy` that `Repository.get` makes of a cached aggregate for a
  command: it shares the aggregate's immutable attributes instead of walking them.
- `CachingRepository.get` is the library's with `replay` as the default projector, and
  `copy_of` instead of its `deepcopy` of a cached aggregate.
- `CachingRepository.last_seen` reads the library's cache under the library's private
  fast-forward lock (`_use_fastforward_lock` / `_disuse_fastforward_lock`, which `get` holds
  while it fast-forwards a cached aggregate), without asking the store for newer events.
  `remember` and `forget` put and evict copies in that cache.
- `CachingApplication.construct_repository` builds a `CachingRepository` from the cache size
  alone: fast-forwarding stays on (the library's default) and the other cache settings are not
  read.
- `CachingApplication.save` replaces `Application.save`: it collects an aggregate's events
  without the two Protocol checks of `ProcessingEvent.collect_events`, calls the library's
  private `_record` and `_notify` as `save` does, then puts a copy of each saved aggregate in the
  cache (the library's `_record` does so only when fast-forwarding is off), so the next command
  starts from it. It does not call the deprecated `notify`. When the store refuses the events as
  already there (`IntegrityError`) and they are there exactly as we sent them, the write is done:
  the recorder retries an insert whose commit reached the database but whose answer a dropped
  connection lost, and the retry finds the first attempt's rows.
- `CachingApplication._take_snapshots` replaces the library's: a snapshot is taken from the
  aggregate just saved when it stands at the snapshot's version, instead of being read back from
  the store (the last snapshot and every event since, each decrypted); otherwise it is taken as
  the library does, with `replay`. `snapshotting_projectors` is not read.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import suppress
from copy import deepcopy
from datetime import datetime
from enum import Enum
from typing import Any
from uuid import UUID

from eventsourcing.application import Application, ProcessingEvent, Repository
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, Recording


def replay(aggregate: Any, domain_events: Iterable[Any]) -> Any:
    """The library's projector without its per-event Protocol check."""
    for domain_event in domain_events:
        aggregate = domain_event.mutate(aggregate)
    return aggregate


_IMMUTABLE = (str, int, float, bool, type(None), UUID, datetime, Enum)


def copy_of(aggregate: Any) -> Any:
    """`deepcopy` of an aggregate, sharing its immutable attributes instead of walking them
    (for a command's two copies; README, core benchmark, shows what it did to commands/s)."""
    kind: Any = type(aggregate)
    copied = kind.__new__(kind)
    copied.__dict__.update(
        {
            name: value if isinstance(value, _IMMUTABLE) else deepcopy(value)
            for name, value in vars(aggregate).items()
        }
    )
    return copied


class CachingRepository(Repository[UUID]):
    def get(self, aggregate_id: UUID, *, deepcopy_from_cache: bool = True, **kwargs: Any) -> Any:
        """The library's, with `replay`, and with `copy_of` instead of its `deepcopy` of a
        cached aggregate (`deepcopy_from_cache=False`: the cached aggregate itself, for a reader
        that changes nothing)."""
        kwargs.setdefault("projector_func", replay)
        aggregate = super().get(aggregate_id, deepcopy_from_cache=False, **kwargs)
        copies = self.cache is not None and kwargs.get("version") is None
        wanted = deepcopy_from_cache and self.deepcopy_from_cache
        return copy_of(aggregate) if copies and wanted else aggregate

    def last_seen(self, aggregate_id: UUID) -> Any:
        """This process's latest copy, without asking the store whether another process has
        moved on: only for commands, whose save fails on a stale version and is then retried
        on fresh state. Falls back to `get` when nothing is cached."""
        if self.cache is None:
            return self.get(aggregate_id)
        lock = self._use_fastforward_lock(aggregate_id)
        try:
            with lock:
                cached = self.cache.get(aggregate_id)
            return copy_of(cached)
        except KeyError:
            return self.get(aggregate_id)
        finally:
            self._disuse_fastforward_lock(aggregate_id)

    def remember(self, aggregate: Aggregate) -> None:
        if self.cache is not None:
            self.cache.put(aggregate.id, copy_of(aggregate))

    def forget(self, aggregate_id: UUID) -> None:
        if self.cache is not None:
            with suppress(KeyError):
                self.cache.get(aggregate_id, evict=True)


class CachingApplication(Application[UUID]):
    """An application whose saved aggregates stay in its cache for the next command."""

    repository: CachingRepository

    def construct_repository(self) -> Repository[UUID]:
        cache_size = self.env.get(self.AGGREGATE_CACHE_MAXSIZE)
        return CachingRepository(
            event_store=self.events,
            snapshot_store=self.snapshots,
            cache_maxsize=int(cache_size) if cache_size else None,
        )

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        processing_event = ProcessingEvent[UUID]()
        for obj in objs:
            if isinstance(obj, Aggregate):
                processing_event.events += obj.collect_events()
                processing_event.aggregates[obj.id] = obj
            else:
                processing_event.collect_events(obj)
        processing_event.saved_kwargs.update(kwargs)
        try:
            recordings = self._record(processing_event)
        except IntegrityError:
            if not self._already_recorded(processing_event.events):
                raise
            recordings = []  # their notification ids went with the lost answer
        self._take_snapshots(processing_event)
        self._notify(recordings)
        for saved in objs:
            if isinstance(saved, Aggregate):
                self.repository.remember(saved)
        return recordings

    def _already_recorded(self, events: list[Any]) -> bool:
        """Whether the store holds these very events (same fields, down to the timestamp and
        the request that made them) at their versions."""
        for event in events:
            version = event.originator_version
            stored = list(self.events.get(event.originator_id, gt=version - 1, lte=version))
            if stored != [event]:
                return False
        return True

    def _take_snapshots(self, processing_event: ProcessingEvent[UUID]) -> None:
        if self.snapshots is None:
            return
        for event in processing_event.events:
            aggregate = processing_event.aggregates.get(event.originator_id)
            if not isinstance(aggregate, Aggregate):
                continue
            interval = self.snapshotting_intervals.get(type(aggregate))
            if interval is None or event.originator_version % interval:
                continue
            if aggregate.version == event.originator_version:
                self.snapshots.put([type(aggregate).Snapshot.take(aggregate)])
            else:
                self.take_snapshot(event.originator_id, event.originator_version, replay)
