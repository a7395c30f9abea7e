"""Partitions of a projection's work, and who may write them.

An event belongs to the partition of its instance (`partition_of`): a character's, lorebook's or
key's events to their own aggregate's. Each partition of each projection has a row in the read
model's own store, `projection_partitions`: how far it has read the log (`position`) and a
`fence`, a number raised by every new owner. A batch's effects and its partitions' new positions
are committed in one transaction that first checks, row-locked, that every fence is still the
one its owner was given (`Progress.check`): a worker that lost a partition (killed, paused,
disconnected) and wakes up later writes nothing for it. Who owns a partition is decided by the
engine (`ownership`), never by this table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from uuid import UUID

from eventsourcing.persistence import Notification

from alma.domain.erasure import MAGIC
from alma.stores.sql import Cursor, SqlStore

_TABLE = """CREATE TABLE IF NOT EXISTS projection_partitions (
    projection TEXT NOT NULL, partition INTEGER NOT NULL, position BIGINT NOT NULL,
    fence BIGINT NOT NULL, owner TEXT, owned_since TEXT, PRIMARY KEY (projection, partition))"""
_SCOPE = slice(len(MAGIC), len(MAGIC) + 16)


class Fenced(Exception):
    """A partition was taken by another worker since this one was given it: nothing of the
    batch was written."""


class Stopped(Exception):
    """The worker is stopping: the batch was left unwritten, for the next start to do again."""


class PartitionCountChanged(Exception):
    """The store's rows were made for another number of partitions."""


def partition_of(
    notification: Notification, count: int, memory_scope: Callable[[UUID], UUID]
) -> int:
    """The partition of an event: its instance's (an instance's events and its memories' carry
    the instance in clear in their encrypted state), else its aggregate's. A memory's event
    stored before encryption is traced to its instance by `memory_scope`."""
    state = notification.state
    if state[: len(MAGIC)] == MAGIC:
        key = UUID(bytes=bytes(state[_SCOPE]))
    elif notification.topic.startswith("alma.domain.memory:"):
        key = memory_scope(UUID(str(notification.originator_id)))
    else:
        key = UUID(str(notification.originator_id))
    return scope_partition(key, count)


def scope_partition(scope: UUID, count: int) -> int:
    """The partition of an instance (or other scope) among `count`."""
    return scope.int % count


@dataclass(frozen=True)
class Partition:
    """One partition's row, as the status shows it."""

    partition: int
    position: int
    fence: int
    owner: str | None  # the worker it was last given to
    owned_since: datetime | None


class PartitionTable:
    """The `projection_partitions` rows of the projections kept in one store."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        with store.transaction() as cursor:
            cursor.execute(_TABLE)

    def ensure(self, key: str, count: int, start: Callable[[], int]) -> None:
        """Makes `count` rows for projection `key`, each at `start()` (where a store written
        before partitions had got to), unless they exist; refuses rows made for another
        count (`resplit` replaces them)."""
        rows = self.partitions(key)
        if len(rows) == count:
            return
        if rows:
            raise PartitionCountChanged(
                f"{key} has {len(rows)} partitions in this store and ALMA_PARTITIONS is {count}"
            )
        position = start()
        with self.store.transaction() as cursor:
            cursor.executemany(
                "INSERT INTO projection_partitions (projection, partition, position, fence) "
                "VALUES (%s, %s, %s, 0) ON CONFLICT (projection, partition) DO NOTHING",
                [(key, p, position) for p in range(count)],
            )

    def resplit(self, key: str, count: int) -> None:
        """Replaces the rows of `key` by `count` rows at the lowest position of the old ones.
        Only with no worker following `key` (the caller holds every old partition)."""
        low = self.low(key) or 0
        with self.store.transaction() as cursor:
            cursor.execute("DELETE FROM projection_partitions WHERE projection = %s", (key,))
            cursor.executemany(
                "INSERT INTO projection_partitions (projection, partition, position, fence) "
                "VALUES (%s, %s, %s, 0)",
                [(key, p, low) for p in range(count)],
            )

    def partitions(self, key: str) -> list[Partition]:
        rows = self.store.query(
            "SELECT partition, position, fence, owner, owned_since FROM projection_partitions "
            "WHERE projection = %s ORDER BY partition",
            (key,),
        )
        return [
            Partition(
                int(p),
                int(position),
                int(fence),
                None if owner is None else str(owner),
                None if since is None else datetime.fromisoformat(str(since)),
            )
            for p, position, fence, owner, since in rows
        ]

    def positions(self, key: str, partitions: Sequence[int]) -> dict[int, int]:
        marks = ", ".join(["%s"] * len(partitions))
        rows = self.store.query(
            "SELECT partition, position FROM projection_partitions WHERE projection = %s "
            f"AND partition IN ({marks})",
            (key, *partitions),
        )
        return {int(p): int(position) for p, position in rows}

    def low(self, key: str) -> int | None:
        """The position every partition of `key` has reached; None before it has rows."""
        rows = self.store.query(
            "SELECT MIN(position) FROM projection_partitions WHERE projection = %s", (key,)
        )
        return None if rows[0][0] is None else int(rows[0][0])

    def take(self, key: str, partition: int, owner: str) -> int:
        """Raises the partition's fence for its new owner; returns the fence the owner writes
        with. Waits for a transaction of the previous owner that holds the row to end, so the
        new owner resumes exactly where that one committed."""
        with self.store.transaction() as cursor:
            cursor.execute(
                "UPDATE projection_partitions SET fence = fence + 1, owner = %s, owned_since = %s "
                "WHERE projection = %s AND partition = %s RETURNING fence",
                (owner, datetime.now(UTC).isoformat(), key, partition),
            )
            row = cursor.fetchone()
        if row is None:
            raise Fenced(f"{key} has no partition {partition} (rebuilt meanwhile)")
        return int(row[0])

    def clear(self, key: str) -> None:
        """Forgets every partition of `key`: the next follower starts from the first event."""
        with self.store.transaction() as cursor:
            cursor.execute("DELETE FROM projection_partitions WHERE projection = %s", (key,))

    def keys(self, prefix: str) -> list[str]:
        rows = self.store.query(
            "SELECT DISTINCT projection FROM projection_partitions WHERE projection LIKE %s",
            (prefix + "%",),
        )
        return sorted(str(r[0]) for r in rows)


@dataclass(frozen=True)
class Progress:
    """What a batch may write and how far it moves: the fences of the partitions it covers,
    and the log position they all reach once it is written."""

    store: SqlStore
    key: str
    fences: dict[int, int]
    reached: int
    held: Callable[[], bool]  # False once this worker knows it lost a partition
    count: int  # the projection's partitions, owned here or not
    # True once the worker is asked to stop: a long batch (an import's thousands of texts to
    # embed) is left at its next step rather than holding the shutdown for minutes.
    stopping: Callable[[], bool] = lambda: False

    def of(self, scope: UUID) -> Progress | None:
        """What work of one instance (or other scope) may write: its partition's fence alone,
        or None when this worker does not own that partition. For work done after its batch
        (the memory process's windows), which must not lock the other partitions' rows."""
        partition = scope_partition(scope, self.count)
        if partition not in self.fences:
            return None
        return replace(self, fences={partition: self.fences[partition]})

    def check(self, cursor: Cursor) -> None:
        """Locks the batch's partition rows (in order, so two writers never deadlock) and
        raises `Fenced` if any was given to another worker since."""
        lock = " FOR UPDATE" if self.store.dialect == "postgresql" else ""
        for partition in sorted(self.fences):
            cursor.execute(
                "SELECT fence FROM projection_partitions WHERE projection = %s "
                f"AND partition = %s{lock}",
                (self.key, partition),
            )
            row = cursor.fetchone()
            if row is None or int(row[0]) != self.fences[partition]:
                raise Fenced(f"{self.key} partition {partition} has another owner now")

    def advance(self, cursor: Cursor) -> None:
        """Checks the fences, then moves every partition of the batch to `reached`."""
        self.check(cursor)
        cursor.executemany(
            "UPDATE projection_partitions SET position = %s "
            "WHERE projection = %s AND partition = %s AND position < %s",
            [(self.reached, self.key, p, self.reached) for p in sorted(self.fences)],
        )

    def at(self, reached: int) -> Progress:
        return replace(self, reached=reached)
