"""Replay and audit: an aggregate's own event stream, and every change of an instance's memory."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from eventsourcing.domain import Aggregate
from fastapi import APIRouter, Query

from alma.api.deps import AlmaApp, Audit, AuditCaughtUp, CurrentCaller, Cursor, Limit
from alma.api.pagination import MAX_POSITION, decode_cursor, encode_cursor
from alma.api.schemas import EventOut, MemoryChangeOut, Page
from alma.domain import Alma, Character, Instance

router = APIRouter(tags=["events"])

AfterVersion = Annotated[
    int | None, Query(ge=0, le=MAX_POSITION, description="Only events after this version")
]
EventType = Annotated[
    str | None, Query(max_length=100, description="Only events of this type, e.g. Renamed")
]


def events_page(
    app: Alma,
    caller: CurrentCaller,
    aggregate_type: type[Aggregate],
    aggregate_id: UUID,
    after_version: int | None,
    cursor: str | None,
    limit: int,
    event_type: str | None,
) -> Page[EventOut]:
    after = decode_cursor(cursor) if cursor else (after_version or 0)
    events = list(app.stream(caller.tenant, aggregate_type, aggregate_id, after, limit, event_type))
    next_cursor = encode_cursor(events[-1].originator_version) if len(events) == limit else None
    return Page[EventOut](items=[EventOut.of(e) for e in events], next_cursor=next_cursor)


@router.get("/v1/instances/{instance_id}/events")
def instance_events(
    instance_id: UUID,
    caller: CurrentCaller,
    app: AlmaApp,
    after_version: AfterVersion = None,
    cursor: Cursor = None,
    limit: Limit = 50,
    type: EventType = None,
) -> Page[EventOut]:
    """The instance's own events, oldest first. It keeps answering after `DELETE`: a deleted
    (archived) instance's events are kept for audit."""
    return events_page(app, caller, Instance, instance_id, after_version, cursor, limit, type)


@router.get("/v1/characters/{character_id}/events")
def character_events(
    character_id: UUID,
    caller: CurrentCaller,
    app: AlmaApp,
    after_version: AfterVersion = None,
    cursor: Cursor = None,
    limit: Limit = 50,
    type: EventType = None,
) -> Page[EventOut]:
    """The character's own events, oldest first. It keeps answering after `DELETE`: a deleted
    (archived) character's events are kept for audit."""
    return events_page(app, caller, Character, character_id, after_version, cursor, limit, type)


@router.get("/v1/instances/{instance_id}/memory/audit")
def memory_audit(
    instance_id: UUID,
    caller: CurrentCaller,
    app: AlmaApp,
    audit: Audit,
    caught_up: AuditCaughtUp,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> Page[MemoryChangeOut]:
    """Every change of the instance's memory text and of its memory snippets, oldest first."""
    app.owned(Instance, caller.tenant, instance_id, None)
    caught_up()
    entries = audit.audit(instance_id, decode_cursor(cursor), limit)
    next_cursor = encode_cursor(entries[-1].position) if len(entries) == limit else None
    return Page[MemoryChangeOut](
        items=[MemoryChangeOut.of(e) for e in entries], next_cursor=next_cursor
    )
