"""Characters (Personaje): create, list, read (now or back then), edit, delete; Character Cards
in (JSON, PNG, CHARX) and out (V2, V3, PNG)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from alma.api.deps import (
    AlmaApp,
    AsOf,
    CharacterCards,
    CurrentCaller,
    Cursor,
    Erase,
    ExpectedVersion,
    Limit,
    Listing,
    PromptWarmer,
)
from alma.api.idempotency import RetrySafe
from alma.api.schemas import CharacterCreate, CharacterEdit, CharacterOut, Page
from alma.chat.cards import CardFormat
from alma.domain import InvalidInput

router = APIRouter(prefix="/v1/characters", tags=["characters"])


IMPORT_PATH = "/v1/characters/import"
_FILE = {"type": "string", "format": "binary"}
_CARD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": _FILE}, "required": ["file"]}
        },
        "application/json": {"schema": {"type": "object", "description": "a card: V1, V2 or V3"}},
        "image/png": {"schema": _FILE},
        "application/zip": {"schema": _FILE},
    },
}
_MEDIA_TYPES = {
    "v2": "application/json",
    "v3": "application/json",
    "png": "image/png",
    "charx": "application/zip",
}


@router.post("", status_code=201, dependencies=[RetrySafe])
def create_character(body: CharacterCreate, caller: CurrentCaller, app: AlmaApp) -> CharacterOut:
    fields = body.model_dump(exclude_none=True)
    character = app.create_character(caller.tenant, fields, caller.actor)
    return CharacterOut.of(character)


@router.post(
    "/import", status_code=201, openapi_extra={"requestBody": _CARD_BODY}, dependencies=[RetrySafe]
)
async def import_character(
    request: Request, caller: CurrentCaller, cards: CharacterCards
) -> CharacterOut:
    """A character from a Character Card: JSON (V1, V2, V3), a PNG with the card in its
    `chara`/`ccv3` chunks, or a CHARX; as the body itself or as the multipart field `file`."""
    content = await _card_file(request)
    character = await run_in_threadpool(cards.import_card, caller.tenant, content, caller.actor)
    return CharacterOut.of(character)


async def _card_file(request: Request) -> bytes:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "multipart/form-data":
        return await request.body()
    async with request.form(max_files=1, max_fields=0) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidInput("send the card as the multipart field `file`", "file")
        return await upload.read()


@router.get(
    "/{character_id}/export",
    response_class=Response,
    responses={200: {"content": {"application/json": {}, "image/png": {}, "application/zip": {}}}},
)
def export_character(
    character_id: UUID,
    caller: CurrentCaller,
    cards: CharacterCards,
    as_of: AsOf,
    card_format: Annotated[CardFormat, Query(alias="format")] = "v2",
) -> Response:
    """Its Character Card (now, or at `version` / `at`): V2 or V3 JSON, a PNG carrying both
    (`chara` and `ccv3` chunks) in its card's image, or a blank one, or a CHARX (a zip: V3
    `card.json` and the files its CHARX came with, or its image as the icon)."""
    card = cards.export_card(caller.tenant, character_id, card_format, as_of.version, as_of.at)
    return Response(card, media_type=_MEDIA_TYPES[card_format])


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


@router.get("/{character_id:id}")
def get_character(
    character_id: UUID,
    caller: CurrentCaller,
    app: AlmaApp,
    as_of: AsOf,
) -> CharacterOut:
    character = app.character(caller.tenant, character_id, as_of.version, as_of.at)
    return CharacterOut.of(character)


@router.patch("/{character_id:id}")
def edit_character(
    character_id: UUID,
    body: CharacterEdit,
    caller: CurrentCaller,
    app: AlmaApp,
    expected_version: ExpectedVersion,
    warm: PromptWarmer,
) -> CharacterOut:
    character = app.edit_character(
        caller.tenant, character_id, body.patch(), caller.actor, expected_version
    )
    warm(caller.tenant, [], character_id)  # its instances
    return CharacterOut.of(character)


@router.delete("/{character_id:id}", status_code=204)
def delete_character(
    character_id: UUID,
    caller: CurrentCaller,
    app: AlmaApp,
    cards: CharacterCards,
    expected_version: ExpectedVersion,
    erase: Erase = False,
) -> Response:
    """Archives it; with `erase=true` erases it (its image too) and every instance made from it
    for good."""
    if erase:
        cards.erase_character(caller.tenant, character_id, caller.actor)
    else:
        app.archive_character(caller.tenant, character_id, caller.actor, expected_version)
    return Response(status_code=204)
