"""The memory index: every live memory source of every instance, searchable by meaning and words.

Sources: memory snippets (Memory aggregates), conversation messages, and the instance's memory
text (split into paragraphs). For each source the index keeps a row in SQL (text, metadata, its
vector, BM25 postings) beside the event store, and the vector in the instance's Chroma collection,
which finds the nearest.

Each batch of events is planned (`memory_plan`), applied to Chroma first (idempotent: ids are the
sources' ids, upserts carry the final state, deletes are by id), then to SQL (`memory_writes`) in
one transaction together with the new positions of its partitions, fenced. A crash between the
two re-delivers the batch, which then changes nothing. Chroma takes no fence: a worker that
lost its partitions does not start a Chroma write once it knows, and one paused inside a
write can only leave a vector its successor's replay wrote the same way, or one that search
passes over, as every hit is read from SQL (README, scaling out). Reading is `memory_search`'s.

Everything is stamped with a generation. A rebuild fills generation N+1 beside N while N keeps
serving, then switches the pointer and drops N.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import groupby
from typing import Any
from uuid import UUID

from alma.embeddings import Embedder, Interrupted
from alma.projections import memory_writes
from alma.projections.memory_docs import Doc, moment, stored
from alma.projections.memory_plan import Plan, plan
from alma.projections.memory_schema import (
    GENERATION_TABLES,
    add_vectors,
    prepare,
    undated,
    unstored,
)
from alma.projections.memory_search import MemorySearch
from alma.projections.partitions import Fenced, PartitionTable, Progress, Stopped
from alma.projections.ranking import Weights
from alma.projections.sql_model import commit
from alma.projections.vectors import VectorIndex, described
from alma.stores.sql import SqlStore

NAME = "memory-index"
# Texts go to the embedder this many at a time, which it sorts by length into batches that pad
# little (README, memory index).
EMBED_GROUP = 4_096
# Vectors read from Chroma at a time when an earlier version's index gets its vectors copied.
_COPY_AT_ONCE = 1_000


class MemoryIndex(MemorySearch):
    """Keeps the index up to date: plans each batch, embeds it into Chroma, writes it to SQL,
    and fills new generations for a rebuild. Reading it is `MemorySearch`'s."""

    name = NAME

    def __init__(
        self,
        store: SqlStore,
        vectors: VectorIndex,
        embedder: Embedder,
        weights: Weights | None = None,
        pinned_generation: int | None = None,
    ) -> None:
        super().__init__(store, vectors, embedder, weights, pinned_generation)
        if undated(store):
            self._date_vectors()
        prepare(store)
        if unstored(store):
            self._store_vectors()

    def _date_vectors(self) -> None:
        """Gives the vectors of an index an earlier version wrote the time each source happened,
        which a search within a period filters by. Done before `prepare` brings the tables up
        to date, so a crash in between does it again; nothing is embedded again."""
        rows = self.store.query(
            "SELECT generation, instance_id, doc_id, kind, position, occurred_at FROM memory_docs "
            "ORDER BY generation, instance_id"
        )
        for (generation, instance_id), group in groupby(rows, key=lambda row: row[:2]):
            docs = list(group)
            self.vectors.describe(
                int(generation),
                UUID(str(instance_id)),
                [str(row[2]) for row in docs],
                [described(str(row[3]), int(row[4]), moment(row[5])) for row in docs],
            )

    def _store_vectors(self) -> None:
        """Copies, from Chroma, the vectors of the documents of an index an earlier version wrote
        into the column it adds, in one transaction: a crash leaves the index without the column,
        to be done again. A document whose vector Chroma lacks keeps none (a search gives it no
        dense score, as it did)."""
        rows = self.store.query(
            "SELECT generation, instance_id, doc_id FROM memory_docs "
            "ORDER BY generation, instance_id"
        )
        with self.store.transaction() as cursor:
            cursor.execute(add_vectors(self.store.dialect))
            for (generation, instance_id), group in groupby(rows, key=lambda row: row[:2]):
                ids = [str(row[2]) for row in group]
                for start in range(0, len(ids), _COPY_AT_ONCE):
                    found = self.vectors.vectors(
                        int(generation), UUID(str(instance_id)), ids[start : start + _COPY_AT_ONCE]
                    )
                    cursor.executemany(
                        "UPDATE memory_docs SET vector = %s WHERE generation = %s AND doc_id = %s",
                        [(stored(v), generation, doc_id) for doc_id, v in found.items()],
                    )

    # Following the log

    def key(self) -> str:
        return _key(self.generation)

    def start(self) -> int:
        """0, or where an index written before partitions had got to in this generation."""
        rows = self.store.query(
            "SELECT position FROM memory_positions WHERE generation = %s", (self.generation,)
        )
        return int(rows[0][0]) if rows else 0

    def process(self, batch: Sequence[tuple[Any, int]], progress: Progress) -> None:
        planned = plan(self.store, _generation(progress.key), batch)
        if not progress.held():
            raise Fenced(f"{progress.key}: this worker lost its partitions")
        self._apply_vectors(planned, progress)
        commit(self.store, lambda cursor: memory_writes.write(cursor, planned), progress)

    def _apply_vectors(self, plan: Plan, progress: Progress) -> None:
        generation = plan.generation
        for instance_id in plan.dropped:
            self.vectors.drop_instance(generation, instance_id)
        live = sorted(
            (d for d in plan.docs.values() if d.instance_id not in plan.dropped),
            key=lambda d: d.instance_id.int,
        )
        # A Chroma write runs beside the embedding of the next texts: an instance's vectors are
        # written as soon as they are all embedded.
        size = EMBED_GROUP
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="chroma-write") as writer:
            writes: list[Future[None]] = []
            vectors: list[list[float]] = []
            written = 0
            for start in range(0, len(live), size):
                chunk = live[start : start + size]
                texts = [doc.indexed_text() for doc in chunk]
                try:
                    embedded = self.embedder.encode(texts, progress.stopping)
                except Interrupted as stop:
                    raise Stopped(f"{progress.key}: stopped with the batch half embedded") from stop
                plan.vectors.update(
                    (doc.doc_id, stored(vector))
                    for doc, vector in zip(chunk, embedded, strict=True)
                )
                vectors += embedded
                ready = _complete_prefix(live, len(vectors))
                for first, last in _instance_runs(live, written, ready):
                    writes.append(
                        writer.submit(
                            self._upsert, generation, live[first:last], vectors[first:last]
                        )
                    )
                written = ready
            for write in writes:
                write.result()
        gone: dict[UUID, list[str]] = {}
        for doc_id, instance_id in plan.gone.items():
            if instance_id not in plan.dropped:
                gone.setdefault(instance_id, []).append(doc_id)
        for instance_id, ids in gone.items():
            self.vectors.delete(generation, instance_id, ids)

    def _upsert(self, generation: int, docs: list[Doc], vectors: list[list[float]]) -> None:
        self.vectors.upsert(
            generation,
            docs[0].instance_id,
            [doc.doc_id for doc in docs],
            vectors,
            [described(doc.kind, doc.position, doc.occurred_at) for doc in docs],
        )

    # Rebuilding

    def generations(self) -> list[int]:
        rows = self.store.query("SELECT generation FROM memory_positions")
        keys = PartitionTable(self.store).keys(NAME + "/")
        return sorted({int(r[0]) for r in rows} | {_generation(key) for key in keys})

    def switch_to(self, generation: int) -> int:
        """Point readers and followers at `generation`; returns the one it replaced."""
        previous = self.generation
        with self.store.transaction() as cursor:
            cursor.execute(
                "UPDATE memory_generation SET generation = %s WHERE id = 1", (generation,)
            )
        return previous

    def drop(self, generation: int) -> None:
        self.vectors.drop_generation(generation)
        with self.store.transaction() as cursor:
            for table in GENERATION_TABLES:
                cursor.execute(f"DELETE FROM {table} WHERE generation = %s", (generation,))
        PartitionTable(self.store).clear(_key(generation))


def _key(generation: int) -> str:
    """The name of a generation's partitions."""
    return f"{NAME}/{generation}"


def _generation(key: str) -> int:
    return int(key.rpartition("/")[2])


def _complete_prefix(docs: list[Doc], embedded: int) -> int:
    """How many of `docs` (sorted by instance) are embedded with all of their instance's."""
    ready = embedded
    while 0 < ready < len(docs) and docs[ready - 1].instance_id == docs[ready].instance_id:
        ready -= 1
    return ready


def _instance_runs(docs: list[Doc], start: int, stop: int) -> Iterator[tuple[int, int]]:
    """The (first, end) ranges of `docs[start:stop]` that share an instance."""
    first = start
    for i in range(start + 1, stop + 1):
        if i == stop or docs[i].instance_id != docs[first].instance_id:
            yield first, i
            first = i
