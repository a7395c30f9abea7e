"""Forgetting a memory together with what the conversation said of it.

A memory forgotten alone leaves the messages that said the same searchable, so the character
still "remembers" it. `forget_with_messages` also takes out of recall the messages the memory
was formed from and those that state it, in the same command (`Alma.forget_memory`): the
index drops them, the prompt's recent turns and memory formation leave them out, and the
conversation, its history and the audit keep them as they were said.

Which messages state a memory was measured, not guessed (`bench/forget.py`, README). A message
states it when it holds at least half of the memory's words and at least three of them (all of
them, when the memory has two or three), and is close in meaning (cosine of the two embeddings
at least 0.5). Words are as search counts them (folded, stopwords left out), without the words
the memory process names the user by ("usuario", "user"), which no user says of themselves; a
memory of one word states nothing a message could be taken for. Meaning alone took unrelated
messages: with the packaged MiniLM, Spanish small talk reaches 0.68 against an unrelated memory.
Fewer words took near misses: "Nurse at St Mary's" with "My mum was a teacher at St Mary's",
"Mi gato Tizón" with "El gato de mi vecina es blanco". The messages a memory was formed from
(its `source`) are always looked at, but must state it too: the window the memory process formed
it from holds other things.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from uuid import UUID

import numpy as np

from alma.domain import Actor, Alma, Memory
from alma.projections import Doc, MemoryIndex
from alma.projections.ranking import terms

WORDS = 0.5  # the share of the memory's words a message must hold
FEWEST_WORDS = 3  # and never fewer (all of them, when the memory has fewer)
MEANING = 0.5  # the cosine similarity their embeddings must reach
# How the memory process names the user, which the user's own messages never say.
THE_USER = frozenset({"usuario", "usuaria", "user"})


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
    wanted = set(terms(memory.text)) - THE_USER
    if len(wanted) < 2:
        return []
    needed = min(len(wanted), max(FEWEST_WORDS, math.ceil(WORDS * len(wanted))))
    candidates = index.messages_for(memory.instance_id, memory.text, sorted(formed_from))
    held = {doc.doc_id: len(wanted & set(terms(doc.text))) for doc in candidates}
    close = [doc for doc in candidates if held[doc.doc_id] >= needed]
    if not close:
        return []
    # Each message's own words, embedded afresh: what the index embeds may hold more.
    vectors = np.asarray(index.embedder.encode([memory.text, *(doc.text for doc in close)]))
    taken = []
    for doc, vector in zip(close, vectors[1:], strict=True):
        similarity = float(vectors[0] @ vector)
        if similarity >= MEANING:
            reason = "source" if doc.doc_id in formed_from else "states"
            taken.append(Withdrawal(doc, reason, held[doc.doc_id] / len(wanted), similarity))
    return sorted(taken, key=lambda withdrawal: withdrawal.message.position)


def forget_with_messages(
    app: Alma, index: MemoryIndex, tenant: str, instance_id: UUID, memory_id: UUID, actor: Actor
) -> list[Withdrawal]:
    """Forgets the memory and takes out of recall the messages `stating` finds, at once."""
    withdrawn = stating(index, app.memory(tenant, instance_id, memory_id))
    message_ids = [UUID(withdrawal.message.doc_id) for withdrawal in withdrawn]
    app.forget_memory(tenant, instance_id, memory_id, actor, withdraw=message_ids)
    return withdrawn
