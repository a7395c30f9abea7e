"""What a search's query says about when, as a boost for the candidates that fit: those that
happened within the period it names, or whose text names a time within it. A boost raises a
source's rank; it never hides one (`since`/`until` do)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from alma.projections.memory_docs import Doc, Period
from alma.projections.query_time import period_in
from alma.projections.ranking import Boost

# The share of the score a period named in the query takes: on LoCoMo dev 0.1 gave R@10 67.1
# (temporal 79.5), 0.05 66.5, 0.15 66.8, 0.2 and 0.3 67.1 (temporal 77.9); none 65.7 (README).
TIME_WEIGHT = 0.1
# An instance whose newest candidate snippet or message is older than this is an old
# conversation (imported, or left long ago): "last summer" in a question about it means the
# summer before its newest source.
STALE = timedelta(days=30)


def boost(query: str, docs: Iterable[Doc], now: datetime) -> Boost | None:
    """How the period `query` names weighs in the ranking of `docs`; None when it names none,
    or none of them fits it."""
    candidates = list(docs)
    if not candidates:
        return None
    # The memory text was written when it was last edited, whenever the conversation was.
    said = [doc.occurred_at for doc in candidates if doc.kind != "memory_text"]
    latest = max(said, default=now)
    period = period_in(query, latest if now - latest > STALE else now)
    if period is None:
        return None
    fits = {doc.doc_id: 1.0 for doc in candidates if _happened_within(doc, period)}
    return Boost(TIME_WEIGHT, fits) if fits else None


def _happened_within(doc: Doc, period: Period) -> bool:
    """It happened within `period`, or its text names a time within it ("yesterday", read from
    when it was said). Periods read from text have both bounds."""
    if period.holds(doc.occurred_at):
        return True
    told = _told(doc)
    return bool(
        told is not None
        and told.since
        and told.until
        and period.since
        and period.until
        and told.since <= period.until
        and period.since <= told.until
    )


# A source is a candidate of many searches: what its text says is read once, and kept by its id
# (not its text, which may be 100,000 characters) for the last `_KEPT` sources read.
_KEPT = 8_192
_read: dict[tuple[str, int, datetime], Period | None] = {}


_UNREAD = Period()  # a marker: no text names an open period


def _told(doc: Doc) -> Period | None:
    key = (doc.doc_id, hash(doc.text), doc.occurred_at)
    # Searches run in several threads: each step on the dict is atomic.
    known = _read.get(key, _UNREAD)
    if known is not _UNREAD:
        return known
    if len(_read) >= _KEPT:
        _read.clear()
    told = _read[key] = period_in(doc.text, doc.occurred_at)
    return told
