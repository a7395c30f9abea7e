"""Request and response bodies. Requests reject unknown fields and wrong JSON types; the
domain checks content rules (lengths, blank names), so each rule lives in one place."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from api.present import actor_of, event_data, unified_diff
from domain import Character, Instance, MemoryChange


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Voice(Request):
    language: str = Field(min_length=2, max_length=35, examples=["es"])
    engine: str | None = Field(default=None, max_length=50)
    speed: float | None = Field(default=None, ge=0.25, le=4.0)


class CharacterCreate(Request):
    name: str = Field(examples=["Doña Rosa"])
    description: str = Field(examples=["Una curandera de Oaxaca que habla con refranes."])
    personality: str | None = None
    scenario: str | None = None
    greeting: str | None = None
    example_dialogue: str | None = None
    system_prompt: str | None = None
    voice: Voice | None = None


class CharacterEdit(Request):
    name: str | None = None
    description: str | None = None
    personality: str | None = None
    scenario: str | None = None
    greeting: str | None = None
    example_dialogue: str | None = None
    system_prompt: str | None = None
    voice: Voice | None = None


class InstanceCreate(Request):
    name: str = Field(examples=["Rosa de la sierra"])
    memory: str = Field(default="", examples=["Conoció al viajero en la feria de 1998."])


class InstanceEdit(Request):
    name: str | None = None
    memory: str | None = None


class InstanceFork(Request):
    name: str
    at_version: int | None = Field(default=None, ge=1)


class CharacterOut(BaseModel):
    id: UUID
    name: str
    description: str
    personality: str
    scenario: str
    greeting: str
    example_dialogue: str
    system_prompt: str
    voice: dict[str, Any] | None
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, character: Character) -> CharacterOut:
        return cls(
            id=character.id,
            name=character.name,
            description=character.description,
            personality=character.personality,
            scenario=character.scenario,
            greeting=character.greeting,
            example_dialogue=character.example_dialogue,
            system_prompt=character.system_prompt,
            voice=character.voice,
            version=character.version,
            created_at=character.created_on,
            updated_at=character.modified_on,
        )


class InstanceOut(BaseModel):
    id: UUID
    character_id: UUID
    name: str
    memory: str
    forked_from: dict[str, Any] | None
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, instance: Instance) -> InstanceOut:
        return cls(
            id=instance.id,
            character_id=instance.character_id,
            name=instance.name,
            memory=instance.memory,
            forked_from=instance.forked_from,
            version=instance.version,
            created_at=instance.created_on,
            updated_at=instance.modified_on,
        )


class CharacterPage(BaseModel):
    items: list[CharacterOut]
    next_cursor: str | None


class InstancePage(BaseModel):
    items: list[InstanceOut]
    next_cursor: str | None


class EventOut(BaseModel):
    version: int
    type: str
    timestamp: datetime
    actor: dict[str, str] | None
    data: dict[str, Any]

    @classmethod
    def of(cls, event: Any) -> EventOut:
        return cls(
            version=event.originator_version,
            type=type(event).__name__,
            timestamp=event.timestamp,
            actor=actor_of(event),
            data=event_data(event),
        )


class EventPage(BaseModel):
    items: list[EventOut]
    next_cursor: str | None


class MemoryChangeOut(BaseModel):
    version: int
    timestamp: datetime
    actor: dict[str, str] | None
    kind: str
    memory_id: UUID | None = None
    before: str
    after: str
    diff: str

    @classmethod
    def of(cls, change: MemoryChange) -> MemoryChangeOut:
        event = change.event
        return cls(
            version=event.originator_version,
            timestamp=event.timestamp,
            actor=actor_of(event),
            kind="memory_text",
            before=change.before,
            after=change.after,
            diff=unified_diff(change.before, change.after, event.originator_version),
        )


class AuditPage(BaseModel):
    items: list[MemoryChangeOut]
    next_cursor: str | None


class Health(BaseModel):
    status: str
    event_store: str
    vector_store: str
    projection_lag_events: int | None
