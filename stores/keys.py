"""The erasure keys' SQL adapters: a table `erasure_keys` in the events' own database.

On SQLite a destroyed key is overwritten in place (`secure_delete`) and the write-ahead log is
truncated, so the key's bytes are in no file; on PostgreSQL the table is rewritten (`VACUUM FULL`).
"""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore

from alma.domain.keystore import NO_ROW, KeyStore, MemoryKeys
from alma.stores.sql import SQLiteStore

_CREATE = (
    "CREATE TABLE IF NOT EXISTS {table} (scope_id TEXT PRIMARY KEY, parent_id TEXT, key {blob})"
)


def open_keys(recorder: ApplicationRecorder) -> KeyStore:
    """The erasure keys in the database of the events `recorder` writes (in memory when the
    events are): a `KeyStoreFactory` for `Alma`."""
    datastore = getattr(recorder, "datastore", None)
    if isinstance(datastore, PostgresDatastore):
        return PostgresKeys(datastore)
    if isinstance(datastore, SQLiteDatastore) and not datastore.pool.is_sqlite_memory_mode:
        return SQLiteKeys(Path(datastore.pool.db_name))
    return MemoryKeys()


class SQLiteKeys(KeyStore):
    def __init__(self, path: Path) -> None:
        super().__init__()
        # FULL, as the event store's own connections have it (the library leaves SQLite's
        # default, FULL): a key must survive any power loss that the events it encrypts survive,
        # and a tombstone any that the `Erased` event survives, or erased text could be read again.
        self.store = SQLiteStore(path, synchronous="FULL")
        self.store.query(_CREATE.format(table="erasure_keys", blob="BLOB"))

    def children(self, parent: UUID) -> list[UUID]:
        rows = self.store.query(
            "SELECT scope_id FROM erasure_keys WHERE parent_id = %s", (str(parent),)
        )
        return [UUID(row[0]) for row in rows]

    def close(self) -> None:
        self.store.close()

    def _select(self, scope: UUID) -> object:
        rows = self.store.query("SELECT key FROM erasure_keys WHERE scope_id = %s", (str(scope),))
        return rows[0][0] if rows else NO_ROW

    def _insert(self, scope: UUID, parent: UUID | None, key: bytes) -> None:
        self.store.query(
            "INSERT INTO erasure_keys (scope_id, parent_id, key) VALUES (%s, %s, %s) "
            "ON CONFLICT (scope_id) DO NOTHING",
            (str(scope), str(parent) if parent else None, key),
        )

    def _tombstone(self, scope: UUID) -> None:
        self.store.query(
            "INSERT INTO erasure_keys (scope_id, key) VALUES (%s, NULL) "
            "ON CONFLICT (scope_id) DO UPDATE SET key = NULL",
            (str(scope),),
        )

    def _wipe(self) -> None:
        self.store.wipe()


class PostgresKeys(KeyStore):
    def __init__(self, datastore: PostgresDatastore) -> None:
        super().__init__()
        self.datastore = datastore
        self.table = f'"{datastore.schema}".erasure_keys'
        with datastore.transaction(commit=True) as cursor:
            cursor.execute(_CREATE.format(table=self.table, blob="BYTEA"))

    def children(self, parent: UUID) -> list[UUID]:
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute(
                f"SELECT scope_id FROM {self.table} WHERE parent_id = %s",
                (str(parent),),
            )
            return [UUID(row["scope_id"]) for row in cursor.fetchall()]

    def close(self) -> None:
        pass  # the pool is the event store's

    def _select(self, scope: UUID) -> object:
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute(f"SELECT key FROM {self.table} WHERE scope_id = %s", (str(scope),))
            row = cursor.fetchone()
        return NO_ROW if row is None else (None if row["key"] is None else bytes(row["key"]))

    def _insert(self, scope: UUID, parent: UUID | None, key: bytes) -> None:
        with self.datastore.transaction(commit=True) as cursor:
            cursor.execute(
                f"INSERT INTO {self.table} (scope_id, parent_id, key) VALUES (%s, %s, %s) "
                "ON CONFLICT (scope_id) DO NOTHING",
                (str(scope), str(parent) if parent else None, key),
            )

    def _tombstone(self, scope: UUID) -> None:
        with self.datastore.transaction(commit=True) as cursor:
            cursor.execute(
                f"INSERT INTO {self.table} (scope_id, key) VALUES (%s, NULL) "
                "ON CONFLICT (scope_id) DO UPDATE SET key = NULL",
                (str(scope),),
            )

    def _wipe(self) -> None:
        # A deleted or updated row stays in its page until the table is rewritten.
        with self.datastore.get_connection() as connection:
            connection.execute(f"VACUUM FULL {self.table}")
