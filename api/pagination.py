"""Opaque cursors: a position in some ordered sequence, encoded so clients don't build them."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import TypeVar
from uuid import UUID

from alma.api.consistency import caught_up
from alma.api.errors import ApiError
from alma.api.services import Services
from alma.domain import NotFound

T = TypeVar("T")
MAX_POSITION = 2**63 - 1


def encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": position}).encode()).decode()


def decode_cursor(cursor: str | None) -> int:
    if cursor is None:
        return 0
    try:
        position = json.loads(base64.urlsafe_b64decode(cursor.encode()))["after"]
    except (ValueError, KeyError, TypeError):
        raise ApiError(400, "bad_cursor", "cursor is not one this API returned") from None
    if type(position) is not int or not 0 <= position <= MAX_POSITION:
        raise ApiError(400, "bad_cursor", "cursor is not one this API returned")
    return position


def page_of(
    services: Services,
    kind: str,
    tenant: str,
    cursor: str | None,
    limit: int,
    load: Callable[[UUID], T],
    parent_id: UUID | None = None,
    query: str | None = None,
) -> tuple[list[T], str | None]:
    """One page of a listing, read-your-writes: waits (bounded) until the listings read model
    has seen every event written before this call, then renders each item from its events."""
    caught_up(services, services.listings, services.settings.read_model_wait_s)
    listed = services.listings_view.select(
        kind, tenant, decode_cursor(cursor), limit, parent_id=parent_id, query=query
    )
    items = []
    for entry in listed:
        try:
            items.append(load(entry.id))
        except NotFound:
            continue  # deleted after the listing caught up
    next_cursor = encode_cursor(listed[-1].position) if len(listed) == limit else None
    return items, next_cursor
