"""What a search's query says about when and who, as a boost for the candidates that fit: those
that happened within the period it names (or whose text names a time within it), and those said
by a speaker it names. A boost raises a source's rank; it never hides one (`since`/`until` do)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import lru_cache

from alma.projections.memory_docs import Doc, Period
from alma.projections.query_time import names_time, period_in
from alma.projections.ranking import fold

# Each a share of what the fused score lacks to reach 1: measured on LoCoMo dev (README).
TIME_BOOST = 0.15
SPEAKER_BOOST = 0.0
# "When did...?": sources whose text says when ("yesterday", "last week", a date).
WHEN_BOOST = 0.0
_WHEN = re.compile(
    r"^\W*(?:when|cuando)\b|\b(?:what (?:date|day|month|year)|how long ago"
    r"|cuando|en que (?:fecha|dia|mes|ano)|hace cuanto)\b"
)
# An instance whose newest candidate is older than this is an old conversation (imported, or
# left long ago): "last summer" in a question about it means the summer before its newest source.
STALE = timedelta(days=30)


def boosts(query: str, docs: Iterable[Doc], now: datetime) -> dict[str, float]:
    """Each candidate's boost, by doc id, for `query`; those without one are left out."""
    candidates = list(docs)
    if not candidates:
        return {}
    latest = max(doc.occurred_at for doc in candidates)
    anchor = latest if now - latest > STALE else now
    period = period_in(query, anchor) if TIME_BOOST else None
    named = _speakers_named(query, candidates) if SPEAKER_BOOST else set()
    when = bool(WHEN_BOOST) and _WHEN.search(fold(query)) is not None
    found: dict[str, float] = {}
    for doc in candidates:
        kept = 1.0
        if period is not None and _happened_within(doc, period):
            kept *= 1 - TIME_BOOST
        if when and _names_time(doc.text):
            kept *= 1 - WHEN_BOOST
        if doc.speaker is not None and doc.speaker in named:
            kept *= 1 - SPEAKER_BOOST
        if kept < 1.0:
            found[doc.doc_id] = 1 - kept
    return found


def _happened_within(doc: Doc, period: Period) -> bool:
    """It happened within `period`, or its text names a time within it ("yesterday", read from
    when it was said)."""
    if period.holds(doc.occurred_at):
        return True
    told = _told(doc.text, doc.occurred_at)
    return told is not None and _overlap(told, period)


# A source is a candidate of many searches: what its text says is read once.
_told = lru_cache(maxsize=8192)(period_in)
_names_time = lru_cache(maxsize=8192)(names_time)


def _overlap(a: Period, b: Period) -> bool:
    assert a.since and a.until and b.since and b.until  # what period_in reads is closed
    return a.since <= b.until and b.since <= a.until


def _speakers_named(query: str, docs: list[Doc]) -> set[str]:
    """The candidates' speakers whose name (whole, or its first word) the query says."""
    words = set(re.findall(r"\w+", fold(query)))
    folded = fold(query)
    named = set()
    for speaker in {doc.speaker for doc in docs if doc.speaker}:
        name = fold(speaker)
        first = name.split()[0] if name.split() else name
        if first in words or (" " in name and name in folded):
            named.add(speaker)
    return named
