"""The Memory aggregate: one memory snippet of an instance, which can be revised and forgotten.

A snippet is an aggregate of its own, keyed to its instance, so an instance with 100,000 memories
never carries them in its state: adding, revising or forgetting one touches only that one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, cast
from uuid import UUID

from eventsourcing.domain import Aggregate, DomainEvent, event

from alma.domain.actor import Actor
from alma.domain.patch import merge_patch
from alma.domain.rules import (
    as_utc,
    valid_importance,
    valid_metadata,
    valid_snippet,
    valid_speaker,
)

DEFAULT_IMPORTANCE = 0.5


class Memory(Aggregate):
    Added: ClassVar[type[DomainEvent]]
    Revised: ClassVar[type[DomainEvent]]
    Forgotten: ClassVar[type[DomainEvent]]

    @event("Added")
    def __init__(
        self,
        tenant: str,
        instance_id: UUID,
        text: str,
        metadata: dict[str, Any],
        importance: float,
        source: dict[str, Any] | None,
        actor: Actor,
        occurred_at: datetime | None = None,
        speaker: str | None = None,
    ) -> None:
        """`occurred_at`: when it happened; None, when it was recorded (the event's own time;
        events from before it was kept have none). `speaker`: who said it, if anyone."""
        self.tenant = tenant
        self.instance_id = instance_id
        self.text = text
        self.metadata = metadata
        self.importance = importance
        self.source = source
        self.occurred_at: datetime = self.created_on if occurred_at is None else occurred_at
        self.speaker = speaker
        self.forgotten = False

    @classmethod
    def add(
        cls,
        tenant: str,
        instance_id: UUID,
        text: str,
        actor: Actor,
        metadata: dict[str, Any] | None = None,
        importance: float | None = None,
        source: dict[str, Any] | None = None,
        memory_id: UUID | None = None,
        occurred_at: datetime | None = None,
        speaker: str | None = None,
    ) -> Memory:
        """`memory_id` fixes the id (the memory process derives it from its source, so adding
        the same memory twice collides in the event store); otherwise a new one."""
        fields: dict[str, Any] = {
            "tenant": tenant,
            "instance_id": instance_id,
            "text": valid_snippet(text),
            "metadata": valid_metadata(metadata or {}),
            "importance": valid_importance(
                DEFAULT_IMPORTANCE if importance is None else importance
            ),
            "source": source,
            "actor": actor,
            "occurred_at": None if occurred_at is None else as_utc(occurred_at, "occurred_at"),
            "speaker": valid_speaker(speaker),
        }
        if memory_id is None:
            return cls(**fields)
        return cls._create(cast(Any, cls.Added), id=memory_id, **fields)

    def change(
        self,
        actor: Actor,
        text: str | None = None,
        metadata: dict[str, Any] | None = None,
        importance: float | None = None,
        source: dict[str, Any] | None = None,
    ) -> None:
        """Records a revision only when something really changes; None keeps a field."""
        self._revise_if_changed(
            actor,
            source,
            self.text if text is None else valid_snippet(text),
            self.metadata if metadata is None else valid_metadata(metadata),
            self.importance if importance is None else valid_importance(importance),
            self.occurred_at,
            self.speaker,
        )

    def merge(self, patch: dict[str, Any], actor: Actor) -> None:
        """A merge patch (RFC 7396): `metadata` merges key by key; null metadata is {}, null
        importance the default, null `occurred_at` the time it was recorded and null `speaker`
        none; text cannot be removed."""
        current = {
            "text": self.text,
            "metadata": self.metadata,
            "importance": self.importance,
            "occurred_at": self.occurred_at,
            "speaker": self.speaker,
        }
        fields = merge_patch(current, patch)
        self._revise_if_changed(
            actor,
            None,
            valid_snippet(fields.get("text")),
            valid_metadata(fields.get("metadata", {})),
            valid_importance(fields.get("importance", DEFAULT_IMPORTANCE)),
            as_utc(fields.get("occurred_at", self.created_on), "occurred_at"),
            valid_speaker(fields.get("speaker")),
        )

    def _revise_if_changed(
        self,
        actor: Actor,
        source: dict[str, Any] | None,
        text: str,
        metadata: dict[str, Any],
        importance: float,
        occurred_at: datetime,
        speaker: str | None,
    ) -> None:
        now = (self.text, self.metadata, self.importance, self.occurred_at, self.speaker)
        if (text, metadata, importance, occurred_at, speaker) != now:
            self.revise(text, metadata, importance, actor, source, occurred_at, speaker)

    # `source`, `occurred_at` and `speaker` on Revised came later (and `source` on Forgotten):
    # older events load with None, which keeps the time and had no speaker.
    @event("Revised")
    def revise(
        self,
        text: str,
        metadata: dict[str, Any],
        importance: float,
        actor: Actor,
        source: dict[str, Any] | None = None,
        occurred_at: datetime | None = None,
        speaker: str | None = None,
    ) -> None:
        """A revision with a `source` (the memory process's) becomes the memory's provenance."""
        self.text = text
        self.metadata = metadata
        self.importance = importance
        if source is not None:
            self.source = source
        if occurred_at is not None:
            self.occurred_at = occurred_at
        self.speaker = speaker

    @event("Forgotten")
    def forget(self, actor: Actor, source: dict[str, Any] | None = None) -> None:
        self.forgotten = True
