"""The listings read model: which characters, instances and lorebooks each tenant has, for
paginated lists.

Rows hold only what listing and filtering need (ids, names, search text, order); the API renders
each listed aggregate from the event store, so a listing is never staler than its ids.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.dispatch import singledispatchmethod

from alma.domain import Character, Instance, Lorebook
from alma.projections.ranking import fold
from alma.projections.sql_model import SqlReadModel
from alma.stores.sql import Cursor

_SELECT = (
    "SELECT position, id FROM listings WHERE kind = %s AND tenant = %s "
    "AND archived = FALSE AND position > %s {filters} ORDER BY position LIMIT %s"
)
# Where a store from before partitions kept the listings' position.
_TRACKING = {"sqlite": "tracking", "postgresql": "listings_tracking"}


@dataclass(frozen=True)
class Listed:
    position: int
    id: UUID


class Listings(SqlReadModel):
    """Each batch's changes are written in one transaction with its partitions' positions."""

    name = "listings"
    tables = ("listings",)
    schema = (
        "CREATE TABLE IF NOT EXISTS listings (kind TEXT NOT NULL, id TEXT PRIMARY KEY, "
        "tenant TEXT NOT NULL, parent_id TEXT, position BIGINT NOT NULL, name TEXT NOT NULL, "
        "description TEXT NOT NULL, archived BOOLEAN NOT NULL)",
        "CREATE INDEX IF NOT EXISTS listings_by_tenant ON listings "
        "(tenant, kind, parent_id, position)",
    )

    def start(self) -> int:
        """0, or where a store written before partitions had got to."""
        tracking = _TRACKING[self.store.dialect]
        if not self.store.has_table(tracking):
            return super().start()
        rows = self.store.query(
            f"SELECT MAX(notification_id) FROM {tracking} WHERE application_name = 'alma'"
        )
        return int(rows[0][0] or 0)

    def select(
        self,
        kind: str,
        tenant: str,
        after: int,
        limit: int,
        parent_id: UUID | None = None,
        query: str | None = None,
    ) -> list[Listed]:
        filters = ""
        params: list[Any] = [kind, tenant, after]
        if parent_id is not None:
            filters += " AND parent_id = %s"
            params.append(str(parent_id))
        if query:
            filters += " AND (name LIKE %s ESCAPE '!' OR description LIKE %s ESCAPE '!')"
            pattern = "%" + re.sub(r"([!%_])", r"!\1", fold(query)) + "%"
            params += [pattern, pattern]
        rows = self.store.query(_SELECT.replace("{filters}", filters), (*params, limit))
        return [Listed(int(row[0]), UUID(str(row[1]))) for row in rows]

    def write(self, cursor: Cursor, batch: Sequence[tuple[Any, int]]) -> bool:
        erased = False
        for event, position in batch:
            erased = bool(self.change(event, cursor, position)) or erased
        return erased

    def _add(
        self,
        cursor: Cursor,
        position: int,
        kind: str,
        aggregate_id: UUID,
        tenant: str,
        parent_id: UUID | None,
        name: str,
        description: str,
    ) -> None:
        cursor.execute(
            "INSERT INTO listings (kind, id, tenant, parent_id, position, name, description, "
            "archived) VALUES (%s, %s, %s, %s, %s, %s, %s, FALSE) ON CONFLICT (id) DO NOTHING",
            (
                kind,
                str(aggregate_id),
                tenant,
                str(parent_id) if parent_id else None,
                position,
                fold(name),
                fold(description),
            ),
        )

    @staticmethod
    def _update(cursor: Cursor, aggregate_id: UUID, column: str, value: Any) -> None:
        assert column in ("name", "description", "archived")
        if isinstance(value, str):
            value = fold(value)
        cursor.execute(
            f"UPDATE listings SET {column} = %s WHERE id = %s", (value, str(aggregate_id))
        )

    # One handler per event type; True when it erased something.

    @singledispatchmethod
    def change(self, domain_event: Any, cursor: Cursor, position: int) -> bool:
        return False

    @change.register(Character.Created)
    def _(self, domain_event: Any, cursor: Cursor, position: int) -> bool:
        self._add(
            cursor,
            position,
            "character",
            domain_event.originator_id,
            domain_event.tenant,
            None,
            domain_event.name,
            domain_event.description,
        )
        return False

    @change.register(Instance.Created)
    def _(self, domain_event: Any, cursor: Cursor, position: int) -> bool:
        self._add(
            cursor,
            position,
            "instance",
            domain_event.originator_id,
            domain_event.tenant,
            domain_event.character_id,
            domain_event.name,
            "",
        )
        return False

    @change.register(Lorebook.Created)
    def _(self, domain_event: Any, cursor: Cursor, position: int) -> bool:
        settings = domain_event.settings
        self._add(
            cursor,
            position,
            "lorebook",
            domain_event.originator_id,
            domain_event.tenant,
            None,
            settings["name"],
            settings["description"],
        )
        return False

    @change.register(Lorebook.Changed)
    def _(self, domain_event: Any, cursor: Cursor, position: int) -> bool:
        settings = domain_event.settings
        self._update(cursor, domain_event.originator_id, "name", settings["name"])
        self._update(cursor, domain_event.originator_id, "description", settings["description"])
        return False

    @change.register(Character.Renamed)
    @change.register(Instance.Renamed)
    def _(self, domain_event: Any, cursor: Cursor, position: int) -> bool:
        self._update(cursor, domain_event.originator_id, "name", domain_event.name)
        return False

    @change.register(Character.DescriptionChanged)
    def _(self, domain_event: Any, cursor: Cursor, position: int) -> bool:
        self._update(cursor, domain_event.originator_id, "description", domain_event.description)
        return False

    @change.register(Character.Erased)
    @change.register(Instance.Erased)
    @change.register(Lorebook.Erased)
    def _(self, domain_event: Any, cursor: Cursor, position: int) -> bool:
        """Forgets an erased character, instance or lorebook, leaving nothing of it in the
        store (its log is wiped before the position says the event is done)."""
        cursor.execute("DELETE FROM listings WHERE id = %s", (str(domain_event.originator_id),))
        return True

    @change.register(Character.Archived)
    @change.register(Instance.Archived)
    @change.register(Lorebook.Archived)
    def _(self, domain_event: Any, cursor: Cursor, position: int) -> bool:
        self._update(cursor, domain_event.originator_id, "archived", True)
        return False
