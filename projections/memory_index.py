"""The memory index: every live memory source of every instance, searchable by meaning and words.

Sources: memory snippets (Memory aggregates), conversation messages, and the instance's memory
text (split into paragraphs). For each source the index keeps a row in SQL (text, metadata, BM25
postings) beside the event store, and a vector in the instance's Chroma collection.

Each batch of events is applied to Chroma first (idempotent: ids are the sources' ids, upserts
carry the final state), then to SQL in one transaction together with the new position. A crash
between the two re-delivers the batch, which then changes nothing.

Everything is stamped with a generation. A rebuild fills generation N+1 beside N while N keeps
serving, then switches the pointer and drops N.
"""

from __future__ import annotations

import heapq
import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid5

import numpy as np

from alma.domain import Instance, Memory
from alma.embeddings import Embedder
from alma.projections.ranking import Candidate, Weights, bm25_idf, fuse, term_counts, terms
from alma.projections.vectors import VectorIndex
from alma.stores.sql import Cursor, SqlStore

NAME = "memory-index"
_PER_INSTANCE = (
    "memory_docs",
    "memory_words",
    "memory_texts",
    "memory_stats",
    "memory_terms",
)
_DOC_COLUMNS = (
    "doc_id, tenant, instance_id, kind, text, metadata, importance, occurred_at, position"
)
CANDIDATES = 50
_K1, _B = 1.2, 0.75
# BM25 reads the postings of the query's rarest words up to this many rows: the common words
# left out weigh little (low IDF), and a search stays fast in an instance of 100,000 sources.
POSTINGS_BUDGET = 2_000
_IN_LIST = 500  # ids per DELETE ... IN (...)
# Texts go to the embedder this many at a time. It sorts them by length into batches that pad
# little, so big groups index faster than one batch at a time (bench/memory.py; README, memory
# index).
EMBED_GROUP = 4_096
_ADD_STATS = (
    "INSERT INTO memory_stats (generation, instance_id, documents, length) "
    "VALUES (%s, %s, %s, %s) ON CONFLICT (generation, instance_id) DO UPDATE SET "
    "documents = memory_stats.documents + excluded.documents, "
    "length = memory_stats.length + excluded.length"
)
_ADD_TERMS = (
    "INSERT INTO memory_terms (generation, instance_id, term, documents) "
    "VALUES (%s, %s, %s, %s) ON CONFLICT (generation, instance_id, term) DO UPDATE SET "
    "documents = memory_terms.documents + excluded.documents"
)
# An index written before the statistics existed gets them counted once, when opened.
_COUNT_STATS = [
    "DELETE FROM memory_stats",
    "INSERT INTO memory_stats (generation, instance_id, documents, length) "
    "SELECT generation, instance_id, COUNT(*), SUM(length) FROM memory_docs "
    "GROUP BY generation, instance_id",
    "INSERT INTO memory_terms (generation, instance_id, term, documents) "
    "SELECT generation, instance_id, term, COUNT(*) FROM memory_words "
    "GROUP BY generation, instance_id, term",
]

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS memory_generation (
        id INTEGER PRIMARY KEY, generation INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS memory_positions (
        generation INTEGER PRIMARY KEY, position BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS memory_docs (
        generation INTEGER NOT NULL, doc_id TEXT NOT NULL, tenant TEXT NOT NULL,
        instance_id TEXT NOT NULL, kind TEXT NOT NULL, text TEXT NOT NULL,
        metadata TEXT NOT NULL, importance REAL NOT NULL, occurred_at TEXT NOT NULL,
        position BIGINT NOT NULL, length INTEGER NOT NULL,
        PRIMARY KEY (generation, doc_id))""",
    """CREATE INDEX IF NOT EXISTS memory_docs_by_instance
        ON memory_docs (generation, instance_id, kind, position)""",
    # BM25's postings: per instance and word, each source holding it, how often, and the
    # source's length. A search reads a word's rows in key order and nothing else: on SQLite the
    # table is its key (WITHOUT ROWID), on PostgreSQL the key's index carries tf and length.
    # (Joining memory_docs for the length instead made bench/memory.py's bm25 step several times
    # slower in one instance of 100,000 sources.)
    """CREATE TABLE IF NOT EXISTS memory_words (
        generation INTEGER NOT NULL, instance_id TEXT NOT NULL, term TEXT NOT NULL,
        doc_id TEXT NOT NULL, tf INTEGER NOT NULL, length INTEGER NOT NULL,
        PRIMARY KEY (generation, instance_id, term, doc_id){covering}""",
    # Replacing or deleting one source finds its postings without scanning the generation.
    """CREATE INDEX IF NOT EXISTS memory_words_by_doc ON memory_words (generation, doc_id)""",
    # BM25's statistics, kept up to date so a search never counts: per instance, how many
    # documents and their total length; per instance and word, how many documents hold it.
    """CREATE TABLE IF NOT EXISTS memory_stats (
        generation INTEGER NOT NULL, instance_id TEXT NOT NULL, documents BIGINT NOT NULL,
        length BIGINT NOT NULL, PRIMARY KEY (generation, instance_id))""",
    """CREATE TABLE IF NOT EXISTS memory_terms (
        generation INTEGER NOT NULL, instance_id TEXT NOT NULL, term TEXT NOT NULL,
        documents BIGINT NOT NULL, PRIMARY KEY (generation, instance_id, term))""",
    """CREATE TABLE IF NOT EXISTS memory_texts (
        generation INTEGER NOT NULL, instance_id TEXT NOT NULL, text TEXT NOT NULL,
        PRIMARY KEY (generation, instance_id))""",
    """CREATE TABLE IF NOT EXISTS memory_audit (
        generation INTEGER NOT NULL, instance_id TEXT NOT NULL, position BIGINT NOT NULL,
        version INTEGER NOT NULL, timestamp TEXT NOT NULL, actor TEXT NOT NULL,
        kind TEXT NOT NULL, memory_id TEXT, before TEXT NOT NULL, after TEXT NOT NULL,
        source TEXT, PRIMARY KEY (generation, instance_id, position))""",
]
_COVERING = {"sqlite": ") WITHOUT ROWID", "postgresql": " INCLUDE (tf, length))"}
# Indexes written before memory_words kept their postings without the length.
_MOVE_POSTINGS = [
    "INSERT INTO memory_words (generation, instance_id, term, doc_id, tf, length) "
    "SELECT p.generation, p.instance_id, p.term, p.doc_id, p.tf, d.length "
    "FROM memory_postings p JOIN memory_docs d "
    "ON d.generation = p.generation AND d.doc_id = p.doc_id",
    "DROP TABLE memory_postings",
]


def schema(dialect: str) -> list[str]:
    return [statement.replace("{covering}", _COVERING[dialect]) for statement in _SCHEMA]


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
    occurred_at: datetime
    position: int

    def indexed_text(self) -> str:
        """What is embedded and counted. Prefixing the date cost recall@5 on
        our data set (tests/data/recall), so the text goes in alone."""
        return self.text


@dataclass(frozen=True)
class AuditEntry:
    instance_id: UUID
    position: int
    version: int
    timestamp: datetime
    actor: dict[str, str] | None
    kind: str
    memory_id: UUID | None
    before: str
    after: str
    source: dict[str, Any] | None  # the memory's provenance, as its event recorded it


@dataclass(frozen=True)
class Hit:
    doc: Doc
    score: float


@dataclass
class _Batch:
    """What one batch of events changes, with the state it has seen so far."""

    docs: dict[str, Doc] = field(default_factory=dict)
    gone: dict[str, UUID] = field(default_factory=dict)  # doc id -> its instance
    texts: dict[UUID, str | None] = field(default_factory=dict)
    stored_texts: dict[UUID, str | None] = field(default_factory=dict)  # read from SQL
    dropped: set[UUID] = field(default_factory=set)
    erased: set[UUID] = field(default_factory=set)  # dropped, and their audit too
    audit: list[AuditEntry] = field(default_factory=list)

    def put(self, doc: Doc) -> None:
        self.gone.pop(doc.doc_id, None)
        self.docs[doc.doc_id] = doc

    def remove(self, doc_id: str, instance_id: UUID) -> None:
        self.docs.pop(doc_id, None)
        self.gone[doc_id] = instance_id


def chunks(text: str, limit: int = 800) -> list[str]:
    """Paragraphs of the memory text, long ones cut at word boundaries."""
    pieces = []
    for paragraph in re.split(r"\n\s*\n", text):
        words, current = paragraph.split(), ""
        for word in words:
            if current and len(current) + 1 + len(word) > limit:
                pieces.append(current)
                current = word
            else:
                current = f"{current} {word}" if current else word
        if current:
            pieces.append(current)
    return pieces


def _text_chunk_id(instance_id: UUID, n: int) -> str:
    return str(uuid5(instance_id, f"memory-text/{n}"))


class MemoryIndex:
    name = NAME

    def __init__(
        self,
        store: SqlStore,
        vectors: VectorIndex,
        embedder: Embedder,
        weights: Weights | None = None,
        pinned_generation: int | None = None,
    ) -> None:
        self.store = store
        self.vectors = vectors
        self.embedder = embedder
        self.weights = weights or Weights()
        self.pinned_generation = pinned_generation
        # A search scores BM25 in this pool while it embeds the query and asks Chroma. SQLite,
        # onnxruntime and Chroma all work outside Python's GIL, so a search takes about the longer
        # of the two rather than their sum.
        self._lexical = ThreadPoolExecutor(thread_name_prefix="bm25")
        # What an index written by an earlier version lacks, seen before the schema is made.
        move_postings = store.has_table("memory_postings")
        add_source = store.has_table("memory_audit") and not store.has_column(
            "memory_audit", "source"
        )
        with store.transaction() as cursor:
            for statement in schema(store.dialect):
                cursor.execute(statement)
            if move_postings:
                for statement in _MOVE_POSTINGS:
                    cursor.execute(statement)
            if add_source:
                # Entries from before keep no source; a rebuild reads it from their events.
                cursor.execute("ALTER TABLE memory_audit ADD COLUMN source TEXT")
            cursor.execute(
                "INSERT INTO memory_generation (id, generation) VALUES (1, 1) "
                "ON CONFLICT (id) DO NOTHING"
            )
            cursor.execute("SELECT 1 FROM memory_terms LIMIT 1")
            if cursor.fetchone() is None:
                for statement in _COUNT_STATS:
                    cursor.execute(statement)

    def close(self) -> None:
        self._lexical.shutdown()
        self.store.close()

    # Following the log

    @property
    def generation(self) -> int:
        if self.pinned_generation is not None:
            return self.pinned_generation
        return int(self.store.query("SELECT generation FROM memory_generation WHERE id = 1")[0][0])

    def position(self) -> int:
        rows = self.store.query(
            "SELECT position FROM memory_positions WHERE generation = %s", (self.generation,)
        )
        return int(rows[0][0]) if rows else 0

    def process(self, batch: Sequence[tuple[Any, int]]) -> None:
        generation = self.generation
        plan = _Batch()
        for domain_event, position in batch:
            self._plan(generation, plan, domain_event, position)
        self._apply_vectors(generation, plan)
        position = batch[-1][1]
        with self.store.transaction() as cursor:
            self._apply_sql(cursor, generation, plan)
            if not plan.erased:
                _advance(cursor, generation, position)
        if plan.erased:
            # The store's log loses the erased text before the position says the batch is done,
            # so whoever waits for the erasure finds no trace. A crash in between redelivers the
            # batch, which then changes nothing.
            self.store.wipe()
            with self.store.transaction() as cursor:
                _advance(cursor, generation, position)

    def _plan(self, generation: int, plan: _Batch, event: Any, position: int) -> None:
        kind = type(event)
        if kind in (Instance.Created, Instance.MemoryRewritten):
            instance_id = event.originator_id
            before = self._text(generation, plan, instance_id)
            if before is None and kind is Instance.MemoryRewritten:
                return  # the instance was deleted
            old, new = chunks(before or ""), chunks(event.memory)
            for n in range(len(new), len(old)):
                plan.remove(_text_chunk_id(instance_id, n), instance_id)
            for n, piece in enumerate(new):
                plan.put(
                    Doc(
                        _text_chunk_id(instance_id, n),
                        event.actor.tenant,
                        instance_id,
                        "memory_text",
                        piece,
                        {},
                        0.5,
                        event.timestamp,
                        position,
                    )
                )
            plan.texts[instance_id] = event.memory
            self._audit(
                plan, event, position, instance_id, "memory_text", None, before or "", event.memory
            )
        elif kind in (Instance.MessageRecorded, Instance.ReplyRecorded):
            instance_id = event.originator_id
            if self._text(generation, plan, instance_id) is not None:
                replied = kind is Instance.ReplyRecorded
                plan.put(
                    Doc(
                        str(event.message_id),
                        event.actor.tenant,
                        instance_id,
                        "message",
                        event.content,
                        {"role": "assistant", "model": event.model}
                        if replied
                        else {**event.metadata, "role": event.role},
                        0.5,
                        event.timestamp if replied else event.sent_at,
                        position,
                    )
                )
        elif kind in (Instance.Archived, Instance.Erased):
            instance_id = event.originator_id
            if kind is Instance.Erased:
                plan.erased.add(instance_id)
            plan.texts[instance_id] = None
            plan.dropped.add(instance_id)
            for doc in [d for d in plan.docs.values() if d.instance_id == instance_id]:
                plan.remove(doc.doc_id, instance_id)
        elif kind in (Memory.Added, Memory.Revised):
            doc_id = str(event.originator_id)
            # An added memory is new: a batch is redelivered only if its SQL was not committed.
            old_doc = None if kind is Memory.Added else self._doc(generation, plan, doc_id)
            if kind is Memory.Added:
                instance_id, created = event.instance_id, event.timestamp
            elif old_doc is not None:
                instance_id, created = old_doc.instance_id, old_doc.occurred_at
            else:
                return  # its instance was deleted
            if self._text(generation, plan, instance_id) is None:
                return
            plan.put(
                Doc(
                    doc_id,
                    event.actor.tenant,
                    instance_id,
                    "memory",
                    event.text,
                    dict(event.metadata),
                    event.importance,
                    created,
                    old_doc.position if old_doc else position,
                )
            )
            change = "memory_added" if kind is Memory.Added else "memory_revised"
            self._audit(
                plan,
                event,
                position,
                instance_id,
                change,
                event.originator_id,
                old_doc.text if old_doc else "",
                event.text,
            )
        elif kind is Memory.Forgotten:
            doc_id = str(event.originator_id)
            old_doc = self._doc(generation, plan, doc_id)
            if old_doc is not None:
                plan.remove(doc_id, old_doc.instance_id)
                self._audit(
                    plan,
                    event,
                    position,
                    old_doc.instance_id,
                    "memory_forgotten",
                    event.originator_id,
                    old_doc.text,
                    "",
                )

    @staticmethod
    def _audit(
        plan: _Batch,
        event: Any,
        position: int,
        instance_id: UUID,
        kind: str,
        memory_id: UUID | None,
        before: str,
        after: str,
    ) -> None:
        actor = getattr(event, "actor", None)
        plan.audit.append(
            AuditEntry(
                instance_id,
                position,
                event.originator_version,
                event.timestamp,
                actor.as_dict() if actor is not None else None,
                kind,
                memory_id,
                before,
                after,
                getattr(event, "source", None),
            )
        )

    def _text(self, generation: int, plan: _Batch, instance_id: UUID) -> str | None:
        """The instance's memory text; None once deleted, and before it exists."""
        if instance_id in plan.texts:
            return plan.texts[instance_id]
        if instance_id not in plan.stored_texts:
            rows = self.store.query(
                "SELECT text FROM memory_texts WHERE generation = %s AND instance_id = %s",
                (generation, str(instance_id)),
            )
            plan.stored_texts[instance_id] = str(rows[0][0]) if rows else None
        return plan.stored_texts[instance_id]

    def _doc(self, generation: int, plan: _Batch, doc_id: str) -> Doc | None:
        if doc_id in plan.docs or doc_id in plan.gone:
            return plan.docs.get(doc_id)
        found = self.documents(generation, [doc_id])
        return found.get(doc_id)

    def _apply_vectors(self, generation: int, plan: _Batch) -> None:
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
                vectors += self.embedder.encode([doc.indexed_text() for doc in chunk])
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
            [{"kind": doc.kind, "position": doc.position} for doc in docs],
        )

    def _apply_sql(self, cursor: Cursor, generation: int, plan: _Batch) -> None:
        for instance_id in plan.erased:
            cursor.execute(
                "DELETE FROM memory_audit WHERE generation = %s AND instance_id = %s",
                (generation, str(instance_id)),
            )
        for instance_id in plan.dropped:
            for table in _PER_INSTANCE:
                cursor.execute(
                    f"DELETE FROM {table} WHERE generation = %s AND instance_id = %s",
                    (generation, str(instance_id)),
                )
        documents: Counter[str] = Counter()  # instance -> change in documents
        lengths: Counter[str] = Counter()  # instance -> change in total length
        holding: Counter[tuple[str, str]] = Counter()  # (instance, word) -> change in documents
        replaced = [*plan.gone, *plan.docs]
        for start in range(0, len(replaced), _IN_LIST):
            ids = replaced[start : start + _IN_LIST]
            marks = ", ".join(["%s"] * len(ids))
            cursor.execute(
                f"DELETE FROM memory_docs WHERE generation = %s AND doc_id IN ({marks}) "
                "RETURNING instance_id, length",
                (generation, *ids),
            )
            for instance_id, length in cursor.fetchall():
                documents[instance_id] -= 1
                lengths[instance_id] -= int(length)
            cursor.execute(
                f"DELETE FROM memory_words WHERE generation = %s AND doc_id IN ({marks}) "
                "RETURNING instance_id, term",
                (generation, *ids),
            )
            for instance_id, term in cursor.fetchall():
                holding[instance_id, term] -= 1
        rows, postings = [], []
        for doc_id, doc in plan.docs.items():
            if doc.instance_id in plan.dropped:
                continue
            counts = term_counts(doc.indexed_text())
            instance, length = str(doc.instance_id), sum(counts.values())
            documents[instance] += 1
            lengths[instance] += length
            holding.update({(instance, term): 1 for term in counts})
            rows.append(
                (
                    generation,
                    doc_id,
                    doc.tenant,
                    instance,
                    doc.kind,
                    doc.text,
                    json.dumps(doc.metadata, ensure_ascii=False),
                    doc.importance,
                    doc.occurred_at.isoformat(),
                    doc.position,
                    length,
                )
            )
            postings += [(generation, instance, t, doc_id, n, length) for t, n in counts.items()]
        cursor.executemany(
            "INSERT INTO memory_docs (generation, doc_id, tenant, instance_id, kind, text, "
            "metadata, importance, occurred_at, position, length) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )
        cursor.executemany(
            "INSERT INTO memory_words (generation, instance_id, term, doc_id, tf, length) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            postings,
        )
        for instance_id, text in plan.texts.items():
            if text is not None:
                cursor.execute(
                    "INSERT INTO memory_texts (generation, instance_id, text) VALUES (%s, %s, %s) "
                    "ON CONFLICT (generation, instance_id) DO UPDATE SET text = excluded.text",
                    (generation, str(instance_id), text),
                )
        cursor.executemany(
            _ADD_STATS,
            [(generation, i, n, lengths[i]) for i, n in documents.items() if n or lengths[i]],
        )
        cursor.executemany(
            _ADD_TERMS, [(generation, i, term, n) for (i, term), n in holding.items() if n]
        )
        for entry in plan.audit:
            cursor.execute(
                "INSERT INTO memory_audit (generation, instance_id, position, version, timestamp, "
                "actor, kind, memory_id, before, after, source) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (generation, instance_id, position) DO NOTHING",
                (
                    generation,
                    str(entry.instance_id),
                    entry.position,
                    entry.version,
                    entry.timestamp.isoformat(),
                    json.dumps(entry.actor),
                    entry.kind,
                    str(entry.memory_id) if entry.memory_id else None,
                    entry.before,
                    entry.after,
                    None if entry.source is None else json.dumps(entry.source),
                ),
            )

    # Reading

    def documents(self, generation: int, doc_ids: Sequence[str]) -> dict[str, Doc]:
        if not doc_ids:
            return {}
        marks = ", ".join(["%s"] * len(doc_ids))
        rows = self.store.query(
            f"SELECT {_DOC_COLUMNS} FROM memory_docs WHERE generation = %s AND doc_id IN ({marks})",
            (generation, *doc_ids),
        )
        return {row[0]: _doc_of(row) for row in rows}

    def memories(self, instance_id: UUID, after: int, limit: int) -> list[Doc]:
        """The instance's live memory snippets, oldest first."""
        return self._kind(instance_id, "memory", after, limit)

    def messages(self, instance_id: UUID, after: int, limit: int) -> list[Doc]:
        """The instance's conversation, oldest first."""
        return self._kind(instance_id, "message", after, limit)

    def recent_messages(self, instance_id: UUID, limit: int) -> list[Doc]:
        """The last `limit` messages of the conversation, oldest first."""
        rows = self.store.query(
            f"SELECT {_DOC_COLUMNS} FROM memory_docs WHERE generation = %s AND instance_id = %s "
            "AND kind = 'message' ORDER BY position DESC LIMIT %s",
            (self.generation, str(instance_id), limit),
        )
        return [_doc_of(row) for row in reversed(rows)]

    def _kind(self, instance_id: UUID, kind: str, after: int, limit: int) -> list[Doc]:
        rows = self.store.query(
            f"SELECT {_DOC_COLUMNS} FROM memory_docs WHERE generation = %s AND instance_id = %s "
            "AND kind = %s AND position > %s ORDER BY position LIMIT %s",
            (self.generation, str(instance_id), kind, after, limit),
        )
        return [_doc_of(row) for row in rows]

    def audit(self, instance_id: UUID, after: int, limit: int) -> list[AuditEntry]:
        rows = self.store.query(
            "SELECT position, version, timestamp, actor, kind, memory_id, before, after, source "
            "FROM memory_audit WHERE generation = %s AND instance_id = %s AND position > %s "
            "ORDER BY position LIMIT %s",
            (self.generation, str(instance_id), after, limit),
        )
        return [
            AuditEntry(
                instance_id,
                int(r[0]),
                int(r[1]),
                datetime.fromisoformat(r[2]),
                json.loads(r[3]),
                r[4],
                UUID(r[5]) if r[5] else None,
                r[6],
                r[7],
                json.loads(r[8]) if r[8] else None,
            )
            for r in rows
        ]

    def search(
        self,
        instance_id: UUID,
        query: str,
        k: int = 10,
        min_score: float = 0.0,
        now: datetime | None = None,
    ) -> list[Hit]:
        generation = self.generation
        scoring = self._lexical.submit(self._bm25, generation, instance_id, query)
        vector = self.embedder.encode_query(query)
        dense = dict(self.vectors.nearest(generation, instance_id, vector, CANDIDATES))
        lexical = dict(scoring.result())
        missing = [doc_id for doc_id in lexical if doc_id not in dense]
        if missing:
            stored = self.vectors.vectors(generation, instance_id, missing)
            query_vector = np.asarray(vector)
            for doc_id, other in stored.items():
                dense[doc_id] = float(np.dot(query_vector, np.asarray(other)))
        docs = self.documents(generation, list(dense.keys() | lexical.keys()))
        candidates = [
            Candidate(d, dense.get(d, 0.0), lexical.get(d, 0.0), doc.occurred_at, doc.importance)
            for d, doc in docs.items()
        ]
        ranked = fuse(candidates, now or datetime.now(UTC), self.weights)
        return [Hit(docs[c.doc_id], score) for c, score in ranked[:k] if score >= min_score]

    def _bm25(self, generation: int, instance_id: UUID, query: str) -> list[tuple[str, float]]:
        words = sorted(set(terms(query)))
        if not words:
            return []
        scope = (generation, str(instance_id))
        stats = self.store.query(
            "SELECT documents, length FROM memory_stats WHERE generation = %s AND instance_id = %s",
            scope,
        )
        if not stats or not stats[0][0]:
            return []
        documents = int(stats[0][0])
        average = int(stats[0][1]) / documents or 1.0
        marks = ", ".join(["%s"] * len(words))
        frequencies = self.store.query(
            "SELECT term, documents FROM memory_terms WHERE generation = %s "
            f"AND instance_id = %s AND documents > 0 AND term IN ({marks})",
            (*scope, *words),
        )
        # Words in over half the documents say little; the rest, rarest first, within budget.
        weights: dict[str, float] = {}
        read = 0
        for term, n in sorted(frequencies, key=lambda row: int(row[1])):
            if int(n) > max(1, documents // 2) or (weights and read + int(n) > POSTINGS_BUDGET):
                break
            weights[str(term)] = bm25_idf(documents, int(n))
            read += int(n)
        if not weights:
            return []
        # The sum is done here, not in SQL: with a GROUP BY, SQLite's planner preferred walking
        # the postings index by document (every posting of the generation) to the word lookups.
        marks = ", ".join(["%s"] * len(weights))
        rows = self.store.query(
            "SELECT doc_id, term, tf, length FROM memory_words "
            f"WHERE generation = %s AND instance_id = %s AND term IN ({marks})",
            (*scope, *weights),
        )
        scores: dict[str, float] = {}
        for doc_id, term, tf, length in rows:
            norm = _K1 * (1 - _B + _B * int(length) / average)
            score = weights[term] * tf * (_K1 + 1) / (tf + norm)
            scores[doc_id] = scores.get(doc_id, 0.0) + score
        return heapq.nlargest(CANDIDATES, scores.items(), key=lambda pair: pair[1])

    # Rebuilding

    def generations(self) -> list[int]:
        rows = self.store.query("SELECT generation FROM memory_positions ORDER BY generation")
        return [int(r[0]) for r in rows]

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
            for table in (
                "memory_docs",
                "memory_words",
                "memory_stats",
                "memory_terms",
                "memory_texts",
                "memory_audit",
                "memory_positions",
            ):
                cursor.execute(f"DELETE FROM {table} WHERE generation = %s", (generation,))


def _advance(cursor: Cursor, generation: int, position: int) -> None:
    cursor.execute(
        "INSERT INTO memory_positions (generation, position) VALUES (%s, %s) "
        "ON CONFLICT (generation) DO UPDATE SET position = excluded.position",
        (generation, position),
    )


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


def _doc_of(row: Sequence[Any]) -> Doc:
    return Doc(
        str(row[0]),
        str(row[1]),
        UUID(str(row[2])),
        str(row[3]),
        str(row[4]),
        json.loads(row[5]),
        float(row[6]),
        datetime.fromisoformat(str(row[7])),
        int(row[8]),
    )
