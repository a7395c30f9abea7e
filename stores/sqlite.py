"""Opening alma's SQLite files: the one connection setup, and emptying the write-ahead log."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

Synchronous = Literal["NORMAL", "FULL"]


def connect(path: Path, synchronous: Synchronous) -> sqlite3.Connection:
    """A connection in autocommit mode that any thread may use, on the file in WAL mode (readers
    never wait for writers) with deleted rows overwritten, not left in free pages. `synchronous`
    is how durable a commit is when the machine loses power: in WAL mode NORMAL may lose the
    last commits, never the file; FULL loses no committed transaction."""
    connection = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(f"PRAGMA synchronous={synchronous}")
    connection.execute("PRAGMA secure_delete=ON")
    return connection


def truncate_wal(path: Path) -> None:
    """Copies the write-ahead log into the database file and empties it, so pages written
    before a deletion are not left in the log."""
    with sqlite3.connect(path, timeout=30, isolation_level=None) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
