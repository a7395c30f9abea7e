"""Characters (Personaje): create, list, read (now or back then), edit, delete."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Response

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
from alma.api.schemas import CharacterCreate, CharacterEdit, CharacterOut, Page

router = APIRouter(prefix="/v1/characters", tags=["characters"])


@router.post("", status_code=201)
def create_character(body: CharacterCreate, caller: CurrentCaller, app: AlmaApp) -> CharacterOut:
    fields = body.model_dump(exclude_none=True)
    character = app.create_character(caller.tenant, fields, caller.actor)
    return CharacterOut.of(character)


@router.get("")
def list_characters(
    caller: CurrentCaller,
    app: AlmaApp,
    listing: Listing,
    limit: Limit = 50,
    cursor: Cursor = None,
    q: Annotated[
        str | None, Query(max_length=200, pattern=r"^[^\x00]*$", description="Name or description")
    ] = None,
) -> Page[CharacterOut]:
    items, next_cursor = listing.page(
        "character",
        caller.tenant,
        cursor,
        limit,
        query=q,
        load=lambda id_: CharacterOut.of(app.character(caller.tenant, id_)),
    )
    return Page[CharacterOut](items=items, next_cursor=next_cursor)


@router.get("/{character_id}")
def get_character(
    character_id: UUID,
    caller: CurrentCaller,
    app: AlmaApp,
    as_of: AsOf,
) -> CharacterOut:
    character = app.character(caller.tenant, character_id, as_of.version, as_of.at)
    return CharacterOut.of(character)


@router.patch("/{character_id}")
def edit_character(
    character_id: UUID,
    body: CharacterEdit,
    caller: CurrentCaller,
    app: AlmaApp,
    expected_version: ExpectedVersion,
) -> CharacterOut:
    character = app.edit_character(
        caller.tenant, character_id, body.patch(), caller.actor, expected_version
    )
    return CharacterOut.of(character)


@router.delete("/{character_id}", status_code=204)
def delete_character(
    character_id: UUID,
    caller: CurrentCaller,
    app: AlmaApp,
    expected_version: ExpectedVersion,
    erase: Erase = False,
) -> Response:
    """Archives it; with `erase=true` erases it and every instance made from it for good."""
    if erase:
        app.erase_character(caller.tenant, character_id, caller.actor)
    else:
        app.archive_character(caller.tenant, character_id, caller.actor, expected_version)
    return Response(status_code=204)
