"""A small SQL gateway for read models: one statement syntax on SQLite files and PostgreSQL.

Statements are written with `%s` placeholders; on SQLite they become `?`. PostgreSQL tables live
in the configured schema (set as the connections' search_path).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg_pool import ConnectionPool

from alma.stores.sqlite import Synchronous, connect, truncate_wal

IDLE_TRANSACTION_MS = 10_000


class Cursor(Protocol):
    def execute(self, statement: str, params: Sequence[Any] = ...) -> Any: ...
    def executemany(self, statement: str, params: Sequence[Sequence[Any]]) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchone(self) -> Any: ...


class SqlStore(Protocol):
    dialect: str  # "sqlite" or "postgresql", for the few statements that differ

    def transaction(self) -> Any: ...
    def has_table(self, name: str) -> bool: ...
    def has_column(self, table: str, column: str) -> bool: ...
    def query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...
    def wipe(self) -> None: ...
    def close(self) -> None: ...


class _SQLiteCursor:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    def execute(self, statement: str, params: Sequence[Any] = ()) -> Any:
        return self._cursor.execute(statement.replace("%s", "?"), params)

    def executemany(self, statement: str, params: Sequence[Sequence[Any]]) -> Any:
        return self._cursor.executemany(statement.replace("%s", "?"), params)

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    def fetchone(self) -> Any:
        return self._cursor.fetchone()


class SQLiteStore:
    """One connection per thread on one file, in WAL mode so readers never wait for writers."""

    dialect = "sqlite"

    def __init__(self, path: Path, synchronous: Synchronous) -> None:
        self.path = path
        self.synchronous = synchronous
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = connect(self.path, self.synchronous)
            self._local.connection = connection
            with self._lock:
                self._all.append(connection)
        return connection

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        connection = self._connection()
        cursor = connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            yield _SQLiteCursor(cursor)
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._connection().execute(statement.replace("%s", "?"), params).fetchall()

    def has_table(self, name: str) -> bool:
        rows = self.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return bool(rows)

    def has_column(self, table: str, column: str) -> bool:
        return bool(
            self.query("SELECT 1 FROM pragma_table_info(?) WHERE name = ?", (table, column))
        )

    def wipe(self) -> None:
        """Empties the write-ahead log, which still holds pages from before a deletion."""
        truncate_wal(self.path)

    def close(self) -> None:
        with self._lock:
            for connection in self._all:
                connection.close()
            self._all.clear()


class PostgresStore:
    dialect = "postgresql"

    def __init__(self, conninfo: str, schema: str, max_size: int = 5) -> None:
        self.pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=max_size,
            # A worker paused inside a transaction must not hold its rows (a partition's fence
            # among them) longer than it would hold its partitions (README, scaling out).
            kwargs={
                "options": f"-c search_path={schema} "
                f"-c idle_in_transaction_session_timeout={IDLE_TRANSACTION_MS}",
                "autocommit": False,
            },
            open=True,
            timeout=10,
        )

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        with self.pool.connection() as connection, connection.cursor() as cursor:
            yield cursor

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.pool.connection() as connection:
            return connection.execute(statement, params).fetchall()

    def has_table(self, name: str) -> bool:
        return self.query("SELECT to_regclass(%s) IS NOT NULL", (name,))[0][0] is True

    def has_column(self, table: str, column: str) -> bool:
        rows = self.query(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = %s AND column_name = %s",
            (table, column),
        )
        return bool(rows)

    def wipe(self) -> None:
        """Deleted rows stay in their pages until autovacuum reuses them (see README)."""

    def close(self) -> None:
        self.pool.close()


def open_store(env: dict[str, str]) -> SQLiteStore | PostgresStore:
    """The read-model store beside an event store configured by eventsourcing settings `env`."""
    if env["PERSISTENCE_MODULE"] == "eventsourcing.sqlite":
        # A read model is rebuilt from the events: a power loss that takes its last commits takes
        # the position they advanced with them, and those events are read again.
        return SQLiteStore(Path(env["SQLITE_DBNAME"]), synchronous="NORMAL")
    return PostgresStore(conninfo(env), env.get("POSTGRES_SCHEMA", "public"))


@contextmanager
def creating_tables(env: dict[str, str]) -> Iterator[None]:
    """Holds, on PostgreSQL, a lock that processes opening one schema take in turn while they
    create its tables: two `CREATE TABLE IF NOT EXISTS` of one table at once collide in the
    catalogue (a worker and API processes started together on a new database crashed).
    SQLite serializes them itself."""
    if env["PERSISTENCE_MODULE"] != "eventsourcing.postgres":
        yield
        return
    name = f"alma tables {env.get('POSTGRES_SCHEMA', 'public')}"
    with psycopg.connect(conninfo(env), autocommit=True) as connection:
        # A session lock: closing the connection releases it, whatever happens in between.
        connection.execute("SELECT pg_advisory_lock(hashtext(%s))", (name,))
        yield


def conninfo(env: dict[str, str]) -> str:
    return psycopg.conninfo.make_conninfo(
        dbname=env["POSTGRES_DBNAME"],
        host=env["POSTGRES_HOST"],
        port=env["POSTGRES_PORT"],
        user=env["POSTGRES_USER"],
        password=env["POSTGRES_PASSWORD"],
        connect_timeout=env.get("POSTGRES_CONNECT_TIMEOUT", "5"),
    )
