"""Writing a planned batch to the memory index's SQL: the documents with their vectors, their BM25
postings and statistics and the memory texts.

Every table gets one DELETE ... IN per few hundred ids and one INSERT per batch; the statistics
change by the batch's differences, so they are never counted again.
"""

from __future__ import annotations

import json
from collections import Counter

from alma.projections.memory_plan import Plan
from alma.projections.memory_schema import PER_INSTANCE
from alma.projections.ranking import term_counts
from alma.stores.sql import Cursor

_IN_LIST = 500  # ids per DELETE ... IN (...)
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


def write(cursor: Cursor, plan: Plan) -> bool:
    """Writes the plan; True when it erased an instance."""
    generation = plan.generation
    for instance_id in plan.dropped:
        for table in PER_INSTANCE:
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
                doc.speaker,
                doc.created_at.isoformat(),
                plan.vectors[doc_id],
            )
        )
        postings += [(generation, instance, t, doc_id, n, length) for t, n in counts.items()]
    cursor.executemany(
        "INSERT INTO memory_docs (generation, doc_id, tenant, instance_id, kind, text, "
        "metadata, importance, occurred_at, position, length, speaker, created_at, vector) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
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
    return bool(plan.erased)
