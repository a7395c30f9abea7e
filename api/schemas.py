"""Request and response bodies. Requests reject unknown fields and wrong JSON types (OpenAI's
shapes accept the fields alma does not use, as OpenAI clients send them); the domain checks
content rules (lengths, blank names), so each rule lives in one place."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from alma.api.pagination import MAX_POSITION
from alma.api.present import actor_of, event_data, unified_diff
from alma.chat.forgetting import Withdrawal
from alma.chat.turns import DEFAULT_REPLY_TOKENS, TurnResult
from alma.chat.voice_turn import VoiceReply
from alma.domain import Character, Instance, InvalidInput, Memory
from alma.domain.rules import (
    MAX_LIST,
    MAX_NAME,
    MAX_SNIPPET,
    MAX_TEXT,
    NO_NUL,
    ROLES,
    VISIBLE_TEXT,
    as_utc,
)
from alma.projections import AuditEntry, Hit, Message, Skipped
from alma.voice import AudioError, VoiceSettings
from alma.voice.tts import check as check_voice
from alma.voice.tts import known_voices, language_pattern

T = TypeVar("T")


def _utc(moment: datetime) -> datetime:
    try:
        return as_utc(moment, "the time")
    except InvalidInput as error:
        raise ValueError(str(error)) from None


# Every time a request or a query gives: without an offset it is UTC, and it is kept in UTC.
UtcTime = Annotated[datetime, AfterValidator(_utc)]


class Page(BaseModel, Generic[T]):
    """One page of a list; `next_cursor` is null at the end."""

    items: list[T]
    next_cursor: str | None


def text_rule(max_length: int, visible: bool = False) -> dict[str, Any]:
    """What the domain checks of a text (alma.domain.rules), declared in the schema: at most
    `max_length` characters, no NUL, and for names and snippets a visible character. The domain
    checks it, so a refusal names the rule in words."""
    rule: dict[str, Any] = {"maxLength": max_length, "pattern": NO_NUL}
    if visible:
        rule |= {"minLength": 1, "pattern": VISIBLE_TEXT}
    return rule


NAME = text_rule(MAX_NAME, visible=True)
TEXT = text_rule(MAX_TEXT)
SNIPPET = text_rule(MAX_SNIPPET, visible=True)
IMPORTANCE: dict[str, Any] = {"minimum": 0, "maximum": 1}
_SCALAR = [{"type": "string", "pattern": NO_NUL}, {"type": "number"}, {"type": "boolean"}]
# A flat object of strings, numbers and booleans (valid_metadata); in a merge patch a null value
# removes its key. Its 4 KB bound is the domain's alone.
METADATA: dict[str, Any] = {
    "additionalProperties": {"anyOf": _SCALAR},
    "propertyNames": {"minLength": 1, "pattern": NO_NUL},
}
METADATA_PATCH: dict[str, Any] = {
    **METADATA,
    "additionalProperties": {"anyOf": [*_SCALAR, {"type": "null"}]},
}
MAX_REPLY_TOKENS = 4096  # the most any model here is asked for; below its context, too
REPLY_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")
# The OpenAI-compatible routes take any reply length below the model's context (OpenAI's own
# bound); the schema states the configured model's (`declare_reply_limit`).
MAX_CONTEXT_TOKENS = 10_000_000


# What the speech engines know (alma.voice.tts), as the schema's enum and pattern.
VOICES: list[Any] = list(known_voices())
LANGUAGE = language_pattern()


def _whole(value: Any) -> Any:
    """JSON Schema's integers include 3.0; strict validation would refuse it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# After a field's bounds in its Annotated (before them, the schema would not read the bounds).
WHOLE = BeforeValidator(_whole)


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Voice(Request):
    """How a character (or one instance of it) speaks; unset fields fall back to the next layer:
    instance, then character, then the request's defaults."""

    language: str | None = Field(
        default=None,
        min_length=2,
        max_length=35,
        examples=["es"],
        description="es, en-US, ...",
        json_schema_extra={"pattern": LANGUAGE},
    )
    engine: Literal["gtts", "espeak"] | None = Field(
        default=None, description="gtts (online) or espeak (offline); unset = ALMA_TTS_ENGINE"
    )
    voice: str | None = Field(
        default=None,
        max_length=50,
        examples=["nova"],
        description="OpenAI's names or f1-f5, m1-m8",
        json_schema_extra={"enum": VOICES},
    )
    speed: float | None = Field(default=None, ge=0.25, le=4.0)

    @model_validator(mode="after")
    def _speakable(self) -> Voice:
        try:
            check_voice(VoiceSettings(self.language, self.engine, self.voice, self.speed or 1.0))
        except AudioError as error:
            raise ValueError(error.message) from None
        return self


TEXTS = Annotated[list[Annotated[str, Field(json_schema_extra=TEXT)]], Field(max_length=MAX_LIST)]


class CardFields(Request):
    """What a Character Card carries besides the persona (import fills them from a card)."""

    alternate_greetings: TEXTS | None = Field(
        default=None, description="openings besides `greeting` (POST .../greeting picks one)"
    )
    post_history_instructions: str | None = Field(
        default=None,
        description="a system message after the conversation, last in the prompt",
        json_schema_extra=TEXT,
    )
    creator_notes: str | None = Field(default=None, json_schema_extra=TEXT)
    tags: TEXTS | None = None
    creator: str | None = Field(default=None, json_schema_extra=TEXT)
    character_version: str | None = Field(default=None, json_schema_extra=TEXT)
    nickname: str | None = Field(
        default=None, description="the card's (V3); kept, not used", json_schema_extra=TEXT
    )
    card_extras: dict[str, Any] | None = Field(
        default=None,
        description="what the card carried that alma does not use, verbatim: "
        '`{"card": top-level fields, "data": fields of data}` (extensions, character_book, '
        "assets, ...); a PATCH merges into it",
    )


class CharacterCreate(CardFields):
    name: str = Field(examples=["Doña Rosa"], json_schema_extra=NAME)
    description: str = Field(
        examples=["Una curandera de Oaxaca que habla con refranes."], json_schema_extra=TEXT
    )
    personality: str | None = Field(default=None, json_schema_extra=TEXT)
    scenario: str | None = Field(default=None, json_schema_extra=TEXT)
    greeting: str | None = Field(default=None, json_schema_extra=TEXT)
    example_dialogue: str | None = Field(default=None, json_schema_extra=TEXT)
    system_prompt: str | None = Field(
        default=None,
        description="replaces alma's instruction; `{{original}}` in it stands for alma's",
        json_schema_extra=TEXT,
    )
    voice: Voice | None = None


class Edit(Request):
    """A PATCH body, read as a JSON merge patch (RFC 7396): a field left out stays as it is,
    null clears an optional field (back to its default), an object merges into the current one
    member by member. A required field cannot be null: its schema does not allow null, and the
    domain refuses it (422 naming it)."""

    def patch(self) -> dict[str, Any]:
        """The fields sent, nulls included."""
        return self.model_dump(exclude_unset=True)


class CharacterEdit(Edit, CardFields):
    name: str | SkipJsonSchema[None] = Field(default=None, json_schema_extra=NAME)
    description: str | None = Field(default=None, json_schema_extra=TEXT)
    personality: str | None = Field(default=None, json_schema_extra=TEXT)
    scenario: str | None = Field(default=None, json_schema_extra=TEXT)
    greeting: str | None = Field(default=None, json_schema_extra=TEXT)
    example_dialogue: str | None = Field(default=None, json_schema_extra=TEXT)
    system_prompt: str | None = Field(default=None, json_schema_extra=TEXT)
    voice: Voice | None = None


class InstanceCreate(Request):
    name: str = Field(examples=["Rosa de la sierra"], json_schema_extra=NAME)
    memory: str = Field(
        default="", examples=["Conoció al viajero en la feria de 1998."], json_schema_extra=TEXT
    )
    voice: Voice | None = Field(default=None, description="overrides the character's voice")
    user_name: str | None = Field(
        default=None,
        description="the user's name in this instance's chats: a card's {{user}}",
        json_schema_extra=NAME,
    )


class InstanceEdit(Edit):
    name: str | SkipJsonSchema[None] = Field(default=None, json_schema_extra=NAME)
    memory: str | None = Field(default=None, description='null: ""', json_schema_extra=TEXT)
    voice: Voice | None = Field(
        default=None,
        description="merged into the instance's voice settings; null: the character's voice again",
    )
    user_name: str | None = Field(default=None, description='null: "User"', json_schema_extra=NAME)


class InstanceFork(Request):
    name: str = Field(json_schema_extra=NAME)
    at_version: Annotated[int, Field(ge=1, le=MAX_POSITION), WHOLE] | None = Field(
        default=None, description="fork the instance as it was at this version"
    )
    at: UtcTime | None = Field(
        default=None,
        strict=False,
        description="or as it was at this time (ISO 8601; UTC if no offset)",
    )


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
    alternate_greetings: list[str]
    post_history_instructions: str
    creator_notes: str
    tags: list[str]
    creator: str
    character_version: str
    nickname: str
    card_extras: dict[str, Any] = Field(description="what its card carried that alma does not use")
    assets: dict[str, str] = Field(
        description="the files its CHARX carried besides card.json, by their path in it: each"
        " file's sha256 (GET .../export?format=charx gives them back)"
    )
    image: str | None = Field(
        description="the sha256 of the card's image (GET .../export?format=png gives it)"
    )
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
            alternate_greetings=character.alternate_greetings,
            post_history_instructions=character.post_history_instructions,
            creator_notes=character.creator_notes,
            tags=character.tags,
            creator=character.creator,
            character_version=character.character_version,
            nickname=character.nickname,
            card_extras=character.card_extras,
            assets=character.assets,
            image=character.image,
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
    voice: dict[str, Any] | None = Field(description="overrides of the character's voice")
    user_name: str | None = Field(description='the user\'s name in its chats; null: "User"')
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
            voice=instance.voice,
            user_name=instance.user_name,
            version=instance.version,
            created_at=instance.created_on,
            updated_at=instance.modified_on,
        )


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


class MemoryChangeOut(BaseModel):
    version: int
    timestamp: datetime
    actor: dict[str, str] | None
    kind: str = Field(description="memory_text, memory_added, memory_revised or memory_forgotten")
    memory_id: UUID | None = None
    before: str
    after: str
    diff: str
    source: dict[str, Any] | None = Field(
        default=None,
        description='what the change was derived from, e.g. {"messages": [ids]} for the '
        "memory process; null for changes made by hand",
    )

    @classmethod
    def of(cls, entry: AuditEntry) -> MemoryChangeOut:
        return cls(
            version=entry.version,
            timestamp=entry.timestamp,
            actor=entry.actor,
            kind=entry.kind,
            memory_id=entry.memory_id,
            before=entry.before,
            after=entry.after,
            diff=unified_diff(entry.before, entry.after, entry.version),
            source=entry.source,
        )


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None
    type: str | None = Field(default=None, description="OpenAI-compatible paths only")
    param: str | None = Field(default=None, description="OpenAI-compatible paths only")


class ErrorOut(BaseModel):
    error: ErrorDetail


# Every route can meet these: bad input, no key, not found or not yours, conflicts, the body
# limit, rate limits, the model upstream, a dependency down (the breaker answers before routing).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut}
    for status in (400, 401, 404, 409, 413, 415, 422, 429, 502, 503, 504)
}


class SkippedEvent(BaseModel):
    projection: str
    position: int = Field(description="the event's position in the log")
    originator_id: str = Field(description="the instance, character or memory it belongs to")
    error: str = Field(description="the kind of error (its text: `alma projections status`)")

    @classmethod
    def of(cls, skipped: Skipped) -> SkippedEvent:
        return cls(
            projection=skipped.projection,
            position=skipped.position,
            originator_id=skipped.originator_id,
            error=skipped.error_type,
        )


class ChatModelHealth(BaseModel):
    backend: Literal["hosted", "local"] = Field(
        description="hosted: OpenAI or the server at OPENAI_BASE_URL; local: llama.cpp in alma"
    )
    name: str = Field(description="ALMA_CHAT_MODEL (hosted) or ALMA_LOCAL_MODEL (local)")
    file: str | None = Field(description="the local model's GGUF file, once loaded")
    available: bool = Field(description="false: chat answers 503 chat_model_unavailable")
    error: str | None = Field(description="why it cannot answer: which file, how to get it")


class PartitionHealth(BaseModel):
    partition: int
    position: int = Field(description="how far in the event log this partition has read")
    lag_events: int = Field(description="events written after its position")
    lag_seconds: float = Field(
        description="how long the oldest event it has not read has waited; 0 when none"
    )
    owner: str | None = Field(
        description="the worker that owns it now (host:pid); null while no worker does"
    )


class Health(BaseModel):
    status: str = Field(
        description="ok; degraded when a store is down (503) or a projection skipped events "
        "it could not apply (200: this replica serves, and every replica would skip them)"
    )
    event_store: str = Field(description="the database: ok or down")
    vector_store: str = Field(description="Chroma: ok or down")
    projection_lag_events: int | None = Field(description="the largest lag; null when unknown")
    projections: dict[str, int] | None = Field(
        default=None, description="each projection's lag in events; null when the database is down"
    )
    projection_lag_seconds: dict[str, float] | None = Field(
        default=None,
        description="each projection's lag in seconds: how long the oldest event one of its "
        "partitions has not read has waited; null when the database is down",
    )
    partitions: dict[str, list[PartitionHealth]] | None = Field(
        default=None,
        description="each projection's partitions: position, lag and owning worker; null when "
        "the database is down",
    )
    model: str = Field(
        default="unknown", description="the last chat model call: ok, failing or unknown"
    )
    chat_model: ChatModelHealth | None = Field(
        default=None, description="which chat model answers, and whether it can"
    )
    skipped_events: list[SkippedEvent] | None = Field(
        default=None,
        description="events a projection could not apply and went on without, until a rebuild "
        "of that projection; null when the database is down",
    )


# A finite number from 0 to 1, which every store holds as it was given: declared here, checked
# by the domain (`valid_importance`, 422 invalid_input naming the field).
class MemoryCreate(Request):
    text: str = Field(
        examples=["Su hermana Lucía es enfermera en el hospital de Triana."],
        json_schema_extra=SNIPPET,
    )
    metadata: dict[str, Any] | None = Field(
        default=None, examples=[{"topic": "familia"}], json_schema_extra=METADATA
    )
    importance: float | None = Field(default=None, examples=[0.8], json_schema_extra=IMPORTANCE)
    occurred_at: UtcTime | None = Field(
        default=None,
        strict=False,
        examples=["2023-05-08T13:56:00Z"],
        description="when it happened (ISO 8601; UTC if no offset); default: when it is recorded",
    )
    speaker: str | None = Field(
        default=None, examples=["Caroline"], description="who said it", json_schema_extra=NAME
    )


class MemoryEdit(Edit):
    text: str | SkipJsonSchema[None] = Field(default=None, json_schema_extra=SNIPPET)
    metadata: dict[str, Any] | None = Field(
        default=None,
        description="merged key by key (a null value removes the key); null: {}",
        json_schema_extra=METADATA_PATCH,
    )
    importance: float | None = Field(
        default=None, description="null: 0.5", json_schema_extra=IMPORTANCE
    )
    occurred_at: UtcTime | None = Field(
        default=None,
        strict=False,
        description="ISO 8601, UTC if no offset; null: when it was recorded",
    )
    speaker: str | None = Field(default=None, description="null: none", json_schema_extra=NAME)


class MemoryOut(BaseModel):
    id: UUID
    instance_id: UUID
    text: str
    metadata: dict[str, Any]
    importance: float
    occurred_at: datetime = Field(description="when it happened (default: when it was recorded)")
    speaker: str | None = Field(description="who said it; null: nobody in particular")
    source: dict[str, Any] | None
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, memory: Memory) -> MemoryOut:
        return cls(
            id=memory.id,
            instance_id=memory.instance_id,
            text=memory.text,
            metadata=memory.metadata,
            importance=memory.importance,
            occurred_at=memory.occurred_at,
            speaker=memory.speaker,
            source=memory.source,
            version=memory.version,
            created_at=memory.created_on,
            updated_at=memory.modified_on,
        )


class WithdrawnMessage(BaseModel):
    id: str
    role: str
    content: str
    timestamp: datetime
    reason: Literal["source", "states"] = Field(
        description="source: the memory was formed from it; states: it says what the memory says"
    )
    words: float = Field(description="the share of the memory's words the message holds")
    similarity: float = Field(description="the cosine similarity of their meanings, -1 to 1")

    @classmethod
    def of(cls, withdrawal: Withdrawal) -> WithdrawnMessage:
        message = withdrawal.message
        return cls(
            id=message.doc_id,
            role=str(message.metadata.get("role", "")),
            content=message.text,
            timestamp=message.occurred_at,
            reason="source" if withdrawal.reason == "source" else "states",
            words=round(withdrawal.words, 6),
            similarity=round(withdrawal.similarity, 6),
        )


class MemoryForgotten(BaseModel):
    memory_id: UUID
    withdrawn: list[WithdrawnMessage] = Field(
        description="the messages taken out of recall with it, in the order they were said"
    )


class SearchResult(BaseModel):
    id: str
    text: str
    score: float
    metadata: dict[str, Any]
    source: str = Field(description="memory, message or memory_text (the instance's own text)")
    created_at: datetime = Field(
        description="when a snippet was added; for a message, when it was said; for the memory "
        "text, when it was written"
    )
    occurred_at: datetime = Field(
        description="when it happened: a snippet's occurred_at, a message's timestamp, when the "
        "memory text was written"
    )
    speaker: str | None = Field(
        description="who said it: a snippet's speaker, a message's name; null when unknown"
    )

    @classmethod
    def of(cls, hit: Hit) -> SearchResult:
        doc = hit.doc
        return cls(
            id=doc.doc_id,
            text=doc.text,
            score=round(hit.score, 6),
            metadata=doc.metadata,
            source=doc.kind,
            created_at=doc.created_at,
            occurred_at=doc.occurred_at,
            speaker=doc.speaker,
        )


class SearchResults(BaseModel):
    results: list[SearchResult]


class MessageIn(Request):
    role: str = Field(examples=["user"], json_schema_extra={"enum": list(ROLES)})
    content: str = Field(
        examples=["¿Te acuerdas del viaje a Lisboa?"], json_schema_extra=text_rule(MAX_TEXT, True)
    )
    timestamp: UtcTime | None = Field(
        default=None, strict=False, description="when it was said (ISO 8601; UTC if no offset)"
    )
    name: str | None = Field(
        default=None,
        examples=["Caroline"],
        description="who said it (OpenAI's field); an assistant's default: the instance's name",
        json_schema_extra=NAME,
    )
    metadata: dict[str, Any] | None = Field(default=None, json_schema_extra=METADATA)


class MessagesImport(Request):
    messages: list[MessageIn] = Field(min_length=1, max_length=1000)


class MessagesImported(BaseModel):
    ids: list[UUID]


class MessageOut(BaseModel):
    id: str
    role: str
    content: str
    name: str | None = Field(description="who said it; null when unknown")
    timestamp: datetime
    metadata: dict[str, Any]

    @classmethod
    def of(cls, message: Message) -> MessageOut:
        return cls(
            id=str(message.id),
            role=message.role,
            content=message.content,
            name=message.name,
            timestamp=message.sent_at,
            metadata={k: v for k, v in message.metadata.items() if k != "role"},
        )


class ChatRequest(Request):
    message: str = Field(
        examples=["¿Te acuerdas de mi hermana?"], json_schema_extra=text_rule(MAX_TEXT, True)
    )
    stream: bool = False
    max_tokens: Annotated[int, Field(ge=1, le=MAX_REPLY_TOKENS), WHOLE] = DEFAULT_REPLY_TOKENS
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    user_name: str | None = Field(
        default=None,
        description="who says the message (recorded as its name, and the card's {{user}}); "
        "default: the instance's user_name",
        json_schema_extra=NAME,
    )


class GreetingRequest(Request):
    index: Annotated[int, Field(ge=0, le=MAX_LIST), WHOLE] | None = Field(
        default=None,
        description="0: the character's greeting, n: its alternate greeting n; null: one of "
        "them at random",
    )


class MemoryUsed(BaseModel):
    id: str
    text: str
    score: float
    source: str


class LoreUsed(BaseModel):
    id: str = Field(description="`<lorebook id>:<entry id>`, as the reply's event records it")
    lorebook_id: UUID
    entry_id: int
    position: str = Field(description="before_char, after_char or at_depth")


class TurnOut(BaseModel):
    version: int
    message_id: UUID
    reply_id: UUID


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class ChatResponse(BaseModel):
    reply: str
    turn: TurnOut
    model: str = Field(description="the model that answered (local/... for the offline one)")
    memories_used: list[MemoryUsed]
    memories_unavailable: bool = Field(
        default=False,
        description="true when the vector store was down and the reply had no retrieved memories",
    )
    memories_behind: bool = Field(
        default=False,
        description="true when the memory index had not reached the instance's latest write "
        "within ALMA_CHAT_MEMORY_WAIT_S: the reply was made without what it lacked",
    )
    lore_used: list[LoreUsed] = Field(
        default_factory=list, description="the lorebook entries the prompt held"
    )
    usage: Usage

    @classmethod
    def of(cls, result: TurnResult) -> ChatResponse:
        return cls(
            reply=result.reply,
            turn=TurnOut(
                version=result.version, message_id=result.message_id, reply_id=result.reply_id
            ),
            model=result.model,
            memories_used=[
                MemoryUsed(
                    id=hit.doc.doc_id,
                    text=hit.doc.text,
                    score=round(hit.score, 6),
                    source=hit.doc.kind,
                )
                for hit in result.memories_used
            ],
            memories_unavailable=result.memories_unavailable,
            memories_behind=result.memories_behind,
            lore_used=[
                LoreUsed(
                    id=entry.id,
                    lorebook_id=UUID(entry.id.split(":")[0]),
                    entry_id=int(entry.id.split(":")[1]),
                    position=entry.position,
                )
                for entry in result.lore_used
            ],
            usage=Usage(
                prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens
            ),
        )


def declare_reply_limit(schema: dict[str, Any], context_window: int) -> None:
    """Bounds every `max_tokens` of the OpenAPI schema as the chat turn does: below the chat
    model's context (`alma.chat.turns`), which the app knows only once configured."""
    for model in schema.get("components", {}).get("schemas", {}).values():
        for name, field in model.get("properties", {}).items():
            if name in REPLY_TOKEN_FIELDS:
                for spec in [field, *field.get("anyOf", [])]:
                    if "maximum" in spec:
                        spec["maximum"] = min(spec["maximum"], context_window - 1)


# Audio, in OpenAI's shapes, and the voice turn.

AudioFormat = Literal["mp3", "wav", "opus", "flac", "aac", "pcm"]


class SpeechRequest(BaseModel):
    """OpenAI's request, with alma's `language` and `engine`; other OpenAI fields are accepted."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(default="tts-1", max_length=100, description="accepted, not used")
    input: str = Field(
        min_length=1,
        max_length=4096,
        pattern=VISIBLE_TEXT,
        examples=["¡Hola, corazón!"],
    )
    voice: str = Field(
        default="alloy",
        max_length=100,
        description="OpenAI's voice names, an espeak-ng variant (f1-f5, m1-m8), or the id of an "
        "instance or character to speak with its voice settings",
        json_schema_extra={"anyOf": [{"enum": VOICES}, {"format": "uuid"}]},
    )
    response_format: AudioFormat = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    language: str | None = Field(
        default=None,
        min_length=2,
        max_length=35,
        examples=["es"],
        json_schema_extra={"pattern": LANGUAGE},
    )
    engine: Literal["gtts", "espeak"] | None = None


class TranscriptionOut(BaseModel):
    text: str
    language: str = Field(description="of the text")
    duration: float


class TranslationOut(TranscriptionOut):
    spoken_language: str = Field(description="the language heard: given, or detected")


class VoiceTurnOut(BaseModel):
    transcript: str = Field(description="what the user said, as recorded")
    language: str = Field(description="of the user's speech: given, or detected")
    reply: str
    audio_base64: str = Field(description="the reply spoken in the character's voice")
    audio_format: AudioFormat
    tts_engine: str
    tts_fallback: str | None
    turn: TurnOut
    model: str
    memories_used: list[MemoryUsed]
    memories_unavailable: bool = Field(
        default=False, description="as in a chat turn's answer: recalled nothing, store down"
    )
    memories_behind: bool = Field(
        default=False, description="as in a chat turn's answer: the index lacked the newest"
    )
    lore_used: list[LoreUsed] = Field(
        default_factory=list, description="as in a chat turn's answer: the lorebook entries"
    )
    usage: Usage

    @classmethod
    def of(cls, voice: VoiceReply, audio_format: AudioFormat) -> VoiceTurnOut:
        chat = ChatResponse.of(voice.result)
        return cls(
            transcript=voice.heard.text,
            language=voice.heard.language,
            reply=voice.result.reply,
            audio_base64=base64.b64encode(voice.spoken.audio).decode(),
            audio_format=audio_format,
            tts_engine=voice.spoken.engine,
            tts_fallback=voice.spoken.fallback,
            turn=chat.turn,
            model=chat.model,
            memories_used=chat.memories_used,
            memories_unavailable=chat.memories_unavailable,
            memories_behind=chat.memories_behind,
            lore_used=chat.lore_used,
            usage=chat.usage,
        )


# OpenAI-compatible chat.


class OpenAIContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["text"], description="text; any other kind is refused (400)")
    text: str | None = None


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[OpenAIContentPart] | None = Field(
        default=None, description="text, or a list of text parts (joined by line breaks)"
    )
    name: str | None = Field(
        default=None,
        description="who says it; the last user message's is recorded as its name (its speaker)",
        json_schema_extra=NAME,
    )


class OpenAISampling(BaseModel):
    """The fields of OpenAI's requests that alma takes: passed to the model, or without effect.
    Any other is refused by name (400, `chat.openai_compat`), so the schema declares none."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": False})

    model: str = Field(description="an instance id, or '<character>/<instance>' by name")
    stream: bool = False
    max_tokens: int | None = Field(
        default=None, ge=1, le=MAX_CONTEXT_TOKENS, description="below the model's context"
    )
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    stop: str | list[str] | None = Field(default=None, description="up to 4 sequences")
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # Above 1 is refused with the reason (400), which the schema declares as its maximum.
    n: int | None = Field(
        default=None, ge=1, description="one reply per turn", json_schema_extra={"maximum": 1}
    )
    stream_options: dict[str, Any] | None = Field(
        default=None, description="without effect: the last streamed chunk carries `usage`"
    )
    store: bool | None = Field(default=None, description="without effect")
    metadata: dict[str, str] | None = Field(default=None, description="without effect")
    service_tier: str | None = Field(default=None, description="without effect")

    def fields(self) -> dict[str, Any]:
        """Every field but those the turn takes itself."""
        return self.model_dump(exclude=_TURN_FIELDS, exclude_none=True)


class ChatCompletionRequest(OpenAISampling):
    """OpenAI's request."""

    messages: list[OpenAIMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(
        default=None, ge=1, le=MAX_CONTEXT_TOKENS, description="below the model's context"
    )
    tools: list[dict[str, Any]] | None = Field(default=None, description="passed to the model")
    tool_choice: str | dict[str, Any] | None = Field(
        default=None, description="passed to the model"
    )
    parallel_tool_calls: bool | None = Field(default=None, description="passed to the model")
    functions: list[dict[str, Any]] | None = Field(
        default=None, description="OpenAI's legacy tools: passed to the model"
    )
    function_call: str | dict[str, Any] | None = Field(
        default=None, description="passed to the model"
    )
    response_format: dict[str, Any] | None = Field(
        default=None, description="text, json_object or json_schema: passed to the model"
    )


class CompletionRequest(OpenAISampling):
    """OpenAI's legacy completion request: the prompt is the user's turn."""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] = Field(
        description="the user's message (a list: of one)"
    )


class ResponsesContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = Field(
        examples=["input_text"], description="input_text or output_text; any other is refused (400)"
    )
    text: str | None = None


ResponsesContent = str | list[ResponsesContentPart]


class ResponsesMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: ResponsesContent = Field(description="text, or text parts (joined by line breaks)")


class ResponsesFunctionCall(BaseModel):
    """A tool the model called, as an earlier response gave it."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str


class ResponsesFunctionCallOutput(BaseModel):
    """What the client's tool answered to a call."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function_call_output"]
    call_id: str
    output: ResponsesContent


class ResponsesOtherItem(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = Field(description="any other kind of item is refused (400)")


def _item_kind(item: Any) -> str:
    kind = item.get("type", "message") if isinstance(item, dict) else getattr(item, "type", None)
    return kind if kind in ("message", "function_call", "function_call_output") else "other"


ResponsesItem = Annotated[
    Annotated[ResponsesMessage, Tag("message")]
    | Annotated[ResponsesFunctionCall, Tag("function_call")]
    | Annotated[ResponsesFunctionCallOutput, Tag("function_call_output")]
    | Annotated[ResponsesOtherItem, Tag("other")],
    Discriminator(_item_kind),
]


class ResponsesRequest(BaseModel):
    """OpenAI's Responses request. The fields alma takes are declared; any other is refused by
    name (400, `chat.openai_responses`), so the schema declares none."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": False})

    model: str = Field(description="an instance id, or '<character>/<instance>' by name")
    input: str | Annotated[list[ResponsesItem], Field(min_length=1)] = Field(
        description="the user's message, or items: messages (the last user one is the new "
        "turn), function calls and their outputs"
    )
    instructions: str | None = Field(
        default=None, description="as the client's system message: after the persona"
    )
    previous_response_id: str | None = Field(
        default=None, description="go on from the recorded turns up to this response's reply"
    )
    stream: bool = False
    max_output_tokens: int | None = Field(
        default=None, ge=1, le=MAX_CONTEXT_TOKENS, description="below the model's context"
    )
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    user: str | None = None
    tools: list[dict[str, Any]] | None = Field(
        default=None, description="function tools, passed to the model"
    )
    tool_choice: str | dict[str, Any] | None = Field(
        default=None, description="passed to the model"
    )
    parallel_tool_calls: bool | None = Field(default=None, description="passed to the model")
    text: dict[str, Any] | None = Field(
        default=None, description="format: text, json_object or json_schema, passed to the model"
    )
    store: bool | None = Field(default=None, description="without effect: every turn is recorded")
    metadata: dict[str, str] | None = Field(default=None, description="without effect")
    service_tier: str | None = Field(default=None, description="without effect")

    def input_items(self) -> str | list[dict[str, Any]]:
        """The input as text, or its items as they were sent."""
        if isinstance(self.input, str):
            return self.input
        return [item.model_dump(exclude_none=True) for item in self.input]

    def fields(self) -> dict[str, Any]:
        """Every field but those the turn takes itself."""
        return self.model_dump(exclude=_RESPONSE_FIELDS, exclude_none=True)


_RESPONSE_FIELDS = {
    "model",
    "input",
    "instructions",
    "previous_response_id",
    "stream",
    "max_output_tokens",
    "temperature",
}


EmbeddedText = Annotated[str, Field(json_schema_extra=text_rule(MAX_TEXT, visible=True))]


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request, answered with alma's own embedding model."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="any name: alma's embedding model answers (see `model`)")
    input: EmbeddedText | Annotated[list[EmbeddedText], Field(min_length=1, max_length=2048)] = (
        Field(description="a text, or 1 to 2048 texts")
    )
    encoding_format: Literal["float", "base64"] = "float"
    # The model's own size only (else 400), which is known once the model loads, not when the
    # schema is made: so the schema leaves it out.
    dimensions: SkipJsonSchema[int | None] = None
    user: str | None = None


_TURN_FIELDS = {
    "model",
    "messages",
    "prompt",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
}


class GreetingOut(BaseModel):
    id: UUID = Field(description="the message's id: the instance's first, the character's")
    index: int = Field(description="0: the greeting, n: alternate greeting n")
    content: str = Field(description="as recorded: its macros filled")
