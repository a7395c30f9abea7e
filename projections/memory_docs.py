"""The memory index's documents: one searchable source as stored in SQL with its vector, and
reading them back; and the period a search keeps them within."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any
from uuid import UUID

import numpy as np

from alma.domain.errors import InvalidInput
from alma.domain.rules import as_utc
from alma.stores.sql import SqlStore

DOC_COLUMNS = (
    "doc_id, tenant, instance_id, kind, text, metadata, importance, occurred_at, position, "
    "speaker, created_at"
)
# The document's columns, then its vector.
VECTOR_COLUMNS = f"{DOC_COLUMNS}, vector"


@dataclass(frozen=True)
class Doc:
    """One searchable source, as stored."""

    doc_id: str
    tenant: str
    instance_id: UUID
    kind: str  # "memory" | "message" | "memory_text"
    text: str
    metadata: dict[str, Any]
    importance: float
    occurred_at: datetime  # when it happened: a snippet's occurred_at, a message's timestamp
    position: int
    speaker: str | None  # who said it: a snippet's speaker, a message's name; None: unknown
    created_at: datetime  # what search answers as created_at: when a snippet was added, else
    # occurred_at (as before sources kept when they happened)

    def indexed_text(self) -> str:
        """What is embedded and counted: the text, after its speaker's name when known, so
        "what did Caroline say about..." finds Caroline's turns. Prefixing the date lost
        recall@5 on our data set (tests/data/recall), so the date stays out."""
        return f"{self.speaker}: {self.text}" if self.speaker else self.text


def documents(store: SqlStore, generation: int, doc_ids: Sequence[str]) -> dict[str, Doc]:
    return {row[0]: doc_of(row) for row in _rows(store, generation, doc_ids, DOC_COLUMNS)}


def documents_and_vectors(
    store: SqlStore, generation: int, doc_ids: Sequence[str]
) -> tuple[dict[str, Doc], dict[str, np.ndarray]]:
    """The documents of `doc_ids` the index holds, and their vectors, in one read."""
    rows = _rows(store, generation, doc_ids, VECTOR_COLUMNS)
    return {row[0]: doc_of(row) for row in rows}, vectors_in(rows)


def vectors(store: SqlStore, generation: int, doc_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """The vectors of the documents of `doc_ids` the index holds."""
    return vectors_in(_rows(store, generation, doc_ids, "doc_id, vector"))


def _rows(
    store: SqlStore, generation: int, doc_ids: Sequence[str], columns: str
) -> list[tuple[Any, ...]]:
    if not doc_ids:
        return []
    marks = ", ".join(["%s"] * len(doc_ids))
    return store.query(
        f"SELECT {columns} FROM memory_docs WHERE generation = %s AND doc_id IN ({marks})",
        (generation, *doc_ids),
    )


def stored(vector: Sequence[float]) -> bytes:
    """A vector as the index keeps it beside its document: the float32 it sends to Chroma."""
    return np.asarray(vector, dtype=np.float32).tobytes()


def vectors_in(rows: Sequence[Sequence[Any]]) -> dict[str, np.ndarray]:
    """The vectors in rows that start with a document's id and end with its stored vector (none
    in an index an earlier version wrote whose vector Chroma lacked)."""
    return {
        str(row[0]): np.frombuffer(row[-1], dtype=np.float32) for row in rows if row[-1] is not None
    }


def doc_of(row: Sequence[Any]) -> Doc:
    """The document in a row of `DOC_COLUMNS`."""
    return Doc(
        str(row[0]),
        str(row[1]),
        _instance(str(row[2])),
        str(row[3]),
        str(row[4]),
        json.loads(row[5]),
        float(row[6]),
        moment(row[7]),
        int(row[8]),
        None if row[9] is None else str(row[9]),
        moment(row[10]),
    )


@lru_cache(maxsize=1024)
def _instance(stored: str) -> UUID:
    """An instance's id, parsed once: a search reads many sources of one instance."""
    return UUID(stored)


def moment(stored: object) -> datetime:
    """A time as the index stores it. One without an offset (a message imported before times
    were kept in UTC) is UTC."""
    return as_utc(datetime.fromisoformat(str(stored)))


@dataclass(frozen=True)
class Period:
    """When sources happened, both bounds included; None leaves that side open."""

    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.since is not None and self.until is not None and self.since > self.until:
            raise InvalidInput(
                f"since ({self.since.isoformat()}) is after until ({self.until.isoformat()})",
                "since",
            )

    def holds(self, when: datetime) -> bool:
        return (self.since is None or self.since <= when) and (
            self.until is None or when <= self.until
        )
