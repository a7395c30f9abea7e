"""Idempotency keys in the events' own database (a table `idempotency_keys`): which request holds
a tenant's key, whether it wrote, and the answer a repeat of it is given.

Whether the request holding a key wrote is marked in the same transaction as every event it
writes: the event store's recorders below run `fence` inside the library's insert transaction.
So that mark is exactly as durable as the events (a commit whose answer a dropped connection lost
has it too), and a request whose key a repeat took over (its lease ran out before it wrote)
cannot write at all: its transaction fails on the mark and rolls back, events included.

The answer itself is written when the request has answered, in a transaction of its own: the
answer is made after the last write (a chat turn writes before and after the model answers),
and a write's transaction must not wait for it. Between the two, a repeat is told the request is
still under way; should the answer be lost (the process died, or lost the database, after
writing), a repeat is told so and nothing is carried out twice.

Times are seconds since the epoch (UTC).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from enum import Enum
from typing import Any

from eventsourcing.persistence import ApplicationRecorder, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteDatastore
from eventsourcing.utils import construct_topic

TABLE = "idempotency_keys"
_CREATE = (
    "CREATE TABLE IF NOT EXISTS {table} ("
    "tenant TEXT NOT NULL, "
    "idempotency_key TEXT NOT NULL, "
    "fingerprint TEXT NOT NULL, "
    "owner TEXT NOT NULL, "
    "wrote BOOLEAN NOT NULL DEFAULT FALSE, "
    "answered BOOLEAN NOT NULL DEFAULT FALSE, "
    "status INTEGER, "
    "headers TEXT, "
    "body {blob}, "
    "started_at DOUBLE PRECISION NOT NULL, "
    "expires_at DOUBLE PRECISION NOT NULL, "
    "PRIMARY KEY (tenant, idempotency_key))"
)
_WHERE = "tenant = %s AND idempotency_key = %s"
PURGE_EVERY_S = 60.0


@dataclass(frozen=True)
class Claim:
    """A key held by one request (`owner` is that request's own random token)."""

    tenant: str
    key: str
    owner: str


CLAIM: ContextVar[Claim | None] = ContextVar("idempotency_claim", default=None)
"""The key the current request holds: every event it writes marks it (see `fence`)."""


class ClaimLost(Exception):
    """The request's key was taken over by a repeat of it (this one had neither written nor
    answered within the lease): the write is refused, so the two never both write."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class Found(Enum):
    NEW = "new"  # the key is this request's now: carry it out
    ANSWERED = "answered"  # the same request was answered: give that answer again
    OTHER_REQUEST = "other_request"  # the key was sent with a different request
    RUNNING = "running"  # the request holding it has not answered yet
    UNANSWERED = "unanswered"  # the request holding it wrote, and its answer was lost


@dataclass(frozen=True)
class Lookup:
    found: Found
    claim: Claim | None = None  # NEW
    answer: Answer | None = None  # ANSWERED


class IdempotencyKeys:
    """The keys of every tenant, in the event store's database, through its own pool."""

    def __init__(
        self, datastore: PostgresDatastore | SQLiteDatastore, ttl_s: float, lease_s: float
    ) -> None:
        self.datastore = datastore
        self.ttl_s = ttl_s
        self.lease_s = lease_s
        self.table, self._mark, blob = _dialect(datastore)
        self._purged_at = 0.0
        with self._transaction() as cursor:
            cursor.execute(_CREATE.format(table=self.table, blob=blob))
            cursor.execute(
                f"CREATE INDEX IF NOT EXISTS {TABLE}_expiry ON {self.table} (expires_at)"
            )

    def claim(self, tenant: str, key: str, fingerprint: str) -> Lookup:
        """Takes the key for a request, or says why not: what a repeat is answered."""
        now = time.time()
        self._purge(now)
        owner = secrets.token_hex(16)
        claim = Claim(tenant, key, owner)
        for _ in range(3):  # the key may be released between the insert and the read
            with self._transaction() as cursor:
                self._execute(
                    cursor,
                    f"INSERT INTO {self.table} (tenant, idempotency_key, fingerprint, owner, "
                    "started_at, expires_at) VALUES (%s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (tenant, idempotency_key) DO NOTHING RETURNING owner",
                    (tenant, key, fingerprint, owner, now, now + self.ttl_s),
                )
                if cursor.fetchone() is not None:
                    return Lookup(Found.NEW, claim)
                self._execute(cursor, f"SELECT * FROM {self.table} WHERE {_WHERE}", (tenant, key))
                row = cursor.fetchone()
                if row is None:
                    continue
                lookup = self._verdict(row, fingerprint, now)
                if lookup is not None:
                    return lookup
                # Expired, or held by a request that neither wrote nor answered within the
                # lease: taken over, if no one else took it meanwhile.
                self._execute(
                    cursor,
                    f"UPDATE {self.table} SET fingerprint = %s, owner = %s, wrote = FALSE, "
                    "answered = FALSE, status = NULL, headers = NULL, body = NULL, "
                    f"started_at = %s, expires_at = %s WHERE {_WHERE} AND owner = %s "
                    "AND (expires_at <= %s OR NOT (wrote OR answered)) RETURNING owner",
                    (fingerprint, owner, now, now + self.ttl_s, tenant, key, row["owner"], now),
                )
                taken = cursor.fetchone() is not None
            return Lookup(Found.NEW, claim) if taken else Lookup(Found.RUNNING)
        return Lookup(Found.RUNNING)

    def _verdict(self, row: Any, fingerprint: str, now: float) -> Lookup | None:
        """What a repeat is told, or None when the key may be taken over."""
        if row["expires_at"] <= now:
            return None
        if row["fingerprint"] != fingerprint:
            return Lookup(Found.OTHER_REQUEST)
        if row["answered"]:
            if row["status"] is None:
                return Lookup(Found.UNANSWERED)
            headers = [(name, value) for name, value in json.loads(row["headers"])]
            return Lookup(Found.ANSWERED, answer=Answer(row["status"], headers, bytes(row["body"])))
        if row["started_at"] + self.lease_s > now:
            return Lookup(Found.RUNNING)
        return Lookup(Found.UNANSWERED) if row["wrote"] else None

    def settle(self, claim: Claim, answer: Answer | None) -> None:
        """The request has answered. A success is kept, and so is any answer of a request that
        wrote; `None` (no answer worth giving again: the outcome is unknown) keeps only that the
        request wrote, if it did. A request that wrote nothing and did not succeed gives the key
        up: a repeat is carried out afresh."""
        now = time.time()
        where = f"{_WHERE} AND owner = %s AND NOT answered"
        mine = (claim.tenant, claim.key, claim.owner)
        with self._transaction() as cursor:
            if answer is None:
                self._execute(
                    cursor,
                    f"UPDATE {self.table} SET answered = TRUE, expires_at = %s "
                    f"WHERE {where} AND wrote",
                    (now + self.ttl_s, *mine),
                )
            else:
                self._execute(
                    cursor,
                    f"UPDATE {self.table} SET answered = TRUE, status = %s, headers = %s, "
                    f"body = %s, expires_at = %s WHERE {where} AND (wrote OR %s)",
                    (
                        answer.status,
                        json.dumps(answer.headers),
                        answer.body,
                        now + self.ttl_s,
                        *mine,
                        200 <= answer.status < 300,
                    ),
                )
            self._execute(cursor, f"DELETE FROM {self.table} WHERE {where} AND NOT wrote", mine)

    def _purge(self, now: float) -> None:
        """Deletes expired keys, at most once a minute per process."""
        if now - self._purged_at < PURGE_EVERY_S:
            return
        self._purged_at = now
        with self._transaction() as cursor:
            self._execute(cursor, f"DELETE FROM {self.table} WHERE expires_at <= %s", (now,))

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self.datastore.transaction(commit=True) as cursor:
            yield cursor

    def _execute(self, cursor: Any, statement: str, params: Sequence[Any]) -> None:
        cursor.execute(statement.replace("%s", self._mark), params)


def open_idempotency(
    recorder: ApplicationRecorder, ttl_s: float, lease_s: float
) -> IdempotencyKeys:
    """The keys beside the events `recorder` writes (a SQLite file or PostgreSQL)."""
    datastore = getattr(recorder, "datastore", None)
    if not isinstance(datastore, PostgresDatastore | SQLiteDatastore):
        raise ValueError("Idempotency keys are kept beside events in SQLite or PostgreSQL")
    return IdempotencyKeys(datastore, ttl_s, lease_s)


def fenced_recorder_topic(env: dict[str, str]) -> str:
    """`APPLICATION_RECORDER_TOPIC` for the event store that eventsourcing settings `env` name."""
    if env.get("PERSISTENCE_MODULE") == "eventsourcing.postgres":
        return construct_topic(FencedPostgresRecorder)
    return construct_topic(FencedSQLiteRecorder)


def fence(cursor: Any, table: str, mark: str) -> None:
    """In the transaction that writes a request's events: marks that the request holding the
    key wrote, or refuses the write when the key is no longer this request's."""
    claim = CLAIM.get()
    if claim is None:
        return
    cursor.execute(
        f"UPDATE {table} SET wrote = TRUE WHERE {_WHERE} AND owner = %s AND NOT answered "
        "RETURNING owner".replace("%s", mark),
        (claim.tenant, claim.key, claim.owner),
    )
    if cursor.fetchone() is None:
        raise ClaimLost(f"a repeat of this request took its Idempotency-Key {claim.key!r} over")


class FencedPostgresRecorder(PostgresApplicationRecorder):
    """The library's recorder, with `fence` first in the insert's transaction (the library's
    hook for writing other rows with the events: `_insert_events`, before the table lock)."""

    def _insert_events(
        self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        fence(curs, _dialect(self.datastore)[0], "%s")
        super()._insert_events(curs, stored_events, **kwargs)


class FencedSQLiteRecorder(SQLiteApplicationRecorder):
    """The same for SQLite (`_insert_events` runs inside the insert's transaction)."""

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        fence(c, TABLE, "?")
        return super()._insert_events(c, stored_events, **kwargs)


def _dialect(datastore: PostgresDatastore | SQLiteDatastore) -> tuple[str, str, str]:
    """The table's qualified name, the placeholder and the bytes type, for the datastore."""
    if isinstance(datastore, PostgresDatastore):
        return f'"{datastore.schema}".{TABLE}', "%s", "BYTEA"
    return TABLE, "?", "BLOB"
