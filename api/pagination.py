"""Paging: opaque cursors (a position in some ordered sequence, encoded so clients don't build
them), and pages of the listings read model."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from uuid import UUID

from alma.api.consistency import CaughtUp
from alma.api.errors import ApiError
from alma.domain import NotFound
from alma.projections import ListingView

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


@dataclass(frozen=True)
class ListingPages:
    """The listings read model, read a page at a time."""

    view: ListingView
    caught_up: CaughtUp

    def page(
        self,
        kind: str,
        tenant: str,
        cursor: str | None,
        limit: int,
        load: Callable[[UUID], T],
        parent_id: UUID | None = None,
        query: str | None = None,
    ) -> tuple[list[T], str | None]:
        """One page of a listing, read-your-writes: waits (bounded) until the listings read
        model has seen every event written before this call, then renders each item from its
        events."""
        self.caught_up()
        listed = self.view.select(
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
