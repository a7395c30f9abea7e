"""The Memory aggregate: one memory snippet of an instance, which can be revised and forgotten.

A snippet is an aggregate of its own, keyed to its instance, so an instance with 100,000 memories
never carries them in its state: adding, revising or forgetting one touches only that one.
"""

from __future__ import annotations

from typing import Any, ClassVar, cast
from uuid import UUID

from eventsourcing.domain import Aggregate, DomainEvent, event

from alma.domain.actor import Actor
from alma.domain.patch import merge_patch
from alma.domain.rules import valid_importance, valid_metadata, valid_snippet

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
    ) -> None:
        self.tenant = tenant
        self.instance_id = instance_id
        self.text = text
        self.metadata = metadata
        self.importance = importance
        self.source = source
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
        """Records a revision only when something really changes."""
        new_text = self.text if text is None else valid_snippet(text)
        new_metadata = self.metadata if metadata is None else valid_metadata(metadata)
        new_importance = self.importance if importance is None else valid_importance(importance)
        if (new_text, new_metadata, new_importance) != (self.text, self.metadata, self.importance):
            self.revise(new_text, new_metadata, new_importance, actor, source)

    def merge(self, patch: dict[str, Any], actor: Actor) -> None:
        """A merge patch (RFC 7396): `metadata` merges key by key; null metadata is {} and null
        importance the default; text cannot be removed."""
        current = {"text": self.text, "metadata": self.metadata, "importance": self.importance}
        fields = merge_patch(current, patch)
        self.change(
            actor,
            valid_snippet(fields.get("text")),
            fields.get("metadata", {}),
            fields.get("importance", DEFAULT_IMPORTANCE),
        )

    # `source` on Revised and Forgotten came later: older events load with None.
    @event("Revised")
    def revise(
        self,
        text: str,
        metadata: dict[str, Any],
        importance: float,
        actor: Actor,
        source: dict[str, Any] | None = None,
    ) -> None:
        """A revision with a `source` (the memory process's) becomes the memory's provenance."""
        self.text = text
        self.metadata = metadata
        self.importance = importance
        if source is not None:
            self.source = source

    @event("Forgotten")
    def forget(self, actor: Actor, source: dict[str, Any] | None = None) -> None:
        self.forgotten = True
