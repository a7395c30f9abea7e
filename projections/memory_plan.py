"""Planning a batch for the memory index: the documents each event puts, replaces or removes.

One handler per event type; events of other types change nothing in the index. A handler reads
what earlier events of the batch left in the plan, else what the index stores.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid5

from alma.domain import Instance, Memory
from alma.domain.instance import speaker_of
from alma.domain.rules import as_utc
from alma.projections.memory_docs import Doc, documents
from alma.stores.sql import SqlStore


@dataclass
class Plan:
    """What one batch of events changes in one generation, with the state it has seen so far."""

    store: SqlStore
    generation: int
    docs: dict[str, Doc] = field(default_factory=dict)
    gone: dict[str, UUID] = field(default_factory=dict)  # doc id -> its instance
    texts: dict[UUID, str | None] = field(default_factory=dict)
    stored_texts: dict[UUID, str | None] = field(default_factory=dict)  # read from SQL
    dropped: set[UUID] = field(default_factory=set)
    erased: set[UUID] = field(default_factory=set)  # dropped, with the store's log wiped
    vectors: dict[str, bytes] = field(default_factory=dict)  # doc id -> as stored, once embedded

    def put(self, doc: Doc) -> None:
        self.gone.pop(doc.doc_id, None)
        self.docs[doc.doc_id] = doc

    def remove(self, doc_id: str, instance_id: UUID) -> None:
        self.docs.pop(doc_id, None)
        self.gone[doc_id] = instance_id

    def text(self, instance_id: UUID) -> str | None:
        """The instance's memory text; None once deleted, and before it exists."""
        if instance_id in self.texts:
            return self.texts[instance_id]
        if instance_id not in self.stored_texts:
            rows = self.store.query(
                "SELECT text FROM memory_texts WHERE generation = %s AND instance_id = %s",
                (self.generation, str(instance_id)),
            )
            self.stored_texts[instance_id] = str(rows[0][0]) if rows else None
        return self.stored_texts[instance_id]

    def doc(self, doc_id: str) -> Doc | None:
        if doc_id in self.docs or doc_id in self.gone:
            return self.docs.get(doc_id)
        return documents(self.store, self.generation, [doc_id]).get(doc_id)


def plan(store: SqlStore, generation: int, batch: Sequence[tuple[Any, int]]) -> Plan:
    planned = Plan(store, generation)
    for event, position in batch:
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(planned, event, position)
    return planned


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


def text_chunk_id(instance_id: UUID, n: int) -> str:
    return str(uuid5(instance_id, f"memory-text/{n}"))


def _memory_text(plan: Plan, event: Any, position: int) -> None:
    instance_id = event.originator_id
    before = plan.text(instance_id)
    if before is None and type(event) is Instance.MemoryRewritten:
        return  # the instance was deleted
    old, new = chunks(before or ""), chunks(event.memory)
    for n in range(len(new), len(old)):
        plan.remove(text_chunk_id(instance_id, n), instance_id)
    for n, piece in enumerate(new):
        plan.put(
            Doc(
                text_chunk_id(instance_id, n),
                event.actor.tenant,
                instance_id,
                "memory_text",
                piece,
                {},
                0.5,
                event.timestamp,
                position,
                speaker=None,
                created_at=event.timestamp,
            )
        )
    plan.texts[instance_id] = event.memory


def _message(plan: Plan, event: Any, position: int) -> None:
    metadata = {**event.metadata, "role": event.role}
    _put_message(plan, event, metadata, as_utc(event.sent_at), position)


def _reply(plan: Plan, event: Any, position: int) -> None:
    metadata = {"role": "assistant", "model": event.model}
    _put_message(plan, event, metadata, event.timestamp, position)


def _put_message(
    plan: Plan, event: Any, metadata: dict[str, Any], occurred_at: Any, position: int
) -> None:
    """A turn of the conversation as a searchable source, unless its instance was deleted."""
    if plan.text(event.originator_id) is None:
        return
    plan.put(
        Doc(
            str(event.message_id),
            event.actor.tenant,
            event.originator_id,
            "message",
            event.content,
            metadata,
            0.5,
            occurred_at,
            position,
            speaker=speaker_of(event),
            created_at=occurred_at,
        )
    )


def _deleted(plan: Plan, event: Any, position: int) -> None:
    instance_id = event.originator_id
    if type(event) is Instance.Erased:
        plan.erased.add(instance_id)
    plan.texts[instance_id] = None
    plan.dropped.add(instance_id)
    for doc in [d for d in plan.docs.values() if d.instance_id == instance_id]:
        plan.remove(doc.doc_id, instance_id)


def _memory(plan: Plan, event: Any, position: int) -> None:
    doc_id, kind = str(event.originator_id), type(event)
    # Events from before memories kept when they happened and who said them have neither: an
    # added one happened when it was recorded, a revision keeps the time.
    occurred_at = getattr(event, "occurred_at", None)
    if kind is Memory.Added:
        # An added memory is new: a batch is redelivered only if its SQL was not committed.
        old_doc = None
        instance_id, created = event.instance_id, event.timestamp
        occurred_at = occurred_at or created
    else:
        old_doc = plan.doc(doc_id)
        if old_doc is None:
            return  # its instance was deleted
        instance_id, created = old_doc.instance_id, old_doc.created_at
        occurred_at = occurred_at or old_doc.occurred_at
    if plan.text(instance_id) is None:
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
            occurred_at,
            old_doc.position if old_doc else position,
            speaker=getattr(event, "speaker", None),
            created_at=created,
        )
    )


def _forgotten(plan: Plan, event: Any, position: int) -> None:
    doc_id = str(event.originator_id)
    old_doc = plan.doc(doc_id)
    if old_doc is not None:
        plan.remove(doc_id, old_doc.instance_id)


def _withdrawn(plan: Plan, event: Any, position: int) -> None:
    """Messages taken out of recall leave the index; only the instance's own are touched."""
    instance_id = event.originator_id
    for message_id in event.message_ids:
        doc = plan.doc(message_id)
        if doc is not None and doc.instance_id == instance_id and doc.kind == "message":
            plan.remove(message_id, instance_id)


_HANDLERS: dict[type, Callable[[Plan, Any, int], None]] = {
    Instance.Created: _memory_text,
    Instance.MemoryRewritten: _memory_text,
    Instance.MessageRecorded: _message,
    Instance.ReplyRecorded: _reply,
    Instance.Archived: _deleted,
    Instance.Erased: _deleted,
    Instance.MessagesWithdrawnFromRecall: _withdrawn,
    Memory.Added: _memory,
    Memory.Revised: _memory,
    Memory.Forgotten: _forgotten,
}
