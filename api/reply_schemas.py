"""The body of one message of the conversation, with what a reply was built from."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, Field

from alma.api.schemas import MessageOut, Usage
from alma.chat.built_from import BuiltFrom, LoreThen, Recalled
from alma.projections import Message


class RecalledOut(BaseModel):
    id: str
    source: Literal["memory", "message", "memory_text"] | None = Field(
        description="null: it can no longer be read (erased)"
    )
    text: str | None = Field(description="as it was when the reply was made")
    score: float | None = Field(
        description="its relevance then; null for replies recorded before scores were kept"
    )
    occurred_at: datetime | None = Field(description="when it happened; null for memory text")
    speaker: str | None
    now: Literal["unchanged", "revised", "forgotten"] = Field(
        description="what became of it since: forgotten (or taken out of recall), revised"
    )
    text_now: str | None = Field(description="a revised memory's text now; else null")

    @classmethod
    def of(cls, recalled: Recalled) -> RecalledOut:
        shown = cls.model_validate(recalled, from_attributes=True)
        if shown.score is not None:
            shown.score = round(shown.score, 6)  # as the chat's answer gives it
        return shown


class LoreThenOut(BaseModel):
    id: str = Field(description="`<lorebook id>:<entry id>`, as the reply's event records it")
    lorebook_id: UUID
    entry_id: int
    lorebook_name: str | None = Field(description="null: the lorebook can no longer be read")
    comment: str | None
    content: str | None = Field(description="the entry as it was then")

    @classmethod
    def of(cls, lore: LoreThen) -> LoreThenOut:
        return cls.model_validate(lore, from_attributes=True)


class BuiltFromOut(BaseModel):
    model: str
    usage: Usage
    latency_ms: int
    interrupted: bool
    prompt_sha256: str
    memories_used: list[RecalledOut]
    lore_used: list[LoreThenOut]

    @classmethod
    def of(cls, built: BuiltFrom) -> BuiltFromOut:
        return cls(
            model=built.model,
            usage=Usage(
                prompt_tokens=built.prompt_tokens, completion_tokens=built.completion_tokens
            ),
            latency_ms=built.latency_ms,
            interrupted=built.interrupted,
            prompt_sha256=built.prompt_sha256,
            memories_used=[RecalledOut.of(m) for m in built.memories],
            lore_used=[LoreThenOut.of(e) for e in built.lore],
        )


class MessageDetail(MessageOut):
    built_from: BuiltFromOut | None = Field(
        description="a chat reply's: what its prompt held; null for any other message"
    )

    @classmethod
    def built(cls, message: Message, built: BuiltFrom | None) -> MessageDetail:
        plain = MessageOut.of(message).model_dump()
        return cls(**plain, built_from=None if built is None else BuiltFromOut.of(built))
