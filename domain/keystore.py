"""Erasure keys: one random AES-256-GCM key per scope (a character, or an instance with its
memories and messages), in a table `erasure_keys` beside the events. Erasing a scope replaces its
key with a tombstone (NULL), so no later write can give the scope a new key.

On SQLite the key is overwritten in place (`secure_delete`) and the write-ahead log is truncated,
so the key's bytes are in no file; on PostgreSQL the table is rewritten (`VACUUM FULL`).
"""

from __future__ import annotations

import sqlite3
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from pathlib import Path
from uuid import UUID

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.postgres import PostgresDatastore

from alma.domain.erasure import Erased

CACHE_SIZE = 10_000
_CREATE = (
    "CREATE TABLE IF NOT EXISTS {table} (scope_id TEXT PRIMARY KEY, parent_id TEXT, key {blob})"
)
_NO_ROW = object()


class KeyStore(ABC):
    """Keys by scope, with a bounded in-memory cache of their ciphers. A destroyed key leaves
    this process's cache at once; other processes keep theirs until it is evicted, but they
    only read a scope after the scope's `Erased` event fences it (see `Alma.owned`)."""

    def __init__(self, cache_size: int = CACHE_SIZE) -> None:
        self._cache: OrderedDict[UUID, AESGCM] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def cipher(self, scope: UUID, parent: UUID | None = None, create: bool = False) -> AESGCM:
        """The scope's cipher; `create` makes its key when it has none yet. Raises `Erased`
        when the key was destroyed (or, reading, never existed)."""
        with self._lock:
            cached = self._cache.get(scope)
            if cached is not None:
                self._cache.move_to_end(scope)
                return cached
        key = self._select(scope)
        if key is _NO_ROW and create:
            self._insert(scope, parent, AESGCM.generate_key(bit_length=256))
            key = self._select(scope)
        if not isinstance(key, bytes):
            raise Erased(scope)
        cipher = AESGCM(key)
        with self._lock:
            self._cache[scope] = cipher
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return cipher

    def destroy(self, scope: UUID) -> None:
        """Replaces the key with a tombstone and wipes what the store keeps of it."""
        self.forget(scope)
        self._tombstone(scope)
        self._wipe()

    def forget(self, scope: UUID) -> None:
        with self._lock:
            self._cache.pop(scope, None)

    @abstractmethod
    def children(self, parent: UUID) -> list[UUID]:
        """The scopes made under `parent` (a character's instances)."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _select(self, scope: UUID) -> object:
        """The key's bytes, None for a tombstone, or _NO_ROW."""

    @abstractmethod
    def _insert(self, scope: UUID, parent: UUID | None, key: bytes) -> None:
        """Adds the key unless the scope has a row already."""

    @abstractmethod
    def _tombstone(self, scope: UUID) -> None: ...

    @abstractmethod
    def _wipe(self) -> None: ...


class MemoryKeys(KeyStore):
    """For the in-memory event store (tests, experiments)."""

    def __init__(self) -> None:
        super().__init__()
        self._rows: dict[UUID, tuple[UUID | None, bytes | None]] = {}

    def children(self, parent: UUID) -> list[UUID]:
        return [scope for scope, (p, _) in self._rows.items() if p == parent]

    def close(self) -> None:
        """Nothing to release: the keys live in this object."""

    def _select(self, scope: UUID) -> object:
        row = self._rows.get(scope)
        return _NO_ROW if row is None else row[1]

    def _insert(self, scope: UUID, parent: UUID | None, key: bytes) -> None:
        self._rows.setdefault(scope, (parent, key))

    def _tombstone(self, scope: UUID) -> None:
        self._rows[scope] = (self._rows.get(scope, (None, None))[0], None)

    def _wipe(self) -> None:
        """Nothing to wipe: a tombstone replaced the key in memory, and no file holds it."""


class SQLiteKeys(KeyStore):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._connection().execute(_CREATE.format(table="erasure_keys", blob="BLOB"))

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA secure_delete=ON")
            self._local.connection = connection
            with self._lock:
                self._all.append(connection)
        return connection

    def children(self, parent: UUID) -> list[UUID]:
        rows = self._connection().execute(
            "SELECT scope_id FROM erasure_keys WHERE parent_id = ?", (str(parent),)
        )
        return [UUID(row[0]) for row in rows]

    def close(self) -> None:
        with self._lock:
            for connection in self._all:
                connection.close()
            self._all.clear()

    def _select(self, scope: UUID) -> object:
        row = (
            self._connection()
            .execute("SELECT key FROM erasure_keys WHERE scope_id = ?", (str(scope),))
            .fetchone()
        )
        return _NO_ROW if row is None else row[0]

    def _insert(self, scope: UUID, parent: UUID | None, key: bytes) -> None:
        self._connection().execute(
            "INSERT INTO erasure_keys (scope_id, parent_id, key) VALUES (?, ?, ?) "
            "ON CONFLICT (scope_id) DO NOTHING",
            (str(scope), str(parent) if parent else None, key),
        )

    def _tombstone(self, scope: UUID) -> None:
        self._connection().execute(
            "INSERT INTO erasure_keys (scope_id, key) VALUES (?, NULL) "
            "ON CONFLICT (scope_id) DO UPDATE SET key = NULL",
            (str(scope),),
        )

    def _wipe(self) -> None:
        truncate_wal(self.path)


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
        return _NO_ROW if row is None else (None if row["key"] is None else bytes(row["key"]))

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


def truncate_wal(path: Path) -> None:
    """Copies the write-ahead log into the database file and empties it, so pages written
    before a deletion are not left in the log."""
    with sqlite3.connect(path, timeout=30, isolation_level=None) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
