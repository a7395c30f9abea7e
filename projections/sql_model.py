"""Read models kept in SQL beside the events: each batch is written in one transaction together
with the position it reaches, so a crash loses nothing and a redelivered batch changes nothing."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from alma.stores.sql import Cursor, SqlStore

_POSITIONS = """CREATE TABLE IF NOT EXISTS read_model_positions (
    name TEXT PRIMARY KEY, position BIGINT NOT NULL)"""


def commit(
    store: SqlStore, write: Callable[[Cursor], bool], advance: Callable[[Cursor], None]
) -> None:
    """Runs `write` then `advance` in one transaction. When `write` says it erased something,
    the store's log loses the erased text before the position says the batch is done, so
    whoever waits for the erasure finds no trace; a crash in between redelivers the batch,
    which then changes nothing."""
    with store.transaction() as cursor:
        erased = write(cursor)
        if not erased:
            advance(cursor)
    if erased:
        store.wipe()
        with store.transaction() as cursor:
            advance(cursor)


class SqlReadModel(ABC):
    """A read model that a `Follower` feeds, in tables of its own. Opened on a store that lacks
    them, it makes them and starts from the first event."""

    name: str
    tables: ClassVar[tuple[str, ...]]  # emptied to rebuild
    schema: ClassVar[tuple[str, ...]]  # CREATE ... IF NOT EXISTS statements

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        with store.transaction() as cursor:
            for statement in (_POSITIONS, *self.schema):
                cursor.execute(statement)

    def position(self) -> int:
        rows = self.store.query(
            "SELECT position FROM read_model_positions WHERE name = %s", (self.name,)
        )
        return int(rows[0][0]) if rows else 0

    def process(self, batch: Sequence[tuple[Any, int]]) -> None:
        commit(
            self.store,
            lambda cursor: self.write(cursor, batch),
            lambda cursor: self._advance(cursor, batch[-1][1]),
        )

    def clear(self) -> None:
        """Forgets everything, so the next follower rebuilds from the first event."""
        with self.store.transaction() as cursor:
            for table in self.tables:
                cursor.execute(f"DELETE FROM {table}")
            cursor.execute("DELETE FROM read_model_positions WHERE name = %s", (self.name,))

    def close(self) -> None:
        self.store.close()

    @abstractmethod
    def write(self, cursor: Cursor, batch: Sequence[tuple[Any, int]]) -> bool:
        """Writes what the batch changes; True when it erased an instance."""

    def _advance(self, cursor: Cursor, position: int) -> None:
        cursor.execute(
            "INSERT INTO read_model_positions (name, position) VALUES (%s, %s) "
            "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            (self.name, position),
        )
