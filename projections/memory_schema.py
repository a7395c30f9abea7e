"""The memory index's SQL tables, and the in-place upgrades of an index an earlier version wrote."""

from __future__ import annotations

from alma.stores.sql import SqlStore

# Every table that holds a generation of the index, dropped together with it.
GENERATION_TABLES = (
    "memory_docs",
    "memory_words",
    "memory_stats",
    "memory_terms",
    "memory_texts",
    "memory_positions",
)
# What an instance owns in one generation, dropped when it is deleted.
PER_INSTANCE = ("memory_docs", "memory_words", "memory_texts", "memory_stats", "memory_terms")

_TABLES = [
    """CREATE TABLE IF NOT EXISTS memory_generation (
        id INTEGER PRIMARY KEY, generation INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS memory_positions (
        generation INTEGER PRIMARY KEY, position BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS memory_docs (
        generation INTEGER NOT NULL, doc_id TEXT NOT NULL, tenant TEXT NOT NULL,
        instance_id TEXT NOT NULL, kind TEXT NOT NULL, text TEXT NOT NULL,
        metadata TEXT NOT NULL, importance DOUBLE PRECISION NOT NULL, occurred_at TEXT NOT NULL,
        position BIGINT NOT NULL, length INTEGER NOT NULL, speaker TEXT, created_at TEXT NOT NULL,
        vector {bytes}, PRIMARY KEY (generation, doc_id))""",
    """CREATE INDEX IF NOT EXISTS memory_docs_by_instance
        ON memory_docs (generation, instance_id, kind, position)""",
    # The turns beside a search's first hits, in time (memory_search, `Weights.neighbours`).
    """CREATE INDEX IF NOT EXISTS memory_docs_by_time
        ON memory_docs (generation, instance_id, occurred_at)""",
    # BM25's postings: per instance and word, each source holding it, how often, and the
    # source's length. A search reads a word's rows in key order and nothing else: on SQLite the
    # table is its key (WITHOUT ROWID), on PostgreSQL the key's index carries tf and length, so
    # no search joins memory_docs for the length (README, memory index).
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
]
_COVERING = {"sqlite": ") WITHOUT ROWID", "postgresql": " INCLUDE (tf, length))"}
# Each document's vector as it was sent to Chroma (float32, `memory_docs.stored`), which a search
# reads beside the document instead of asking Chroma for it.
_BYTES = {"sqlite": "BLOB", "postgresql": "BYTEA"}

# Indexes written before memory_words kept their postings without the length.
_MOVE_POSTINGS = [
    "INSERT INTO memory_words (generation, instance_id, term, doc_id, tf, length) "
    "SELECT p.generation, p.instance_id, p.term, p.doc_id, p.tf, d.length "
    "FROM memory_postings p JOIN memory_docs d "
    "ON d.generation = p.generation AND d.doc_id = p.doc_id",
    "DROP TABLE memory_postings",
]
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
# Indexes written before the memory audit became a read model of its own (projections/audit.py,
# built again from the events) kept it here. Nothing would update or erase these rows any more.
_DROP_AUDIT = "DROP TABLE IF EXISTS memory_audit"
# Indexes written before held importance as PostgreSQL's 4-byte REAL, which cannot hold every
# number from 0 to 1 that the API accepts (1e-50 underflows): widened in place, once.
_IMPORTANCE_TYPE = (
    "SELECT data_type FROM information_schema.columns WHERE table_schema = current_schema() "
    "AND table_name = 'memory_docs' AND column_name = 'importance'"
)
_WIDEN_IMPORTANCE = "ALTER TABLE memory_docs ALTER COLUMN importance TYPE DOUBLE PRECISION"
# Indexes written before sources kept who said them kept, as occurred_at, the time search
# answers as created_at (when a snippet was added): the same time, as nothing had another then.
_ADD_SPEAKERS = [
    "ALTER TABLE memory_docs ADD COLUMN speaker TEXT",
    "ALTER TABLE memory_docs ADD COLUMN created_at TEXT NOT NULL DEFAULT ''",
    "UPDATE memory_docs SET created_at = occurred_at",
]


def undated(store: SqlStore) -> bool:
    """Whether the index was written before its sources kept who said them, and its vectors
    when they happened (`MemoryIndex` dates them before `prepare` brings the tables up)."""
    return store.has_table("memory_docs") and not store.has_column("memory_docs", "speaker")


def unstored(store: SqlStore) -> bool:
    """Whether the index was written before its documents kept their vectors (`MemoryIndex`
    copies them from Chroma, adding the column, after `prepare`)."""
    return not store.has_column("memory_docs", "vector")


def add_vectors(dialect: str) -> str:
    return f"ALTER TABLE memory_docs ADD COLUMN vector {_BYTES[dialect]}"


def tables(dialect: str) -> list[str]:
    return [
        statement.replace("{covering}", _COVERING[dialect]).replace("{bytes}", _BYTES[dialect])
        for statement in _TABLES
    ]


def prepare(store: SqlStore) -> None:
    """Makes the tables, brings an earlier version's up to date, and serves generation 1 in a
    new index."""
    move_postings = store.has_table("memory_postings")  # seen before the tables are made
    add_speakers = undated(store)
    with store.transaction() as cursor:
        for statement in tables(store.dialect):
            cursor.execute(statement)
        if move_postings:
            for statement in _MOVE_POSTINGS:
                cursor.execute(statement)
        if add_speakers:
            for statement in _ADD_SPEAKERS:
                cursor.execute(statement)
        cursor.execute(_DROP_AUDIT)
        if store.dialect == "postgresql":
            cursor.execute(_IMPORTANCE_TYPE)
            if cursor.fetchone()[0] == "real":
                cursor.execute(_WIDEN_IMPORTANCE)
        cursor.execute(
            "INSERT INTO memory_generation (id, generation) VALUES (1, 1) "
            "ON CONFLICT (id) DO NOTHING"
        )
        cursor.execute("SELECT 1 FROM memory_terms LIMIT 1")
        if cursor.fetchone() is None:
            for statement in _COUNT_STATS:
                cursor.execute(statement)
