"""Lorebooks (world info): create, import, list, read (now or back then), edit, export, delete;
their entries; and attaching them to characters and instances."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Body, Query, Response
from fastapi.responses import JSONResponse

from alma.api.deps import (
    AlmaApp,
    AsOf,
    CurrentCaller,
    Cursor,
    Erase,
    ExpectedVersion,
    Limit,
    Listing,
)
from alma.api.idempotency import RetrySafe
from alma.api.lorebook_schemas import (
    AttachedLorebooksIn,
    AttachedLorebooksOut,
    LorebookCreate,
    LorebookEdit,
    LorebookEntryWritten,
    LorebookOut,
    LoreEntryCreate,
    LoreEntryEdit,
    LoreEntryOut,
)
from alma.api.routes.events import AfterVersion, EventType, events_page
from alma.api.schemas import EventOut, Page
from alma.domain import Character, Instance, Lorebook
from alma.domain.lore_formats import (
    detect,
    from_character_book,
    from_sillytavern,
    to_character_book,
    to_sillytavern,
)

router = APIRouter(tags=["lorebooks"])
IMPORT_PATH = "/v1/lorebooks/import"


@router.post("/v1/lorebooks", status_code=201, dependencies=[RetrySafe])
def create_lorebook(body: LorebookCreate, caller: CurrentCaller, app: AlmaApp) -> LorebookOut:
    book = app.create_lorebook(caller.tenant, body.settings(), body.entry_fields(), caller.actor)
    return LorebookOut.of(book)


@router.post(IMPORT_PATH, status_code=201, dependencies=[RetrySafe])
def import_lorebook(
    caller: CurrentCaller,
    app: AlmaApp,
    body: Annotated[
        dict[str, Any],
        Body(description="SillyTavern's world-info JSON, or a card's `character_book`"),
    ],
    name: Annotated[
        str | None, Query(max_length=200, description="when the file names none (its file name)")
    ] = None,
) -> LorebookOut:
    """Fields alma does not use are kept verbatim (`extra`, `extensions`) and exported back."""
    if detect(body) == "sillytavern":
        settings, entries = from_sillytavern(body, name)
    else:
        settings, entries = from_character_book(body)
    book = app.create_lorebook(caller.tenant, settings, entries, caller.actor)
    return LorebookOut.of(book)


@router.get("/v1/lorebooks")
def list_lorebooks(
    caller: CurrentCaller,
    app: AlmaApp,
    listing: Listing,
    limit: Limit = 50,
    cursor: Cursor = None,
    q: Annotated[
        str | None, Query(max_length=200, pattern=r"^[^\x00]*$", description="Name or description")
    ] = None,
) -> Page[LorebookOut]:
    items, next_cursor = listing.page(
        "lorebook",
        caller.tenant,
        cursor,
        limit,
        query=q,
        load=lambda id_: LorebookOut.of(app.lorebook(caller.tenant, id_)),
    )
    return Page[LorebookOut](items=items, next_cursor=next_cursor)


@router.get("/v1/lorebooks/{lorebook_id:id}")
def get_lorebook(
    lorebook_id: UUID, caller: CurrentCaller, app: AlmaApp, as_of: AsOf
) -> LorebookOut:
    return LorebookOut.of(app.lorebook(caller.tenant, lorebook_id, as_of.version, as_of.at))


@router.get("/v1/lorebooks/{lorebook_id}/export")
def export_lorebook(
    lorebook_id: UUID,
    caller: CurrentCaller,
    app: AlmaApp,
    as_of: AsOf,
    format: Literal["sillytavern", "character_book"] = "sillytavern",
) -> JSONResponse:
    """SillyTavern's world-info JSON, or a card's `character_book`."""
    book = app.lorebook(caller.tenant, lorebook_id, as_of.version, as_of.at)
    exported = (to_sillytavern if format == "sillytavern" else to_character_book)(
        book.settings, book.in_order()
    )
    return JSONResponse(exported)


@router.patch("/v1/lorebooks/{lorebook_id:id}")
def edit_lorebook(
    lorebook_id: UUID,
    body: LorebookEdit,
    caller: CurrentCaller,
    app: AlmaApp,
    expected_version: ExpectedVersion,
) -> LorebookOut:
    book = app.edit_lorebook(
        caller.tenant, lorebook_id, body.patch(), caller.actor, expected_version
    )
    return LorebookOut.of(book)


@router.delete("/v1/lorebooks/{lorebook_id:id}", status_code=204)
def delete_lorebook(
    lorebook_id: UUID,
    caller: CurrentCaller,
    app: AlmaApp,
    expected_version: ExpectedVersion,
    erase: Erase = False,
) -> Response:
    """Archives it (it activates nowhere from then on); with `erase=true` erases it for good."""
    if erase:
        app.erase_lorebook(caller.tenant, lorebook_id, caller.actor)
    else:
        app.archive_lorebook(caller.tenant, lorebook_id, caller.actor, expected_version)
    return Response(status_code=204)


@router.get("/v1/lorebooks/{lorebook_id}/events")
def lorebook_events(
    lorebook_id: UUID,
    caller: CurrentCaller,
    app: AlmaApp,
    after_version: AfterVersion = None,
    cursor: Cursor = None,
    limit: Limit = 50,
    type: EventType = None,
) -> Page[EventOut]:
    """The lorebook's own events, oldest first, kept after `DELETE`."""
    return events_page(app, caller, Lorebook, lorebook_id, after_version, cursor, limit, type)


@router.post("/v1/lorebooks/{lorebook_id}/entries", status_code=201, dependencies=[RetrySafe])
def add_entry(
    lorebook_id: UUID,
    body: LoreEntryCreate,
    caller: CurrentCaller,
    app: AlmaApp,
    expected_version: ExpectedVersion,
) -> LorebookEntryWritten:
    fields = body.patch()
    fields.pop("id", None)
    book, entry = app.add_lorebook_entry(
        caller.tenant, lorebook_id, fields, caller.actor, expected_version
    )
    return LorebookEntryWritten(entry=LoreEntryOut(**entry), version=book.version)


@router.patch("/v1/lorebooks/{lorebook_id}/entries/{entry_id}")
def edit_entry(
    lorebook_id: UUID,
    entry_id: int,
    body: LoreEntryEdit,
    caller: CurrentCaller,
    app: AlmaApp,
    expected_version: ExpectedVersion,
) -> LorebookEntryWritten:
    book, entry = app.edit_lorebook_entry(
        caller.tenant, lorebook_id, entry_id, body.patch(), caller.actor, expected_version
    )
    return LorebookEntryWritten(entry=LoreEntryOut(**entry), version=book.version)


@router.delete("/v1/lorebooks/{lorebook_id}/entries/{entry_id}", status_code=204)
def remove_entry(
    lorebook_id: UUID,
    entry_id: int,
    caller: CurrentCaller,
    app: AlmaApp,
    expected_version: ExpectedVersion,
) -> Response:
    app.remove_lorebook_entry(caller.tenant, lorebook_id, entry_id, caller.actor, expected_version)
    return Response(status_code=204)


@router.put("/v1/characters/{character_id}/lorebooks")
def attach_to_character(
    character_id: UUID, body: AttachedLorebooksIn, caller: CurrentCaller, app: AlmaApp
) -> AttachedLorebooksOut:
    """The lorebooks every instance of the character scans, in this order (replaces the list)."""
    ids = app.attach_lorebooks(
        caller.tenant, Character, character_id, body.lorebook_ids, caller.actor
    )
    return AttachedLorebooksOut(lorebook_ids=ids)


@router.get("/v1/characters/{character_id}/lorebooks")
def character_lorebooks(
    character_id: UUID, caller: CurrentCaller, app: AlmaApp
) -> AttachedLorebooksOut:
    ids = app.attached_lorebooks(caller.tenant, Character, character_id)
    return AttachedLorebooksOut(lorebook_ids=ids)


@router.put("/v1/instances/{instance_id}/lorebooks")
def attach_to_instance(
    instance_id: UUID, body: AttachedLorebooksIn, caller: CurrentCaller, app: AlmaApp
) -> AttachedLorebooksOut:
    """The instance's own lorebooks, scanned after its character's (replaces the list)."""
    ids = app.attach_lorebooks(
        caller.tenant, Instance, instance_id, body.lorebook_ids, caller.actor
    )
    return AttachedLorebooksOut(lorebook_ids=ids)


@router.get("/v1/instances/{instance_id}/lorebooks")
def instance_lorebooks(
    instance_id: UUID, caller: CurrentCaller, app: AlmaApp
) -> AttachedLorebooksOut:
    ids = app.attached_lorebooks(caller.tenant, Instance, instance_id)
    return AttachedLorebooksOut(lorebook_ids=ids)
