"""Read models kept in SQL beside the events: each batch is written in one transaction together
with the position its partitions reach, fenced, so a crash loses nothing, a redelivered batch
changes nothing, and a worker that lost its partitions writes nothing."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from alma.projections.partitions import PartitionTable, Progress
from alma.stores.sql import Cursor, SqlStore

_LEGACY = "read_model_positions"  # where a store from before partitions kept each position


def commit(store: SqlStore, write: Callable[[Cursor], bool], progress: Progress) -> None:
    """Checks the fences, runs `write`, then advances the partitions, in one transaction. When
    `write` says it erased something, the store's log loses the erased text before the position
    says the batch is done, so whoever waits for the erasure finds no trace; a crash in between
    redelivers the batch, which then changes nothing."""
    with store.transaction() as cursor:
        progress.check(cursor)
        erased = write(cursor)
        if not erased:
            progress.advance(cursor)
    if erased:
        store.wipe()
        with store.transaction() as cursor:
            progress.advance(cursor)


class SqlReadModel(ABC):
    """A read model that a `Follower` feeds, in tables of its own. Opened on a store that lacks
    them, it makes them and starts from the first event."""

    name: str
    tables: ClassVar[tuple[str, ...]]  # emptied to rebuild
    schema: ClassVar[tuple[str, ...]]  # CREATE ... IF NOT EXISTS statements

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        with store.transaction() as cursor:
            for statement in self.schema:
                cursor.execute(statement)

    def key(self) -> str:
        return self.name

    def start(self) -> int:
        """0, or where a store written before partitions had got to."""
        if not self.store.has_table(_LEGACY):
            return 0
        rows = self.store.query(f"SELECT position FROM {_LEGACY} WHERE name = %s", (self.name,))
        return int(rows[0][0]) if rows else 0

    def process(self, batch: Sequence[tuple[Any, int]], progress: Progress) -> None:
        commit(self.store, lambda cursor: self.write(cursor, batch), progress)

    def clear(self) -> None:
        """Forgets everything, so the next follower rebuilds from the first event."""
        with self.store.transaction() as cursor:
            for table in self.tables:
                cursor.execute(f"DELETE FROM {table}")
            if self.store.has_table(_LEGACY):
                cursor.execute(f"DELETE FROM {_LEGACY} WHERE name = %s", (self.name,))
        PartitionTable(self.store).clear(self.key())

    def close(self) -> None:
        self.store.close()

    @abstractmethod
    def write(self, cursor: Cursor, batch: Sequence[tuple[Any, int]]) -> bool:
        """Writes what the batch changes; True when it erased an instance."""
