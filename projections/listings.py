"""The listings read model: which characters, instances and lorebooks each tenant has, for
paginated lists.

Rows hold only what listing and filtering need (ids, names, search text, order); the API renders
each listed aggregate from the event store, so a listing is never staler than its ids.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.persistence import IntegrityError, Tracking, TrackingRecorder
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.projection import Projection
from eventsourcing.sqlite import SQLiteTrackingRecorder
from psycopg.sql import SQL

from alma.domain import Character, Instance, Lorebook
from alma.projections.ranking import fold
from alma.stores.sqlite import truncate_wal

_COLUMNS = "kind, id, tenant, parent_id, position, name, description, archived"
_UPSERT = (
    "INSERT INTO {table} (" + _COLUMNS + ") VALUES (%(kind)s, %(id)s, %(tenant)s, "
    "%(parent_id)s, %(position)s, %(name)s, %(description)s, FALSE) "
    "ON CONFLICT (id) DO NOTHING"
)
_UPDATE = "UPDATE {table} SET {column} = %(value)s WHERE id = %(id)s"
_SELECT = (
    "SELECT position, id FROM {table} WHERE kind = %(kind)s AND tenant = %(tenant)s "
    "AND archived = FALSE AND position > %(after)s {filters} ORDER BY position LIMIT %(limit)s"
)


@dataclass(frozen=True)
class Listed:
    position: int
    id: UUID


class ListingView(TrackingRecorder, ABC):
    """Each change is written in one transaction with its tracking record, so a replayed event
    changes nothing and a crash loses nothing."""

    table = "listings"

    def add(
        self,
        tracking: Tracking,
        kind: str,
        aggregate_id: UUID,
        tenant: str,
        parent_id: UUID | None,
        name: str,
        description: str,
    ) -> None:
        params = {
            "kind": kind,
            "id": str(aggregate_id),
            "tenant": tenant,
            "parent_id": str(parent_id) if parent_id else None,
            "position": tracking.notification_id,
            "name": fold(name),
            "description": fold(description),
        }
        self._write(tracking, _UPSERT, params)

    def update(self, tracking: Tracking, aggregate_id: UUID, column: str, value: Any) -> None:
        assert column in ("name", "description", "archived")
        if isinstance(value, str):
            value = fold(value)
        statement = _UPDATE.replace("{column}", column)
        self._write(tracking, statement, {"id": str(aggregate_id), "value": value})

    def rename(self, tracking: Tracking, aggregate_id: UUID, name: str, description: str) -> None:
        """A new name and description at once (a lorebook's fields change in one event)."""
        statement = (
            "UPDATE {table} SET name = %(name)s, description = %(description)s WHERE id = %(id)s"
        )
        params = {"id": str(aggregate_id), "name": fold(name), "description": fold(description)}
        self._write(tracking, statement, params)

    def remove(self, tracking: Tracking, aggregate_id: UUID) -> None:
        """Forgets an erased character or instance, leaving nothing of it in the store. The
        store's log is wiped before the tracking record says the event is done, so whoever
        waits for the erasure finds no trace; a crash in between replays the event harmlessly."""
        delete, params = "DELETE FROM {table} WHERE id = %(id)s", {"id": str(aggregate_id)}
        self._write(None, delete, params)
        self._wipe()
        self._write(tracking, delete, params)

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
        params: dict[str, Any] = {"kind": kind, "tenant": tenant, "after": after, "limit": limit}
        if parent_id is not None:
            filters += " AND parent_id = %(parent_id)s"
            params["parent_id"] = str(parent_id)
        if query:
            filters += (
                " AND (name LIKE %(query)s ESCAPE '!' OR description LIKE %(query)s ESCAPE '!')"
            )
            params["query"] = "%" + re.sub(r"([!%_])", r"!\1", fold(query)) + "%"
        rows = self._read(_SELECT.replace("{filters}", filters), params)
        return [Listed(int(row["position"]), UUID(str(row["id"]))) for row in rows]

    def clear(self, application_name: str) -> None:
        """Forget everything, so the next follower rebuilds from the first event."""
        self._execute_all(
            [
                "DELETE FROM {table}",
                "DELETE FROM {tracking} WHERE application_name = %(app)s",
            ],
            {"app": application_name},
        )

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _write(self, tracking: Tracking | None, statement: str, params: dict[str, Any]) -> None:
        """Runs `statement` and records `tracking` (when given) in one transaction."""

    @abstractmethod
    def _read(self, statement: str, params: dict[str, Any]) -> Sequence[Any]: ...

    @abstractmethod
    def _execute_all(self, statements: list[str], params: dict[str, Any]) -> None: ...

    def _wipe(self) -> None:
        """Removes what the store keeps of deleted rows beside its tables (SQLite's log)."""


_CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS {table} (kind TEXT NOT NULL, id TEXT PRIMARY KEY, "
    "tenant TEXT NOT NULL, parent_id TEXT, position BIGINT NOT NULL, name TEXT NOT NULL, "
    "description TEXT NOT NULL, archived BOOLEAN NOT NULL)"
)
_CREATE_INDEX = "CREATE INDEX IF NOT EXISTS {index} ON {table} (tenant, kind, parent_id, position)"


class SQLiteListingView(SQLiteTrackingRecorder, ListingView):
    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            _CREATE_TABLE.format(table=self.table),
            _CREATE_INDEX.format(table=self.table, index=f"{self.table}_by_tenant"),
        ]

    def close(self) -> None:
        self.datastore.close()

    def _sql(self, statement: str) -> str:
        statement = statement.replace("{table}", self.table).replace("{tracking}", "tracking")
        return re.sub(r"%\((\w+)\)s", r":\1", statement)

    def _write(self, tracking: Tracking | None, statement: str, params: dict[str, Any]) -> None:
        with self.datastore.transaction(commit=True) as c:
            # Renamed and erased text is overwritten, not left in free pages.
            c.execute("PRAGMA secure_delete=ON")
            c.execute(self._sql(statement), params)
            if tracking is not None:
                self._insert_tracking(c, tracking)

    def _wipe(self) -> None:
        truncate_wal(Path(self.datastore.pool.db_name))

    def _read(self, statement: str, params: dict[str, Any]) -> Sequence[Any]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(self._sql(statement), params)
            return list(c.fetchall())

    def _execute_all(self, statements: list[str], params: dict[str, Any]) -> None:
        with self.datastore.transaction(commit=True) as c:
            for statement in statements:
                c.execute(self._sql(statement), params)


class PostgresListingView(PostgresTrackingRecorder, ListingView):
    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        table = f'"{datastore.schema}".{self.table}'
        for statement in (
            _CREATE_TABLE.format(table=table),
            _CREATE_INDEX.format(table=table, index=f"{self.table}_by_tenant"),
        ):
            self.sql_create_statements.append(SQL(statement).format())

    def close(self) -> None:
        self.datastore.close()

    def _sql(self, statement: str) -> Any:
        schema = f'"{self.datastore.schema}"'
        return statement.replace("{table}", f"{schema}.{self.table}").replace(
            "{tracking}", f'{schema}."{self.tracking_table_name}"'
        )

    def _write(self, tracking: Tracking | None, statement: str, params: dict[str, Any]) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(self._sql(statement), params)
            if tracking is not None:
                self._insert_tracking(curs, tracking)

    def _read(self, statement: str, params: dict[str, Any]) -> Sequence[Any]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self._sql(statement), params)
            return curs.fetchall()

    def _execute_all(self, statements: list[str], params: dict[str, Any]) -> None:
        with self.datastore.transaction(commit=True) as curs:
            for statement in statements:
                curs.execute(self._sql(statement), params)


class Listings(Projection[ListingView]):
    name = "listings"
    application_name = "alma"

    def position(self) -> int:
        return self.view.max_tracking_id(self.application_name) or 0

    def process(self, batch: Sequence[tuple[Any, int]]) -> None:
        for domain_event, position in batch:
            try:
                self.process_event(domain_event, Tracking(self.application_name, position))
            except IntegrityError:
                continue  # another follower recorded it first (e.g. a rebuild beside a server)

    @singledispatchmethod
    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.insert_tracking(tracking)

    @process_event.register(Character.Created)
    def _(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.add(
            tracking,
            "character",
            domain_event.originator_id,
            domain_event.tenant,
            None,
            domain_event.name,
            domain_event.description,
        )

    @process_event.register(Instance.Created)
    def _(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.add(
            tracking,
            "instance",
            domain_event.originator_id,
            domain_event.tenant,
            domain_event.character_id,
            domain_event.name,
            "",
        )

    @process_event.register(Lorebook.Created)
    def _(self, domain_event: Any, tracking: Tracking) -> None:
        settings = domain_event.settings
        self.view.add(
            tracking,
            "lorebook",
            domain_event.originator_id,
            domain_event.tenant,
            None,
            settings["name"],
            settings["description"],
        )

    @process_event.register(Lorebook.Changed)
    def _(self, domain_event: Any, tracking: Tracking) -> None:
        settings = domain_event.settings
        self.view.rename(
            tracking, domain_event.originator_id, settings["name"], settings["description"]
        )

    @process_event.register(Character.Renamed)
    @process_event.register(Instance.Renamed)
    def _(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.update(tracking, domain_event.originator_id, "name", domain_event.name)

    @process_event.register(Character.DescriptionChanged)
    def _(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.update(
            tracking, domain_event.originator_id, "description", domain_event.description
        )

    @process_event.register(Character.Erased)
    @process_event.register(Instance.Erased)
    @process_event.register(Lorebook.Erased)
    def _(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.remove(tracking, domain_event.originator_id)

    @process_event.register(Character.Archived)
    @process_event.register(Instance.Archived)
    @process_event.register(Lorebook.Archived)
    def _(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.update(tracking, domain_event.originator_id, "archived", True)
