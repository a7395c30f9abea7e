"""Erasure by crypto-shredding: the events of a character or an instance (with its memories and
messages) are stored encrypted with a key of their own; erasing destroys the key."""

from __future__ import annotations

from uuid import UUID

from domain.errors import NotFound


class Erased(NotFound):
    """The key of this scope was destroyed: its events can never be read again."""

    def __init__(self, scope_id: UUID) -> None:
        super().__init__(f"{scope_id} was erased")
        self.scope_id = scope_id
