"""Who owns which partition: PostgreSQL session advisory locks, held by one connection of the
worker's own; on SQLite, the one process that follows the log holds them all.

PostgreSQL gives the guarantees: a session lock has one holder at a time, and the server
releases it when the session ends. A killed worker's connection closes at once (the kernel
sends the server its FIN); a worker that stops answering (paused, frozen, its machine cut off)
loses its session after `timeout_s` of silence: the session is set to end when idle that long
(`idle_session_timeout`), the worker's heartbeat keeps it busy while it runs, and TCP
keepalives find a peer that is gone. Each worker also holds one membership lock, so every
worker can count the workers present (`pg_locks`) and take its fair share.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import socket
import threading
from typing import Any, Protocol

import psycopg

log = logging.getLogger(__name__)

_MEMBERS = "members"


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Locks(Protocol):
    worker: str

    def members(self) -> int: ...
    def try_lock(self, key: str, partition: int) -> bool: ...
    def unlock(self, key: str, partition: int) -> None: ...
    def held(self, key: str) -> set[int]: ...
    def owners(self, key: str) -> dict[int, str]: ...
    def close(self) -> None: ...


class LocalLocks:
    """SQLite: one process follows the log, and owns every partition."""

    def __init__(self) -> None:
        self.worker = worker_name()
        self._held: dict[str, set[int]] = {}
        self._lock = threading.Lock()

    def members(self) -> int:
        return 1

    def try_lock(self, key: str, partition: int) -> bool:
        with self._lock:
            self._held.setdefault(key, set()).add(partition)
        return True

    def unlock(self, key: str, partition: int) -> None:
        with self._lock:
            self._held.get(key, set()).discard(partition)

    def held(self, key: str) -> set[int]:
        with self._lock:
            return set(self._held.get(key, set()))

    def owners(self, key: str) -> dict[int, str]:
        return dict.fromkeys(self.held(key), self.worker)

    def close(self) -> None:
        with self._lock:
            self._held.clear()


class AdvisoryLocks:
    """Session advisory locks of one dedicated connection, `(space(key), partition)`, where
    `space` is a number of the schema and projection; made on first use, so a process that
    only reads positions never opens it."""

    def __init__(self, conninfo: str, schema: str, timeout_s: float) -> None:
        self.worker = worker_name()
        self.conninfo = conninfo
        self.schema = schema
        self.timeout_s = timeout_s
        self._connection: psycopg.Connection[Any] | None = None
        self._status: psycopg.Connection[Any] | None = None  # for owners(): holds no lock
        self._status_lock = threading.Lock()
        self._held: dict[str, set[int]] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def space(self, key: str) -> int:
        digest = hashlib.blake2b(f"alma/{self.schema}/{key}".encode(), digest_size=4).digest()
        return int.from_bytes(digest) & 0x7FFFFFFF

    def _session(self) -> psycopg.Connection[Any]:
        """The lock connection, opened (with the membership lock) if there is none."""
        if self._connection is None or self._connection.closed:
            self._held.clear()  # a new session holds nothing of the old one's
            idle = int(self.timeout_s * 1000)
            keepalive = max(1, int(self.timeout_s / 3))
            connection = psycopg.connect(
                self.conninfo,
                autocommit=True,
                application_name=f"alma-worker {self.worker}",
                options=f"-c idle_session_timeout={idle} -c tcp_keepalives_idle={keepalive} "
                f"-c tcp_keepalives_interval={keepalive} -c tcp_keepalives_count=3",
                keepalives=1,
                keepalives_idle=keepalive,
                keepalives_interval=keepalive,
                keepalives_count=3,
            )
            connection.execute(
                "SELECT pg_advisory_lock(%s, %s)",
                (self.space(_MEMBERS), random.randrange(2**31)),
            )
            self._connection = connection
            if self._heartbeat is None:
                self._heartbeat = threading.Thread(
                    target=self._beat, name="partition-heartbeat", daemon=True
                )
                self._heartbeat.start()
        return self._connection

    def _run(self, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._session().execute(statement, params).fetchall()
            except psycopg.Error:
                self._lose()
                raise

    def _lose(self) -> None:
        """The session is gone, and with it every lock it held."""
        if self._held and any(self._held.values()):
            log.warning("lost the partition locks' connection: this worker owns nothing now")
        self._held.clear()
        if self._connection is not None:
            self._connection.close()
        self._connection = None

    def _beat(self) -> None:
        while not self._stopping.wait(self.timeout_s / 4):
            with self._lock:
                if self._connection is None:
                    continue
                try:
                    self._connection.execute("SELECT 1")
                except psycopg.Error:
                    self._lose()

    def members(self) -> int:
        rows = self._run(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid::bigint = %s AND objsubid = 2 "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (self.space(_MEMBERS),),
        )
        return max(1, int(rows[0][0]))

    def try_lock(self, key: str, partition: int) -> bool:
        with self._lock:
            held = self._held.setdefault(key, set())
            if partition in held:
                return True
            (got,) = self._run("SELECT pg_try_advisory_lock(%s, %s)", (self.space(key), partition))[
                0
            ]
            if got:
                self._held.setdefault(key, set()).add(partition)
            return bool(got)

    def unlock(self, key: str, partition: int) -> None:
        with self._lock:
            if partition not in self._held.get(key, set()):
                return
            self._held[key].discard(partition)
            self._run("SELECT pg_advisory_unlock(%s, %s)", (self.space(key), partition))

    def held(self, key: str) -> set[int]:
        with self._lock:
            if self._connection is None or self._connection.closed:
                self._held.clear()
            return set(self._held.get(key, set()))

    def owners(self, key: str) -> dict[int, str]:
        """Which worker holds each partition of `key` now, as the server says (any process
        may ask, through a connection of its own that holds no lock)."""
        with self._status_lock:
            if self._status is None or self._status.closed:
                self._status = psycopg.connect(self.conninfo, autocommit=True)
            try:
                rows = self._query_owners(self._status, key)
            except psycopg.Error:
                self._status.close()
                raise
        return {int(p): str(name).removeprefix("alma-worker ") for p, name in rows}

    def _query_owners(self, connection: psycopg.Connection[Any], key: str) -> list[Any]:
        return connection.execute(
            "SELECT l.objid::bigint, a.application_name FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
            "AND l.granted AND l.classid::bigint = %s AND l.objsubid = 2 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (self.space(key),),
        ).fetchall()

    def close(self) -> None:
        self._stopping.set()
        with self._lock:
            self._held.clear()
            if self._connection is not None:
                self._connection.close()  # the server releases every lock of the session
            self._connection = None
            if self._status is not None:
                self._status.close()
