"""Forgetting a memory together with what the conversation said of it.

A memory forgotten alone leaves the messages that said the same searchable, so the character
still "remembers" it. `forget_with_messages` also takes out of recall the messages the memory
was formed from and those that state it, in the same command (`Alma.forget_memory`): the
index drops them, the prompt's recent turns and memory formation leave them out, and the
conversation, its history and the audit keep them as they were said.

Which messages state a memory was measured, not guessed (`bench/forget.py`, README): a message
states it when it holds at least half of the memory's words (words as search counts them:
folded, stopwords left out) and is close in meaning (cosine of the two embeddings at least 0.5).
Either alone took unrelated messages: with the packaged MiniLM, Spanish small talk reaches 0.68
against an unrelated memory, and a short memory shares a word with many messages. A message the
memory was formed from (its `source`) needs a quarter of the words and 0.45.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import numpy as np

from alma.domain import Actor, Alma, Memory
from alma.projections import Doc, MemoryIndex
from alma.projections.ranking import terms


@dataclass(frozen=True)
class Bar:
    """What a message must reach to be taken with the memory."""

    words: float  # the share of the memory's words the message holds
    meaning: float  # the cosine similarity of their embeddings


STATES = Bar(words=0.5, meaning=0.5)
FORMED_FROM = Bar(words=0.25, meaning=0.45)


@dataclass(frozen=True)
class Withdrawal:
    """A message taken out of recall with a memory, and why."""

    message: Doc
    reason: str  # "source": the memory was formed from it; "states": it says the same
    words: float
    similarity: float


def stating(index: MemoryIndex, memory: Memory) -> list[Withdrawal]:
    """The instance's messages that the memory was formed from or that state it, in the order
    they were said. Nothing is written."""
    formed_from = {str(m) for m in (memory.source or {}).get("messages", [])}
    wanted = set(terms(memory.text))
    if not wanted:
        return []
    candidates = index.messages_for(memory.instance_id, memory.text, sorted(formed_from))
    shares = {doc.doc_id: len(wanted & set(terms(doc.text))) / len(wanted) for doc in candidates}
    lowest = min(STATES.words, FORMED_FROM.words)
    close = [doc for doc in candidates if shares[doc.doc_id] >= lowest]
    if not close:
        return []
    # Each message's own words, embedded afresh: what the index embeds may hold more.
    vectors = np.asarray(index.embedder.encode([memory.text, *(doc.text for doc in close)]))
    taken = []
    for doc, vector in zip(close, vectors[1:], strict=True):
        similarity = float(vectors[0] @ vector)
        reason, bar = ("source", FORMED_FROM) if doc.doc_id in formed_from else ("states", STATES)
        if shares[doc.doc_id] >= bar.words and similarity >= bar.meaning:
            taken.append(Withdrawal(doc, reason, shares[doc.doc_id], similarity))
    return sorted(taken, key=lambda withdrawal: withdrawal.message.position)


def forget_with_messages(
    app: Alma, index: MemoryIndex, tenant: str, instance_id: UUID, memory_id: UUID, actor: Actor
) -> list[Withdrawal]:
    """Forgets the memory and takes out of recall the messages `stating` finds, at once."""
    withdrawn = stating(index, app.memory(tenant, instance_id, memory_id))
    message_ids = [UUID(withdrawal.message.doc_id) for withdrawal in withdrawn]
    app.forget_memory(tenant, instance_id, memory_id, actor, withdraw=message_ids)
    return withdrawn
