"""Typed dependencies shared by the routes: the services each route uses (taken from the one
composition root), the caller, the actor, If-Match, paging."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic.json_schema import SkipJsonSchema
from starlette.concurrency import run_in_threadpool

from alma.api.consistency import CaughtUp
from alma.api.errors import ApiError
from alma.api.pagination import CURSOR, ListingPages
from alma.api.probes import StoreProbes
from alma.api.schemas import UtcTime
from alma.api.security import RateLimiter
from alma.api.services import ChatModelState, Services, WarmSoon
from alma.chat.cards import Cards
from alma.chat.turns import Chat
from alma.domain import Actor, Alma
from alma.projections import Conversation, MemoryAudit, MemoryIndex, Period
from alma.settings import Settings
from alma.voice import Speech

_bearer = HTTPBearer(auto_error=False, description="An API key from `alma keys create`")


# The services below are taken from the composition root the lifespan keeps on app.state. Each
# is a plain attribute read, so it runs on the event loop (`async`) rather than in a thread.
async def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


_Root = Annotated[Services, Depends(_services)]


async def _alma(services: _Root) -> Alma:
    return services.app


async def _settings(services: _Root) -> Settings:
    return services.settings


async def _listing(services: _Root) -> ListingPages:
    caught_up = CaughtUp(services.listings, services.settings.read_model_wait_s)
    return ListingPages(services.listings_view, caught_up)


async def _memory_index(services: _Root) -> MemoryIndex:
    return services.memory_index


async def _index_caught_up(services: _Root) -> CaughtUp:
    return CaughtUp(services.memory, services.settings.consistency_wait_s)


async def _conversation(services: _Root) -> Conversation:
    return services.conversation_view


async def _conversation_caught_up(services: _Root) -> CaughtUp:
    return CaughtUp(services.conversation, services.settings.consistency_wait_s)


async def _audit(services: _Root) -> MemoryAudit:
    return services.audit_view


async def _audit_caught_up(services: _Root) -> CaughtUp:
    return CaughtUp(services.memory_audit, services.settings.consistency_wait_s)


async def _cards(services: _Root) -> Cards:
    return services.cards


async def _chat(services: _Root) -> Chat:
    return services.chat


def _speech(services: _Root) -> Speech:
    # Made on first use (a lock, and the engines' settings): a thread, not the event loop.
    return services.speech()


async def _store_probes(services: _Root) -> StoreProbes:
    return StoreProbes(
        services.followers, services.memory_index.vectors, services.breaker, services.skips
    )


async def _chat_model(services: _Root) -> ChatModelState:
    return services.chat_model_state()


async def _warm(services: _Root) -> WarmSoon:
    return services.warm_soon


AlmaApp = Annotated[Alma, Depends(_alma)]  # commands, and state now or back then
AppSettings = Annotated[Settings, Depends(_settings)]
Listing = Annotated[ListingPages, Depends(_listing)]  # characters and instances, by page
Index = Annotated[MemoryIndex, Depends(_memory_index)]  # memories, search, messages, audit
IndexCaughtUp = Annotated[CaughtUp, Depends(_index_caught_up)]  # read-your-writes for Index
ConversationLog = Annotated[Conversation, Depends(_conversation)]  # an instance's messages
ConversationCaughtUp = Annotated[CaughtUp, Depends(_conversation_caught_up)]
Audit = Annotated[MemoryAudit, Depends(_audit)]  # how an instance's memory changed
AuditCaughtUp = Annotated[CaughtUp, Depends(_audit_caught_up)]
ChatTurns = Annotated[Chat, Depends(_chat)]  # a turn: recall, prompt, model, record
# Has the local model read instances' next prompts ahead of their chats (hosted: nothing).
PromptWarmer = Annotated[WarmSoon, Depends(_warm)]
CharacterCards = Annotated[Cards, Depends(_cards)]  # cards in and out, and greetings
SpeechEngines = Annotated[Speech, Depends(_speech)]  # text to speech, speech to text
Probes = Annotated[StoreProbes, Depends(_store_probes)]
ChatModelNow = Annotated[ChatModelState, Depends(_chat_model)]  # which answers, and if it can


@dataclass(frozen=True)
class Caller:
    tenant: str
    key_id: str
    request_id: str

    @property
    def actor(self) -> Actor:
        return Actor(self.tenant, self.key_id, self.request_id)


async def _caller(
    request: Request,
    app: AlmaApp,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiError(401, "unauthorized", "send an API key as 'Authorization: Bearer <key>'")
    key = await run_in_threadpool(app.authenticate, credentials.credentials)
    if key is None:
        raise ApiError(401, "unauthorized", "the API key is unknown or revoked")
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    wait = limiter.take(str(key.id)) if limiter else None
    if wait is not None:
        raise ApiError(
            429,
            "rate_limited",
            f"too many requests for this API key; try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    return Caller(key.tenant, str(key.id), request.state.request_id)


CurrentCaller = Annotated[Caller, Depends(_caller)]


# What _expected_version reads: a version number, maybe quoted, maybe weak (3, "3", W/"3").
IF_MATCH = r'^[ \t]*(W/)?"*[0-9]*[1-9][0-9]*"*[ \t]*$'


async def _expected_version(
    if_match: Annotated[
        str | SkipJsonSchema[None],
        Header(
            description="The version you last saw; a stale one answers 409",
            json_schema_extra={"pattern": IF_MATCH},
        ),
    ] = None,
) -> int | None:
    if if_match is None:
        return None
    value = if_match.strip().removeprefix("W/").strip('"')
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise ApiError(400, "bad_if_match", "If-Match must be a version number, like 3")
    return int(value)


ExpectedVersion = Annotated[int | None, Depends(_expected_version)]
Erase = Annotated[
    bool,
    Query(
        description="Hard delete: destroy the key its events are encrypted with, so its text "
        "can never be read again, by any endpoint or from the database files"
    ),
]
Limit = Annotated[int, Query(ge=1, le=500, description="Items per page")]
Cursor = Annotated[
    str | None,
    Query(description="The next_cursor of the page before", json_schema_extra={"pattern": CURSOR}),
]


@dataclass(frozen=True)
class PointInTime:
    version: int | None
    at: datetime | None


async def _point_in_time(
    version: Annotated[int | None, Query(ge=1, description="State at this version")] = None,
    at: Annotated[
        UtcTime | None, Query(description="State at this time (ISO 8601; UTC if no offset)")
    ] = None,
) -> PointInTime:
    if version is not None and at is not None:
        raise ApiError(400, "bad_request", "give either version or at, not both")
    return PointInTime(version, at)


AsOf = Annotated[PointInTime, Depends(_point_in_time)]


async def _period(
    since: Annotated[
        UtcTime | None,
        Query(description="only what happened at or after this time (ISO 8601; UTC if no offset)"),
    ] = None,
    until: Annotated[
        UtcTime | None,
        Query(description="only what happened at or before this time (ISO 8601; UTC if no offset)"),
    ] = None,
) -> Period | None:
    """The period a search keeps to; `since` after `until` is refused (422 naming `since`)."""
    return None if since is None and until is None else Period(since, until)


Within = Annotated[Period | None, Depends(_period)]
