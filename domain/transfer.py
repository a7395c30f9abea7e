"""Moving a tenant between stores: its events out as JSON lines, and into another store as they
were (same aggregate ids, versions, timestamps and fields).

One line per event, in the order of the log:
`{"id": aggregate id, "version": n, "topic": event class, "state": the event's fields}`, the
fields as the store's JSON transcoder writes them (UUIDs and times tagged with their types).

What goes: every event of the tenant's characters, instances, instance names, memories,
lorebooks and the lists of lorebooks attached to its characters and instances.
What stays: API keys (hashes of secrets that belong to the old store: issue new keys), snapshots
and read models (the target rebuilds them from the events), and erased data — an aggregate's
history is exported up to its first event that can no longer be decoded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, cast
from uuid import UUID

from eventsourcing.domain import DomainEvent
from eventsourcing.utils import get_topic, resolve_topic

from alma.domain.application import Alma
from alma.domain.character import Character
from alma.domain.errors import Erased, InvalidInput
from alma.domain.instance import Instance, InstanceName
from alma.domain.lorebook import AttachedLorebooks, Lorebook
from alma.domain.memory import Memory
from alma.domain.rules import valid_tenant
from alma.domain.topics import is_domain_topic

EXPORTED = (
    Character.Event,
    Instance.Event,
    InstanceName.Event,
    Memory.Event,
    Lorebook.Event,
    AttachedLorebooks.Event,
)
_PAGE = 500


@dataclass(frozen=True)
class Summary:
    events: int
    aggregates: int


def _exported_class(topic: str) -> type[DomainEvent] | None:
    """The event class of a topic, if its events travel (topics outside the domain never load)."""
    if not is_domain_topic(topic):
        return None
    try:
        cls = resolve_topic(topic)
    except Exception:
        return None
    return cls if isinstance(cls, type) and issubclass(cls, EXPORTED) else None


def tenant_events(app: Alma, tenant: str) -> Iterator[DomainEvent]:
    """The tenant's events in log order. An aggregate is the tenant's when its first event says
    so; one whose event cannot be decoded (erased) ends there."""
    valid_tenant(tenant)
    owner: dict[UUID | str, str] = {}
    cut: set[UUID | str] = set()
    start = 1
    while True:
        page = app.recorder.select_notifications(start=start, limit=_PAGE)
        for notification in page:
            aggregate_id = notification.originator_id
            if aggregate_id in cut or _exported_class(notification.topic) is None:
                continue
            if notification.originator_version > 1 and owner.get(aggregate_id) != tenant:
                continue
            try:
                event = app.mapper.to_domain_event(notification)
            except Erased:
                cut.add(aggregate_id)
                continue
            if notification.originator_version == 1:
                owner[aggregate_id] = getattr(event, "tenant", "")
                if owner[aggregate_id] != tenant:
                    continue
            yield cast(DomainEvent, event)
        if len(page) < _PAGE:
            return
        start = page[-1].id + 1


def export_tenant(app: Alma, tenant: str, out: IO[str]) -> Summary:
    events = 0
    aggregates: set[UUID] = set()
    transcoder = app.mapper.transcoder
    for event in tenant_events(app, tenant):
        state = dict(vars(event))
        aggregate_id = state.pop("originator_id")
        version = state.pop("originator_version")
        line = {
            "id": str(aggregate_id),
            "version": version,
            "topic": get_topic(type(event)),
            "state": json.loads(transcoder.encode(state)),
        }
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
        events += 1
        aggregates.add(aggregate_id)
    return Summary(events, len(aggregates))


def _event(app: Alma, number: int, line: str) -> DomainEvent:
    try:
        fields = json.loads(line)
        cls = _exported_class(str(fields["topic"]))
        if cls is None:
            raise ValueError(f"unknown event type {fields['topic']!r}")
        state: dict[str, Any] = app.mapper.transcoder.decode(json.dumps(fields["state"]).encode())
        if not isinstance(state, dict):
            raise ValueError("state must be an object")
        state["originator_id"] = UUID(str(fields["id"]))
        version = fields["version"]
        if not isinstance(version, int) or version < 1:
            raise ValueError("version must be a positive integer")
        state["originator_version"] = version
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidInput(f"line {number}: {error}", "file") from None
    event = object.__new__(cls)  # as the library's mapper makes events from stored ones
    object.__setattr__(event, "__dict__", state)
    return event


def read_events(app: Alma, lines: Iterable[str]) -> list[DomainEvent]:
    """Every event of an export, checked: known types, each aggregate's versions 1, 2, 3…"""
    events: list[DomainEvent] = []
    last: dict[UUID, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        event = _event(app, number, line)
        expected = last.get(event.originator_id, 0) + 1
        if event.originator_version != expected:
            raise InvalidInput(
                f"line {number}: {event.originator_id} version {event.originator_version} "
                f"where {expected} was expected",
                "file",
            )
        last[event.originator_id] = expected
        events.append(event)
    return events


def import_events(app: Alma, events: list[DomainEvent]) -> Summary:
    """Writes the events in one transaction, refusing a store that has any of their aggregates
    already (nothing is written then)."""
    ids = list(dict.fromkeys(event.originator_id for event in events))
    present = [i for i in ids if app.recorder.select_events(i, limit=1)]
    if present:
        raise InvalidInput(
            f"this store already has {len(present)} of the {len(ids)} aggregates "
            f"(for example {present[0]}): import into a store without them",
            "file",
        )
    if events:
        app.events.put(events)
    return Summary(len(events), len(ids))
