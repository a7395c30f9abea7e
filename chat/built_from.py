"""What a recorded reply was built from, read back from its `ReplyRecorded` event: each memory
its prompt recalled as it was then (a snippet, a message of the conversation, a piece of the
memory text) and what has become of it since, the lorebook entries as they were then, the model
and the tokens."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from alma.domain import Alma, Instance, NotFound
from alma.domain.lorebook import Lorebook
from alma.projections import Conversation, Message
from alma.projections.memory_plan import chunks, text_chunk_id

UNCHANGED, REVISED, FORGOTTEN = "unchanged", "revised", "forgotten"


@dataclass(frozen=True)
class Recalled:
    id: str
    source: str | None  # "memory", "message", "memory_text"; None: no longer readable
    text: str | None  # as it was when the reply was made
    score: float | None  # None: recorded before scores were kept
    occurred_at: datetime | None
    speaker: str | None
    now: str  # UNCHANGED, REVISED or FORGOTTEN
    text_now: str | None  # a revised one's text now


@dataclass(frozen=True)
class LoreThen:
    id: str  # "<lorebook id>:<entry id>"
    lorebook_id: UUID
    entry_id: int
    lorebook_name: str | None  # None: the lorebook can no longer be read
    comment: str | None
    content: str | None  # None: the entry was not in the book then


@dataclass(frozen=True)
class BuiltFrom:
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    interrupted: bool
    prompt_sha256: str
    memories: list[Recalled]
    lore: list[LoreThen]


def built_from(app: Alma, conversation: Conversation, tenant: str, reply: Any) -> BuiltFrom:
    """`reply`: an instance's `ReplyRecorded` event."""
    instance_id: UUID = reply.originator_id
    ids = [str(m) for m in reply.memory_ids]
    scores = getattr(reply, "memory_scores", None) or [None] * len(ids)
    then = app.owned(Instance, tenant, instance_id, reply.originator_version)
    now = app.owned(Instance, tenant, instance_id, None)
    # A fork's copies of its original's replies name what the original recalled: its pieces of
    # the memory text (which the fork started with) and its messages.
    owners = [instance_id] + ([UUID(now.forked_from["instance_id"])] if now.forked_from else [])
    texts: dict[str, tuple[str, str | None]] = {}
    messages: dict[str, Message] = {}
    for owner in owners:
        texts |= _text_pieces(owner, then.memory, now.memory)
        rest = [i for i in ids if i not in texts and i not in messages]
        messages |= conversation.by_ids(owner, rest)
    withdrawn = _withdrawn_since(app, tenant, reply) if messages else set()
    memories = []
    for memory_id, score in zip(ids, scores, strict=False):
        if memory_id in texts:
            was, is_ = texts[memory_id]
            memories.append(_recalled(memory_id, "memory_text", was, score, None, None, is_))
        elif memory_id in messages:
            said = messages[memory_id]
            is_ = None if memory_id in withdrawn else said.content
            memories.append(
                _recalled(memory_id, "message", said.content, score, said.sent_at, said.name, is_)
            )
        else:
            memories.append(_snippet(app, tenant, memory_id, score, reply.timestamp))
    return BuiltFrom(
        model=reply.model,
        prompt_tokens=reply.prompt_tokens,
        completion_tokens=reply.completion_tokens,
        latency_ms=reply.latency_ms,
        interrupted=reply.interrupted,
        prompt_sha256=reply.prompt_sha256,
        memories=memories,
        # (events from before lorebooks have no lore_used)
        lore=[
            _lore(app, tenant, i, reply.timestamp) for i in getattr(reply, "lore_used", None) or []
        ],
    )


def _recalled(
    memory_id: str,
    source: str | None,
    text: str | None,
    score: float | None,
    occurred_at: datetime | None,
    speaker: str | None,
    text_now: str | None,
) -> Recalled:
    state = FORGOTTEN if text_now is None else UNCHANGED if text_now == text else REVISED
    revised = text_now if state == REVISED else None
    return Recalled(memory_id, source, text, score, occurred_at, speaker, state, revised)


def _text_pieces(instance_id: UUID, then: str, now: str) -> dict[str, tuple[str, str | None]]:
    """The memory text's pieces as the index holds them, by id: then and now (None: gone)."""
    was, is_ = chunks(then or ""), chunks(now or "")
    return {
        text_chunk_id(instance_id, n): (piece, is_[n] if n < len(is_) else None)
        for n, piece in enumerate(was)
    }


def _withdrawn_since(app: Alma, tenant: str, reply: Any) -> set[str]:
    """The messages a forget took out of recall after the reply."""
    events = app.stream(
        tenant,
        Instance,
        reply.originator_id,
        after_version=reply.originator_version,
        event_type="MessagesWithdrawnFromRecall",
    )
    return {str(m) for event in events for m in event.message_ids}  # type: ignore[attr-defined]


def _snippet(app: Alma, tenant: str, memory_id: str, score: float | None, at: datetime) -> Recalled:
    try:
        then, now = app.memory_then_and_now(tenant, UUID(memory_id), at)
    except (NotFound, ValueError):  # erased since, or not an id alma still knows
        return _recalled(memory_id, None, None, score, None, None, None)
    text_now = None if now.forgotten else now.text
    return _recalled(
        memory_id, "memory", then.text, score, then.occurred_at, then.speaker, text_now
    )


def _lore(app: Alma, tenant: str, lore_id: str, at: datetime) -> LoreThen:
    book_id, _, entry = lore_id.partition(":")
    lorebook_id, entry_id = UUID(book_id), int(entry)
    try:
        book: Lorebook = app.lorebook(tenant, lorebook_id, at=at)
    except NotFound:
        return LoreThen(lore_id, lorebook_id, entry_id, None, None, None)
    found = book.entries.get(entry_id)
    return LoreThen(
        lore_id,
        lorebook_id,
        entry_id,
        book.name,
        found["comment"] if found else None,
        found["content"] if found else None,
    )
