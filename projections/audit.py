"""The memory audit read model: every change of an instance's memory text and of its memory
snippets, with the text before and after. It embeds nothing, so it keeps up with the log however
far the memory index lags.

To say what a change replaced, it keeps the current memory text of each live instance and the
current text of each live snippet. A deleted instance's entries stay; an erased one's go.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from alma.domain import Instance, Memory
from alma.projections.sql_model import SqlReadModel
from alma.stores.sql import Cursor


@dataclass(frozen=True)
class AuditEntry:
    instance_id: UUID
    position: int
    version: int
    timestamp: datetime
    actor: dict[str, str] | None
    kind: str  # "memory_text", "memory_added", "memory_revised" or "memory_forgotten"
    memory_id: UUID | None
    before: str
    after: str
    source: dict[str, Any] | None  # the memory's provenance, as its event recorded it


class MemoryAudit(SqlReadModel):
    name = "memory-audit"
    tables = ("audit_entries", "audit_texts", "audit_memories")
    schema = (
        """CREATE TABLE IF NOT EXISTS audit_entries (
            instance_id TEXT NOT NULL, position BIGINT NOT NULL, version INTEGER NOT NULL,
            timestamp TEXT NOT NULL, actor TEXT NOT NULL, kind TEXT NOT NULL, memory_id TEXT,
            before TEXT NOT NULL, after TEXT NOT NULL, source TEXT,
            PRIMARY KEY (instance_id, position))""",
        """CREATE TABLE IF NOT EXISTS audit_texts (
            instance_id TEXT PRIMARY KEY, text TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS audit_memories (
            memory_id TEXT PRIMARY KEY, instance_id TEXT NOT NULL, text TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS audit_memories_by_instance ON audit_memories (instance_id)",
    )

    def write(self, cursor: Cursor, batch: Sequence[tuple[Any, int]]) -> bool:
        # Statement by statement, so each event reads what the ones before it wrote: memory
        # changes are few beside the messages, which pass by.
        erased = False
        for event, position in batch:
            handler = _HANDLERS.get(type(event))
            if handler is not None:
                handler(cursor, event, position)
                erased = erased or type(event) is Instance.Erased
        return erased

    def audit(self, instance_id: UUID, after: int, limit: int) -> list[AuditEntry]:
        """The changes of the instance's memory after position `after`, oldest first."""
        rows = self.store.query(
            "SELECT position, version, timestamp, actor, kind, memory_id, before, after, source "
            "FROM audit_entries WHERE instance_id = %s AND position > %s "
            "ORDER BY position LIMIT %s",
            (str(instance_id), after, limit),
        )
        return [
            AuditEntry(
                instance_id,
                int(r[0]),
                int(r[1]),
                datetime.fromisoformat(r[2]),
                json.loads(r[3]),
                r[4],
                UUID(r[5]) if r[5] else None,
                r[6],
                r[7],
                json.loads(r[8]) if r[8] else None,
            )
            for r in rows
        ]

    def memories_at(self, instance_id: UUID, until: datetime | None) -> list[tuple[UUID, int]]:
        """The instance's live snippets as they stood at `until` (None: now): each id
        with its version then, in the order they were added."""
        rows = self.store.query(
            "SELECT memory_id, version, kind, timestamp FROM audit_entries "
            "WHERE instance_id = %s AND memory_id IS NOT NULL ORDER BY position",
            (str(instance_id),),
        )
        standing: dict[str, tuple[int, str]] = {}
        for memory_id, version, kind, timestamp in rows:
            if until is None or datetime.fromisoformat(timestamp) <= until:
                standing[memory_id] = (int(version), kind)
        return [
            (UUID(memory_id), version)
            for memory_id, (version, kind) in standing.items()
            if kind != "memory_forgotten"
        ]


def _memory_text(cursor: Cursor, event: Any, position: int) -> None:
    instance_id = event.originator_id
    before = _text(cursor, instance_id)
    if before is None and type(event) is Instance.MemoryRewritten:
        return  # the instance was deleted
    cursor.execute(
        "INSERT INTO audit_texts (instance_id, text) VALUES (%s, %s) "
        "ON CONFLICT (instance_id) DO UPDATE SET text = excluded.text",
        (str(instance_id), event.memory),
    )
    _record(cursor, event, position, instance_id, "memory_text", None, before or "", event.memory)


def _added(cursor: Cursor, event: Any, position: int) -> None:
    if _text(cursor, event.instance_id) is None:
        return  # the instance was deleted
    _keep(cursor, event.originator_id, event.instance_id, event.text)
    memory_id = event.originator_id
    _record(cursor, event, position, event.instance_id, "memory_added", memory_id, "", event.text)


def _revised(cursor: Cursor, event: Any, position: int) -> None:
    kept = _snippet(cursor, event.originator_id)
    if kept is None:
        return  # its instance was deleted
    instance_id, before = kept
    _keep(cursor, event.originator_id, instance_id, event.text)
    memory_id = event.originator_id
    _record(cursor, event, position, instance_id, "memory_revised", memory_id, before, event.text)


def _forgotten(cursor: Cursor, event: Any, position: int) -> None:
    kept = _snippet(cursor, event.originator_id)
    if kept is None:
        return
    instance_id, before = kept
    cursor.execute("DELETE FROM audit_memories WHERE memory_id = %s", (str(event.originator_id),))
    memory_id = event.originator_id
    _record(cursor, event, position, instance_id, "memory_forgotten", memory_id, before, "")


def _deleted(cursor: Cursor, event: Any, position: int) -> None:
    tables = ["audit_texts", "audit_memories"]
    if type(event) is Instance.Erased:
        tables.append("audit_entries")
    for table in tables:
        cursor.execute(f"DELETE FROM {table} WHERE instance_id = %s", (str(event.originator_id),))


def _text(cursor: Cursor, instance_id: UUID) -> str | None:
    """The instance's memory text; None once deleted, and before it exists."""
    cursor.execute("SELECT text FROM audit_texts WHERE instance_id = %s", (str(instance_id),))
    row = cursor.fetchone()
    return None if row is None else str(row[0])


def _snippet(cursor: Cursor, memory_id: UUID) -> tuple[UUID, str] | None:
    """The live snippet's instance and text."""
    cursor.execute(
        "SELECT instance_id, text FROM audit_memories WHERE memory_id = %s", (str(memory_id),)
    )
    row = cursor.fetchone()
    return None if row is None else (UUID(str(row[0])), str(row[1]))


def _keep(cursor: Cursor, memory_id: UUID, instance_id: UUID, text: str) -> None:
    cursor.execute(
        "INSERT INTO audit_memories (memory_id, instance_id, text) VALUES (%s, %s, %s) "
        "ON CONFLICT (memory_id) DO UPDATE SET text = excluded.text",
        (str(memory_id), str(instance_id), text),
    )


def _record(
    cursor: Cursor,
    event: Any,
    position: int,
    instance_id: UUID,
    kind: str,
    memory_id: UUID | None,
    before: str,
    after: str,
) -> None:
    actor = getattr(event, "actor", None)
    source = getattr(event, "source", None)
    cursor.execute(
        "INSERT INTO audit_entries (instance_id, position, version, timestamp, actor, kind, "
        "memory_id, before, after, source) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (instance_id, position) DO NOTHING",
        (
            str(instance_id),
            position,
            event.originator_version,
            event.timestamp.isoformat(),
            json.dumps(actor.as_dict() if actor is not None else None),
            kind,
            None if memory_id is None else str(memory_id),
            before,
            after,
            None if source is None else json.dumps(source),
        ),
    )


_HANDLERS: dict[type, Callable[[Cursor, Any, int], None]] = {
    Instance.Created: _memory_text,
    Instance.MemoryRewritten: _memory_text,
    Instance.Archived: _deleted,
    Instance.Erased: _deleted,
    Memory.Added: _added,
    Memory.Revised: _revised,
    Memory.Forgotten: _forgotten,
}
