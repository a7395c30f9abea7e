"""Rules every name and text must satisfy before it becomes an event."""

from __future__ import annotations

import re
import unicodedata

from domain.errors import InvalidInput

MAX_NAME = 200
MAX_TEXT = 100_000


def valid_name(name: object, field: str = "name") -> str:
    """A name must have visible characters and at most MAX_NAME characters; kept as given."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput(f"{field} must not be empty or only whitespace", field)
    if len(name) > MAX_NAME:
        raise InvalidInput(f"{field} is longer than {MAX_NAME} characters", field)
    return no_nul(name, field)


def valid_text(text: str, field: str) -> str:
    if len(text) > MAX_TEXT:
        raise InvalidInput(f"{field} is longer than {MAX_TEXT} characters", field)
    return no_nul(text, field)


def no_nul(text: str, field: str) -> str:
    """NUL is no character a person writes, and PostgreSQL cannot store it in text."""
    if "\x00" in text:
        raise InvalidInput(f"{field} must not contain the NUL character", field)
    return text


def name_key(name: str) -> str:
    """The form under which names collide: 'José', 'JOSÉ ' and 'jose\u0301' are one name."""
    return unicodedata.normalize("NFC", name.strip()).casefold()


def valid_tenant(tenant: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", tenant):
        raise InvalidInput("a tenant name is 1-64 of a-z, 0-9, '_', '.', '-'", "tenant")
    return tenant
