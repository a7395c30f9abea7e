"""Paging: opaque cursors (a position in some ordered sequence, encoded so clients don't build
them), and pages of the listings read model."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from uuid import UUID

from alma.api.consistency import CaughtUp
from alma.api.errors import ApiError
from alma.domain import NotFound
from alma.projections import Listings

T = TypeVar("T")
MAX_POSITION = 2**63 - 1


# A cursor is a position (0 to MAX_POSITION) as 8 bytes, big-endian, in URL-safe base64 without
# padding: 11 characters, the first keeping the top bit 0, the last carrying 4 bits and two 0s.
# The schema declares this pattern and decode_cursor takes exactly what it matches.
CURSOR = r"^[A-Za-f][A-Za-z0-9_-]{9}[AEIMQUYcgkosw048]$"


def encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(position.to_bytes(8, "big")).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not re.fullmatch(CURSOR, cursor):
        raise ApiError(400, "bad_cursor", "cursor is not one this API returned")
    return int.from_bytes(base64.urlsafe_b64decode(cursor + "="), "big")


@dataclass(frozen=True)
class ListingPages:
    """The listings read model, read a page at a time."""

    view: Listings
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
