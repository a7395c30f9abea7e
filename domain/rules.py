"""Rules every name and text must satisfy before it becomes an event."""

from __future__ import annotations

import json
import math
import re
import unicodedata
from datetime import UTC, datetime
from typing import Any

from alma.domain.errors import InvalidInput

MAX_NAME = 200
MAX_TEXT = 100_000

# The characters str.isspace() calls white space, spelled out: the OpenAPI schema's patterns are
# ECMA-262 regular expressions, whose `\s` is not Python's (U+001C-U+001F, U+0085, U+FEFF), so
# the server and the schema read this one class.
SPACE = (
    r"\t\n\u000b\u000c\r\u001c-\u001f \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f"
    r"\u205f\u3000"
)
# Patterns for the schema, of what the rules below check: no NUL; and no NUL, one visible character.
NO_NUL = r"^[^\u0000]*$"
VISIBLE_TEXT = rf"^[^\u0000]*[^\u0000{SPACE}][^\u0000]*$"


def blank(text: str) -> bool:
    """Whether the text has no visible character (only SPACE, or nothing)."""
    return re.search(rf"[^{SPACE}]", text) is None


def as_utc(moment: datetime, field: str = "timestamp") -> datetime:
    """The time in UTC: one without an offset is read as UTC, one with an offset is converted.
    Every time the domain stores is aware, so any two compare."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise InvalidInput(f"{field} is outside the years 1 to 9999 in UTC", field) from None


def valid_name(name: object, field: str = "name") -> str:
    """A name must have visible characters and at most MAX_NAME characters; kept as given."""
    if name is None:
        raise InvalidInput(f"{field} is required: null cannot clear it", field)
    if not isinstance(name, str) or blank(name):
        raise InvalidInput(f"{field} must not be empty or only whitespace", field)
    if len(name) > MAX_NAME:
        raise InvalidInput(f"{field} is longer than {MAX_NAME} characters", field)
    return storable(name, field)


def valid_speaker(speaker: object, field: str = "speaker") -> str | None:
    """Who said something: none, or a name by the rules of names."""
    return None if speaker is None else valid_name(speaker, field)


def valid_text(text: str, field: str) -> str:
    if len(text) > MAX_TEXT:
        raise InvalidInput(f"{field} is longer than {MAX_TEXT} characters", field)
    return storable(text, field)


# What no store can hold or no person writes: UTF-16 surrogates (JSON's "\ud800" is valid JSON
# but no character: UTF-8 cannot encode it), NUL (PostgreSQL text cannot hold it) and Unicode's
# noncharacters (U+FDD0-U+FDEF and the last two code points of every plane).
_BAD_BMP = re.compile("[\x00\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def _first_bad(text: str) -> re.Match[str] | None:
    """Every string of every request passes here: one class of all 66 code points scanned 1 MB
    of Spanish in ~100 ms; the BMP class, then the plane-end ones only in a text that has
    characters beyond the BMP (told by its UTF-16 length), take a tenth of that."""
    found = _BAD_BMP.search(text)
    if len(text.encode("utf-16-le", "surrogatepass")) == 2 * len(text):
        return found
    for astral in _ASTRAL.finditer(text, 0, found.start() if found else len(text)):
        if ord(astral.group()) & 0xFFFE == 0xFFFE:
            return astral
    return found


def bad_character(text: str) -> str | None:
    """The first character of `text` we refuse, described for people with its place
    ("a lone surrogate (U+D800) at character 1"), or None when there is none."""
    found = _first_bad(text)
    if found is None:
        return None
    code = ord(found.group())
    if 0xD800 <= code <= 0xDFFF:
        what = "a lone surrogate"
    elif code == 0:
        what = "the NUL character"
    else:
        what = "a noncharacter"
    return f"{what} (U+{code:04X}) at character {found.start() + 1}"


def storable(text: str, field: str) -> str:
    """`text`, when every store can hold it; InvalidInput naming `field` otherwise."""
    bad = bad_character(text)
    if bad is not None:
        raise InvalidInput(f"{field} must not contain {bad}", field)
    return text


def name_key(name: str) -> str:
    """The form under which names collide: 'José', 'JOSÉ ' and 'jose\u0301' are one name."""
    return unicodedata.normalize("NFC", name.strip()).casefold()


def valid_tenant(tenant: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", tenant):
        raise InvalidInput("a tenant name is 1-64 of a-z, 0-9, '_', '.', '-'", "tenant")
    return tenant


MAX_SNIPPET = 10_000
MAX_METADATA_BYTES = 4096


def valid_snippet(text: object, field: str = "text") -> str:
    if text is None:
        raise InvalidInput(f"{field} is required: null cannot clear it", field)
    if not isinstance(text, str) or blank(text):
        raise InvalidInput(f"{field} must not be empty or only whitespace", field)
    if len(text) > MAX_SNIPPET:
        raise InvalidInput(f"{field} is longer than {MAX_SNIPPET} characters", field)
    return storable(text, field)


def valid_metadata(metadata: object) -> dict[str, str | int | float | bool]:
    """A flat JSON object of strings, numbers and booleans, at most 4 KB as JSON."""
    if not isinstance(metadata, dict):
        raise InvalidInput("metadata must be a JSON object", "metadata")
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise InvalidInput("metadata keys must be non-empty strings", "metadata")
        storable(key, "metadata")
        if not isinstance(value, str | int | float | bool) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            raise InvalidInput(
                f"metadata[{key!r}] must be a string, a number or a boolean", "metadata"
            )
        if isinstance(value, str):
            storable(value, "metadata")
    if len(json.dumps(metadata, ensure_ascii=False).encode()) > MAX_METADATA_BYTES:
        raise InvalidInput(f"metadata is larger than {MAX_METADATA_BYTES} bytes", "metadata")
    return metadata


def valid_importance(importance: object) -> float:
    if (
        isinstance(importance, bool)
        or not isinstance(importance, int | float)
        or not 0 <= importance <= 1
    ):
        raise InvalidInput("importance must be a number from 0 to 1", "importance")
    return float(importance)


ROLES = ("user", "assistant", "system")


def valid_message(role: object, content: object) -> tuple[str, str]:
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}", "role")
    if not isinstance(content, str) or blank(content):
        raise InvalidInput("content must not be empty or only whitespace", "content")
    return str(role), valid_text(content, "content")


MAX_LIST = 1000
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024


def valid_texts(texts: object, field: str) -> list[str]:
    """A list of at most MAX_LIST texts, each by the rules of texts."""
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise InvalidInput(f"{field} must be a list of strings", field)
    if len(texts) > MAX_LIST:
        raise InvalidInput(f"{field} has more than {MAX_LIST} items", field)
    return [valid_text(t, field) for t in texts]


def valid_document(document: object, field: str) -> dict[str, Any]:
    """A JSON object kept as it is (what a Character Card carries that alma does not use): at
    most MAX_DOCUMENT_BYTES as JSON, finite numbers, and only text every store can hold."""
    if not isinstance(document, dict):
        raise InvalidInput(f"{field} must be a JSON object", field)
    try:
        encoded = json.dumps(document, ensure_ascii=False, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        raise InvalidInput(f"{field} must be JSON with finite numbers", field) from None
    if len(encoded.encode("utf-8", "surrogatepass")) > MAX_DOCUMENT_BYTES:
        raise InvalidInput(f"{field} is larger than {MAX_DOCUMENT_BYTES} bytes as JSON", field)
    storable(encoded, field)
    return document


def valid_digest(digest: object, field: str) -> str:
    """A sha256 in hex, as the image store names what it keeps."""
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise InvalidInput(f"{field} must be a sha256 in lowercase hex", field)
    return digest
