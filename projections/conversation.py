"""The conversation read model: each instance's messages in order, imported turns and chat turns
alike, with the tool results a client sent back. It embeds nothing, so it keeps up with the log
however far the memory index lags."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from alma.domain import Instance
from alma.domain.instance import speaker_of
from alma.domain.rules import as_utc
from alma.projections.sql_model import SqlReadModel
from alma.stores.sql import Cursor, SqlStore

_COLUMNS = "message_id, instance_id, role, content, metadata, sent_at, position, name"
_INSERT = (
    "INSERT INTO conversation_messages (message_id, instance_id, role, content, metadata, "
    "sent_at, position, tenant, name) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (instance_id, position) DO NOTHING"
)
_Row = tuple[str, str, str, str, str, str, int, str, str | None]


@dataclass(frozen=True)
class Message:
    id: UUID
    instance_id: UUID
    role: str  # "user", "assistant", "system", or "tool" (a tool's result)
    content: str
    # As recorded; a reply's holds its model (and its `tool_calls`), a tool result its
    # `tool_call_id`.
    metadata: dict[str, Any]
    sent_at: datetime  # when it was said (a reply: when it was recorded)
    position: int  # its event's in the log
    name: str | None  # who said it, when known


class Conversation(SqlReadModel):
    name = "conversation"
    tables = ("conversation_messages",)
    schema = (
        """CREATE TABLE IF NOT EXISTS conversation_messages (
            instance_id TEXT NOT NULL, position BIGINT NOT NULL, message_id TEXT NOT NULL,
            tenant TEXT NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL,
            metadata TEXT NOT NULL, sent_at TEXT NOT NULL, name TEXT,
            PRIMARY KEY (instance_id, position))""",
    )

    def __init__(self, store: SqlStore) -> None:
        # A store written before messages kept their speaker's name gets the column; its rows
        # keep none, as no event had one then.
        unnamed = store.has_table("conversation_messages") and not store.has_column(
            "conversation_messages", "name"
        )
        super().__init__(store)
        if unnamed:
            with store.transaction() as cursor:
                cursor.execute("ALTER TABLE conversation_messages ADD COLUMN name TEXT")

    def write(self, cursor: Cursor, batch: Sequence[tuple[Any, int]]) -> bool:
        rows: list[_Row] = []
        erased = False
        for event, position in batch:
            kind = type(event)
            if kind in _MESSAGES:
                rows.append(_MESSAGES[kind](event, position))
            elif kind is Instance.Archived or kind is Instance.Erased:
                # A deleted instance's conversation goes with it, as it goes from the index.
                instance = str(event.originator_id)
                rows = [row for row in rows if row[1] != instance]
                cursor.execute(
                    "DELETE FROM conversation_messages WHERE instance_id = %s", (instance,)
                )
                erased = erased or kind is Instance.Erased
        cursor.executemany(_INSERT, rows)
        return erased

    def messages(self, instance_id: UUID, after: int, limit: int) -> list[Message]:
        """The instance's conversation after position `after`, oldest first."""
        rows = self.store.query(
            f"SELECT {_COLUMNS} FROM conversation_messages WHERE instance_id = %s "
            "AND position > %s ORDER BY position LIMIT %s",
            (str(instance_id), after, limit),
        )
        return [_message_of(row) for row in rows]

    def messages_before(self, instance_id: UUID, before: int, limit: int) -> list[Message]:
        """The instance's conversation before position `before`, newest first."""
        rows = self.store.query(
            f"SELECT {_COLUMNS} FROM conversation_messages WHERE instance_id = %s "
            "AND position < %s ORDER BY position DESC LIMIT %s",
            (str(instance_id), before, limit),
        )
        return [_message_of(row) for row in rows]

    def by_ids(self, instance_id: UUID, ids: Sequence[str]) -> dict[str, Message]:
        """The instance's messages among `ids`, by id (an id that is not one is left out)."""
        if not ids:
            return {}
        marks = ", ".join(["%s"] * len(ids))
        rows = self.store.query(
            f"SELECT {_COLUMNS} FROM conversation_messages WHERE instance_id = %s "
            f"AND message_id IN ({marks})",
            (str(instance_id), *ids),
        )
        return {str(row[0]): _message_of(row) for row in rows}

    def recent_instances(self, limit: int) -> list[tuple[str, UUID]]:
        """The `limit` instances (with their tenants) whose conversations moved last, the latest
        last."""
        rows = self.store.query(
            "SELECT tenant, instance_id FROM conversation_messages GROUP BY tenant, instance_id "
            "ORDER BY MAX(position) DESC LIMIT %s",
            (limit,),
        )
        return [(str(tenant), UUID(str(instance))) for tenant, instance in reversed(rows)]

    def recent_messages(self, instance_id: UUID, limit: int) -> list[Message]:
        """The last `limit` messages of the conversation, oldest first."""
        rows = self.store.query(
            f"SELECT {_COLUMNS} FROM conversation_messages WHERE instance_id = %s "
            "ORDER BY position DESC LIMIT %s",
            (str(instance_id), limit),
        )
        return [_message_of(row) for row in reversed(rows)]


def _said(event: Any, position: int) -> _Row:
    return _row(event, event.role, event.metadata, as_utc(event.sent_at), position)


def _replied(event: Any, position: int) -> _Row:
    calls = getattr(event, "tool_calls", None)  # events from before they were kept have none
    metadata = {"model": event.model, **({"tool_calls": calls} if calls else {})}
    return _row(event, "assistant", metadata, event.timestamp, position)


def _tool_result(event: Any, position: int) -> _Row:
    metadata = {} if event.tool_call_id is None else {"tool_call_id": event.tool_call_id}
    return _row(event, "tool", metadata, event.timestamp, position)


def _row(event: Any, role: str, metadata: dict[str, Any], sent_at: datetime, position: int) -> _Row:
    return (
        str(event.message_id),
        str(event.originator_id),
        role,
        event.content,
        json.dumps(metadata, ensure_ascii=False),
        sent_at.isoformat(),
        position,
        event.actor.tenant,
        speaker_of(event),
    )


_MESSAGES: dict[type, Callable[[Any, int], _Row]] = {
    Instance.MessageRecorded: _said,
    Instance.ReplyRecorded: _replied,
    Instance.ToolResultRecorded: _tool_result,
}


def _message_of(row: Sequence[Any]) -> Message:
    return Message(
        UUID(str(row[0])),
        UUID(str(row[1])),
        str(row[2]),
        str(row[3]),
        json.loads(row[4]),
        as_utc(datetime.fromisoformat(str(row[5]))),  # UTC when imported without an offset
        int(row[6]),
        None if row[7] is None else str(row[7]),
    )
