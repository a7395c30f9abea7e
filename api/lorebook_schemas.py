"""Request and response bodies of lorebooks (world info) and their entries."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from alma.api.schemas import NAME, TEXT, WHOLE, Edit, Request
from alma.domain import Lorebook
from alma.domain.lorebook import MAX_ATTACHED, MAX_DEPTH, MAX_ENTRIES, MAX_KEYS
from alma.domain.rules import MAX_NAME

Keys = Annotated[list[Annotated[str, Field(max_length=MAX_NAME)]], Field(max_length=MAX_KEYS)]
Depth = Annotated[int, Field(ge=0, le=MAX_DEPTH), WHOLE]
Whole = Annotated[int, Field(ge=-(10**9), le=10**9), WHOLE]
Logic = Literal["and_any", "and_all", "not_any", "not_all"]
Position = Literal["before_char", "after_char", "at_depth"]


class LoreEntryEdit(Edit):
    """An entry's fields; in a PATCH, null puts a field back to its default."""

    keys: Keys | None = Field(
        default=None,
        examples=[["Lucía", "/herman[ao]s?/i"]],
        description="words, or `/regex/flags` (JavaScript's i, m, s; g, u, y ignored)",
    )
    secondary_keys: Keys | None = None
    selective: bool | None = Field(default=None, description="use secondary_keys (default true)")
    selective_logic: Logic | None = Field(default=None, description="default and_any")
    content: str | None = Field(default=None, json_schema_extra=TEXT)
    comment: str | None = Field(default=None, json_schema_extra=TEXT)
    constant: bool | None = Field(default=None, description="always in (default false)")
    enabled: bool | None = Field(default=None, description="default true")
    case_sensitive: bool | None = Field(default=None, description="default false")
    match_whole_words: bool | None = Field(default=None, description="default false")
    insertion_order: Whole | None = Field(default=None, description="lower goes first; 100")
    position: Position | None = Field(default=None, description="default before_char")
    depth: Depth | None = Field(default=None, description="for at_depth: messages from the end")
    priority: Whole | None = Field(
        default=None, description="kept first when the budget runs out; default insertion_order"
    )
    scan_depth: Depth | None = Field(default=None, description="default: the book's")
    exclude_recursion: bool | None = None
    prevent_recursion: bool | None = None
    vectorized: bool | None = Field(
        default=None,
        description="also called up by meaning, when the new message is about its content"
        " (default false)",
    )
    extensions: dict[str, Any] | None = Field(default=None, description="a card's, verbatim")
    extra: dict[str, Any] | None = Field(
        default=None, description="fields of imported formats alma does not use, verbatim"
    )


class LoreEntryCreate(LoreEntryEdit):
    content: str = Field(json_schema_extra=TEXT)
    id: Annotated[int, Field(ge=0, le=10**9), WHOLE] | None = Field(
        default=None, description="in a new lorebook; default: the next free"
    )


class LorebookEdit(Edit):
    name: str | SkipJsonSchema[None] = Field(default=None, json_schema_extra=NAME)
    description: str | None = Field(default=None, json_schema_extra=TEXT)
    scan_depth: Depth | None = Field(default=None, description="messages scanned; default 2")
    token_budget: Annotated[int, Field(ge=1, le=10**7), WHOLE] | None = Field(
        default=None, description="at most this many tokens of entries; default: no own limit"
    )
    recursive_scanning: bool | None = Field(
        default=None, description="activated entries' content activates others; default false"
    )
    min_score: Annotated[float, Field(ge=-1, le=1)] | None = Field(
        default=None,
        description="how close in meaning a message must be to call up a vectorized entry;"
        " default: the embedding model's own",
    )
    extensions: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None


class LorebookCreate(LorebookEdit):
    name: str = Field(examples=["La sierra"], json_schema_extra=NAME)
    entries: list[LoreEntryCreate] = Field(default_factory=list, max_length=MAX_ENTRIES)

    def settings(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True, exclude={"entries"})

    def entry_fields(self) -> list[dict[str, Any]]:
        return [entry.patch() for entry in self.entries]


class LoreEntryOut(BaseModel):
    id: int
    keys: list[str]
    secondary_keys: list[str]
    selective: bool
    selective_logic: str
    content: str
    comment: str
    constant: bool
    enabled: bool
    case_sensitive: bool | None
    match_whole_words: bool | None
    insertion_order: int
    position: str
    depth: int
    priority: int | None
    scan_depth: int | None
    exclude_recursion: bool
    prevent_recursion: bool
    vectorized: bool
    extensions: dict[str, Any]
    extra: dict[str, Any]


class LorebookOut(BaseModel):
    id: UUID
    name: str
    description: str
    scan_depth: int
    token_budget: int | None
    recursive_scanning: bool
    min_score: float | None
    extensions: dict[str, Any]
    extra: dict[str, Any]
    entries: list[LoreEntryOut]
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, book: Lorebook) -> LorebookOut:
        return cls(
            id=book.id,
            **book.settings,
            entries=[LoreEntryOut(**e) for e in book.in_order()],
            version=book.version,
            created_at=book.created_on,
            updated_at=book.modified_on,
        )


class LorebookEntryWritten(BaseModel):
    """An entry as written, with the lorebook's version after the change."""

    entry: LoreEntryOut
    version: int


class AttachedLorebooksIn(Request):
    lorebook_ids: list[Annotated[UUID, Field(strict=False)]] = Field(max_length=MAX_ATTACHED)


class AttachedLorebooksOut(BaseModel):
    lorebook_ids: list[UUID]
