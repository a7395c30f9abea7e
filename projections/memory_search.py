"""Reading the memory index: hybrid search (BM25 over postings in SQL beside the nearest vectors
in Chroma, fused into one ranking) and the listing of an instance's memory snippets."""

from __future__ import annotations

import bisect
import heapq
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import numpy as np

from alma.embeddings import Embedder
from alma.projections.memory_docs import (
    DOC_COLUMNS,
    VECTOR_COLUMNS,
    Doc,
    Period,
    doc_of,
    documents,
    documents_and_vectors,
    moment,
    vectors,
    vectors_in,
)
from alma.projections.query_hints import boost
from alma.projections.ranking import (
    Candidate,
    Weights,
    bm25_idf,
    contents,
    fuse,
    named_speaker_later,
    term_counts,
    terms,
)
from alma.projections.vectors import VectorIndex
from alma.stores.sql import SqlStore

# Candidates a search reads on each side (by meaning, by words): this many, or four times the
# hits asked for when that is more, up to `MOST_CANDIDATES` (a chat turn's search reads 50;
# LoCoMo dev in process, k=50: R@50 88.9 with 100 a side, 89.7 with 200).
CANDIDATES = 50
CANDIDATES_PER_HIT = 4
MOST_CANDIDATES = 200
_K1, _B = 1.2, 0.75
# BM25 reads the postings of the query's rarest words up to this many rows: the common words
# left out weigh little (low IDF), and a search stays fast in an instance of 100,000 sources.
POSTINGS_BUDGET = 2_000
# A search within a period reads when BM25's hits happened this many at a time, best first,
# until it has its candidates.
_TIMES_AT_ONCE = 500
# The second hop (Weights.expansion) starts from this many first hits and searches with this
# many of their rare words: the values bench/fusion.py measured best on LoCoMo's dev split.
_HOP_FROM = 3
_HOP_WORDS = 8


@dataclass(frozen=True)
class Hit:
    doc: Doc
    score: float


class MemorySearch:
    """The index as its readers see it: the generation its pointer names, or a pinned one while
    a rebuild fills it. `MemoryIndex` adds following the log."""

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
        self._queries = ThreadPoolExecutor(thread_name_prefix="query-embedding")

    @property
    def generation(self) -> int:
        if self.pinned_generation is not None:
            return self.pinned_generation
        return int(self.store.query("SELECT generation FROM memory_generation WHERE id = 1")[0][0])

    def close(self) -> None:
        self._lexical.shutdown()
        self._queries.shutdown()
        self.store.close()

    def memories(self, instance_id: UUID, after: int, limit: int) -> list[Doc]:
        """The instance's live memory snippets, oldest first."""
        rows = self.store.query(
            f"SELECT {DOC_COLUMNS} FROM memory_docs WHERE generation = %s AND instance_id = %s "
            "AND kind = 'memory' AND position > %s ORDER BY position LIMIT %s",
            (self.generation, str(instance_id), after, limit),
        )
        return [doc_of(row) for row in rows]

    def search(
        self,
        instance_id: UUID,
        query: str,
        k: int = 10,
        min_score: float = 0.0,
        now: datetime | None = None,
        exclude: Callable[[Doc], bool] | None = None,
        embedding: Future[list[float]] | None = None,
        period: Period | None = None,
    ) -> list[Hit]:
        """The `k` best sources for `query`, leaving out (before the cut to `k`) those that
        `exclude` names, asked best first: a chat turn's own prompt already holds them.
        `embedding`: the query's vector from `embed_soon`, else it is computed here. With a
        `period`, only sources that happened within it are candidates."""
        generation = self.generation
        pool = max(k, min(max(CANDIDATES, CANDIDATES_PER_HIT * k), MOST_CANDIDATES))
        scoring = self._lexical.submit(self._words, generation, instance_id, query, period, pool)
        vector = embedding.result() if embedding else self.embedder.encode_query(query)
        dense = dict(self.vectors.nearest(generation, instance_id, vector, pool, period, k))
        lexical, information, stored = scoring.result()
        query_vector = np.asarray(vector)
        for doc_id, other in stored.items():
            if doc_id not in dense:
                dense[doc_id] = float(np.dot(query_vector, other))
        docs = documents(self.store, generation, list(dense.keys() | lexical.keys()))
        now = now or datetime.now(UTC)
        ranked = self._rank(query, docs, dense, lexical, {}, information, now)
        expanded: dict[str, float] = {}
        if self.weights.expansion:
            first = [docs[c.doc_id] for c, _ in ranked[:_HOP_FROM]]
            expanded = self._second_hop(generation, instance_id, query, first, period, pool)
        beside, beside_vectors = self._beside(generation, instance_id, ranked, period, docs)
        brought = [d for d in expanded.keys() | beside.keys() if d not in docs]
        if brought:
            hopped, brought_vectors = documents_and_vectors(
                self.store, generation, [d for d in brought if d not in beside]
            )
            brought_vectors |= beside_vectors
            for doc_id in brought:
                if doc_id not in dense and doc_id in brought_vectors:
                    dense[doc_id] = float(np.dot(query_vector, brought_vectors[doc_id]))
            docs |= beside | hopped
        if expanded or brought:
            ranked = self._rank(query, docs, dense, lexical, expanded, information, now)
        if exclude is not None:
            ranked = [(c, score) for c, score in ranked if not exclude(docs[c.doc_id])]
        return [Hit(docs[c.doc_id], score) for c, score in ranked[:k] if score >= min_score]

    def messages_for(self, instance_id: UUID, text: str, also: Sequence[str] = ()) -> list[Doc]:
        """The instance's messages among the best `2 * CANDIDATES` sources of a search for
        `text`, and those of `also` the index holds."""
        hits = self.search(instance_id, text, k=2 * CANDIDATES)
        found = {hit.doc.doc_id: hit.doc for hit in hits if hit.doc.kind == "message"}
        stored = documents(self.store, self.generation, [i for i in also if i not in found])
        for doc_id, doc in stored.items():
            if doc.instance_id == instance_id and doc.kind == "message":
                found[doc_id] = doc
        return list(found.values())

    def embed_soon(self, query: str) -> Future[list[float]]:
        """The query's vector, computed in the background (onnxruntime works outside the GIL)
        while the caller does other work, such as loading what the search will be for."""
        return self._queries.submit(self.embedder.encode_query, query)

    def _words(
        self, generation: int, instance_id: UUID, query: str, period: Period | None, pool: int
    ) -> tuple[dict[str, float], float, dict[str, np.ndarray]]:
        """BM25's candidates, what the query's words weigh (`_bm25`) and the candidates' stored
        vectors (from SQL), read while the query is embedded and Chroma searched: the vectors
        give them a dense score without waiting for that."""
        lexical, information = self._bm25(generation, instance_id, query, period, pool)
        return lexical, information, vectors(self.store, generation, list(lexical))

    def _bm25(
        self,
        generation: int,
        instance_id: UUID,
        query: str,
        period: Period | None = None,
        pool: int = CANDIDATES,
    ) -> tuple[dict[str, float], float]:
        """The `pool` best BM25 candidates of `query`, and what its words weigh in all (the sum
        of their IDFs, a word never said weighing most), which `lexical_scale="query"` scales
        by."""
        words = sorted(set(terms(query)))
        total, average = self._statistics(generation, instance_id) if words else (0, 0.0)
        if not total:
            return {}, 0.0
        frequencies = self._frequencies(generation, instance_id, words)
        information = sum(bm25_idf(total, frequencies.get(word, 0)) for word in words)
        # Words in over half the documents say little; the rest, rarest first, within budget.
        weights: dict[str, float] = {}
        read = 0
        for term, n in sorted(frequencies.items(), key=lambda pair: pair[1]):
            if n > max(1, total // 2) or (weights and read + n > POSTINGS_BUDGET):
                break
            weights[term] = bm25_idf(total, n)
            read += n
        return self._scores(generation, instance_id, average, weights, period, pool), information

    def _rank(
        self,
        query: str,
        docs: dict[str, Doc],
        dense: dict[str, float],
        lexical: dict[str, float],
        expanded: dict[str, float],
        information: float,
        now: datetime,
    ) -> list[tuple[Candidate, float]]:
        """The candidates `docs` fused, best first, from their scores on each signal (a
        second hop's scaled by its best) and what each says among them; past the first hits,
        the turns of a speaker the query names raised."""
        best = max(expanded.values(), default=0.0) or 1.0
        said = contents([_words(doc) for doc in docs.values()])
        candidates = [
            candidate(doc, dense.get(d, 0.0), lexical.get(d, 0.0), expanded.get(d, 0.0) / best, s)
            for (d, doc), s in zip(docs.items(), said, strict=True)
        ]
        hints = boost(query, docs.values(), now)
        ranked = fuse(candidates, now, self.weights, information, hints)
        return named_speaker_later(ranked, query, self.weights)

    def _beside(
        self,
        generation: int,
        instance_id: UUID,
        ranked: list[tuple[Candidate, float]],
        period: Period | None,
        known: dict[str, Doc],
    ) -> tuple[dict[str, Doc], dict[str, np.ndarray]]:
        """The turns beside the first `Weights.neighbour_candidates` turns of `ranked`, up to
        `neighbours_each_side` on each side in time, within the episode (the blend's gap) and
        `period`, that are not among the `known` candidates: those neither signal found that a
        neighbour's score may lift. With their vectors, read in the same query."""
        weights = self.weights
        side, gap = weights.neighbours_each_side, timedelta(minutes=weights.episode_gap_minutes)
        hits = [c for c, _ in ranked if c.turn][: weights.neighbour_candidates]
        if not weights.neighbours or not side or not hits:
            return {}, {}
        scope = (generation, str(instance_id))
        sides: list[str] = []
        params: list[object] = []
        for hit in hits:
            for compare, order in (("<", "DESC"), (">", "ASC")):
                sides.append(
                    f"SELECT * FROM (SELECT {VECTOR_COLUMNS} FROM memory_docs "
                    f"WHERE generation = %s AND instance_id = %s AND occurred_at {compare} %s "
                    f"AND {_TURN} "
                    f"ORDER BY occurred_at {order} LIMIT {side}) AS side{len(sides)}"
                )
                params += [*scope, hit.occurred_at.isoformat()]
        times = sorted(hit.occurred_at for hit in hits)
        found: dict[str, Doc] = {}
        rows = []
        for row in self.store.query(" UNION ALL ".join(sides), params):
            doc_id = str(row[0])
            if doc_id in known or doc_id in found:
                continue
            when = moment(row[7])
            # Within the gap of a hit: of the one just before it in time, or just after.
            after = bisect.bisect_left(times, when)
            near = (after < len(times) and times[after] - when <= gap) or (
                after > 0 and when - times[after - 1] <= gap
            )
            if near and (period is None or period.holds(when)):
                found[doc_id] = doc_of(row)
                rows.append(row)
        return found, vectors_in(rows)

    def _second_hop(
        self,
        generation: int,
        instance_id: UUID,
        query: str,
        first: list[Doc],
        period: Period | None,
        pool: int,
    ) -> dict[str, float]:
        """BM25 over the rare words of the `first` hits that the query does not hold: the
        names, places and things a multi-hop question's other evidence shares with them. A
        word is rare when at most 2 % of the sources hold it, and it must be in two at least
        (one is the hit itself); those of most weight over the hits are kept."""
        total, average = self._statistics(generation, instance_id)
        asked = set(terms(query))
        words = sorted({w for doc in first for w in terms(doc.indexed_text())} - asked)
        if not total or not words:
            return {}
        frequencies = self._frequencies(generation, instance_id, words)
        rare = {w: n for w, n in frequencies.items() if 2 <= n <= max(2, total // 50)}
        weight = {w: bm25_idf(total, n) for w, n in rare.items()}
        held = Counter(w for doc in first for w in set(terms(doc.indexed_text())) if w in rare)
        kept = heapq.nlargest(_HOP_WORDS, held, key=lambda w: held[w] * weight[w])
        chosen = {w: weight[w] for w in kept}
        return self._scores(generation, instance_id, average, chosen, period, pool)

    def _statistics(self, generation: int, instance_id: UUID) -> tuple[int, float]:
        """How many sources the instance has, and their average length in words."""
        stats = self.store.query(
            "SELECT documents, length FROM memory_stats WHERE generation = %s AND instance_id = %s",
            (generation, str(instance_id)),
        )
        if not stats or not stats[0][0]:
            return 0, 0.0
        return int(stats[0][0]), int(stats[0][1]) / int(stats[0][0]) or 1.0

    def _frequencies(self, generation: int, instance_id: UUID, words: list[str]) -> dict[str, int]:
        """How many of the instance's sources hold each of `words` (those none holds left out)."""
        marks = ", ".join(["%s"] * len(words))
        rows = self.store.query(
            "SELECT term, documents FROM memory_terms WHERE generation = %s "
            f"AND instance_id = %s AND documents > 0 AND term IN ({marks})",
            (generation, str(instance_id), *words),
        )
        return {str(term): int(n) for term, n in rows}

    def _scores(
        self,
        generation: int,
        instance_id: UUID,
        average: float,
        weights: dict[str, float],
        period: Period | None,
        pool: int,
    ) -> dict[str, float]:
        """BM25 of the sources holding the words of `weights` (word: IDF), the best `pool`."""
        if not weights:
            return {}
        scope = (generation, str(instance_id))
        # The sum is done here, not in SQL: with a GROUP BY, SQLite's planner preferred walking
        # the postings index by document (every posting of the generation) to the word lookups.
        marks = ", ".join(["%s"] * len(weights))
        rows = self.store.query(
            "SELECT doc_id, term, tf, length FROM memory_words "
            f"WHERE generation = %s AND instance_id = %s AND term IN ({marks})",
            (*scope, *weights),
        )
        scores: dict[str, float] = {}
        for doc_id, term, tf, doc_length in rows:
            norm = _K1 * (1 - _B + _B * int(doc_length) / average)
            score = weights[term] * tf * (_K1 + 1) / (tf + norm)
            scores[doc_id] = scores.get(doc_id, 0.0) + score
        if period is None:
            return dict(heapq.nlargest(pool, scores.items(), key=lambda pair: pair[1]))
        ranked = sorted(scores.items(), key=lambda pair: -pair[1])
        return dict(self._within(generation, ranked, period, pool))

    def _within(
        self, generation: int, ranked: list[tuple[str, float]], period: Period, pool: int
    ) -> list[tuple[str, float]]:
        """The best of `ranked` (best first) that happened within `period`, up to `pool`."""
        kept: list[tuple[str, float]] = []
        for start in range(0, len(ranked), _TIMES_AT_ONCE):
            part = ranked[start : start + _TIMES_AT_ONCE]
            marks = ", ".join(["%s"] * len(part))
            rows = self.store.query(
                "SELECT doc_id, occurred_at FROM memory_docs "
                f"WHERE generation = %s AND doc_id IN ({marks})",
                (generation, *(doc_id for doc_id, _ in part)),
            )
            happened = {str(doc_id): moment(when) for doc_id, when in rows}
            kept += [(d, s) for d, s in part if d in happened and period.holds(happened[d])]
            if len(kept) >= pool:
                break
        return kept[:pool]


# A turn of a conversation, in SQL: a message (a user's may have no name), or a snippet that
# says who said it (`Candidate.turn`).
_TURN = "(kind = 'message' OR speaker IS NOT NULL)"
# What each source's words are, for `contents`: kept by its id (and text) for the last
# `_KEPT` sources read, as a source is a candidate of many searches.
_KEPT = 16_384
_read: dict[tuple[str, int], Counter[str]] = {}


def _words(doc: Doc) -> Counter[str]:
    key = (doc.doc_id, hash(doc.text))
    # Searches run in several threads: each step on the dict is atomic.
    counts = _read.get(key)
    if counts is None:
        if len(_read) >= _KEPT:
            _read.clear()
        counts = _read[key] = term_counts(doc.indexed_text())
    return counts


def candidate(
    doc: Doc, dense: float, lexical: float, expanded: float = 0.0, content: float = 0.0
) -> Candidate:
    """What the ranking weighs of a source: its similarities, when it happened, who said it,
    its importance and what it says among the candidates."""
    return Candidate(
        doc.doc_id,
        dense,
        lexical,
        doc.occurred_at,
        doc.importance,
        doc.speaker,
        expanded,
        content,
        turn=doc.kind == "message" or doc.speaker is not None,
    )
