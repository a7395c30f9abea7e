"""Character Cards (V1, V2 `chara_card_v2`, V3 `chara_card_v3`) to a character's fields and back.

A card's fields that alma uses map onto the character (`first_mes` is the greeting, `mes_example`
the example dialogue, ...); everything else it carries (`extensions`, `character_book`, `assets`,
unknown fields, at the top level or in `data`) is kept verbatim in `card_extras`, so an export
gives it back and import → export → import is lossless. As SillyTavern does, a V1 card's fields
that are missing are empty, a card's `tags` may be a comma-separated string, and V3 times given
in milliseconds are read as the seconds the spec says.
"""

from __future__ import annotations

import json
from typing import Any

from alma.domain.character import CARD_LISTS, CARD_TEXTS
from alma.domain.errors import InvalidInput

V2 = "chara_card_v2"
V3 = "chara_card_v3"
# alma's field -> the card's key in `data` (V2, V3) or at the top level (V1).
FIELDS = {
    "name": "name",
    "description": "description",
    "personality": "personality",
    "scenario": "scenario",
    "greeting": "first_mes",
    "example_dialogue": "mes_example",
    "system_prompt": "system_prompt",
    **{field: field for field in (*CARD_TEXTS, *CARD_LISTS)},
}
# V2 and V3 cards repeat these V1 fields at the top level for older readers: alma writes them
# from `data`, so an edit shows there too.
_V1_MIRRORS = ("name", "description", "personality", "scenario", "first_mes", "mes_example")
# Required by the specs, and empty when a card leaves them out: not kept when empty, written on
# export, so a card that had them empty and one that had none import alike.
_REQUIRED_EMPTY = {"extensions": dict, "group_only_greetings": list}
_TIMES = ("creation_date", "modification_date")


def parse_card(text: bytes | str, where: str = "the card") -> dict[str, Any]:
    """The JSON object of a card, or InvalidInput saying what is wrong with it."""
    try:
        card = json.loads(text)
    except UnicodeDecodeError:
        raise InvalidInput(f"{where} is not UTF-8 text", "file") from None
    except (ValueError, RecursionError) as error:
        raise InvalidInput(f"{where} is not JSON: {error}", "file") from None
    if not isinstance(card, dict):
        raise InvalidInput(f"{where} must be a JSON object", "file")
    return card


def card_fields(card: dict[str, Any]) -> dict[str, Any]:
    """The character's fields from a card, `card_extras` holding what alma does not use:
    `{"card": top-level fields, "data": fields of data}`."""
    spec = card.get("spec")
    data: dict[str, Any] = card
    top: dict[str, Any] = {}
    if spec in (V2, V3):
        if not isinstance(card.get("data"), dict):
            raise InvalidInput(f"a {spec} card must have a `data` object", "file")
        data = card["data"]
        top = {
            k: v for k, v in card.items() if k not in ("spec", "spec_version", "data", *_V1_MIRRORS)
        }
    elif spec is not None:
        raise InvalidInput(
            f"unknown card spec {spec!r}: alma reads {V2!r} and {V3!r} (and V1, which has none)",
            "file",
        )
    fields: dict[str, Any] = {}
    for field, key in FIELDS.items():
        value = data.get(key)
        if field == "tags" and isinstance(value, str):
            value = [tag.strip() for tag in value.split(",") if tag.strip()]
        elif field == "alternate_greetings" and isinstance(value, str):
            value = [value]
        if value is None:
            continue
        expected = list if field in CARD_LISTS else str
        if not isinstance(value, expected) or (
            expected is list and not all(isinstance(v, str) for v in value)
        ):
            what = "a list of strings" if expected is list else "a string"
            raise InvalidInput(f"the card's `{key}` must be {what}", "file")
        fields[field] = value
    if not fields.get("name", "").strip() and isinstance(card.get("name"), str):
        fields["name"] = card["name"]  # as SillyTavern reads a card whose data has none
    if not fields.get("name", "").strip():
        raise InvalidInput("the card has no name", "file")
    used = set(FIELDS.values())
    rest = {k: v for k, v in data.items() if k not in used}
    if spec is None:  # a V1 card's other fields stay where they were: at the top level
        top, rest = rest, {}
    for key, kind in _REQUIRED_EMPTY.items():
        if isinstance(rest.get(key), kind) and not rest[key]:
            del rest[key]
    for key in _TIMES:
        if isinstance(rest.get(key), int | float) and not isinstance(rest[key], bool):
            rest[key] = _seconds(rest[key])
    extras = {name: part for name, part in (("card", top), ("data", rest)) if part}
    if extras:
        fields["card_extras"] = extras
    return fields


def card_document(
    character: Any, spec: str, character_book: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The card (V2 or V3) of a character: its fields, what its card carried besides, and its
    lorebook as the card's `character_book` when it has one."""
    extras = character.card_extras
    data: dict[str, Any] = {key: getattr(character, field) for field, key in FIELDS.items()}
    data.update(extras.get("data", {}))
    if character_book is not None:
        data["character_book"] = character_book
    for key, kind in _REQUIRED_EMPTY.items():
        if key == "extensions" or spec == V3:
            data.setdefault(key, kind())
    card = {key: data[key] for key in _V1_MIRRORS}
    card.update(extras.get("card", {}))
    card |= {"spec": spec, "spec_version": "3.0" if spec == V3 else "2.0", "data": data}
    return card


def _seconds(moment: float) -> int | float:
    """Seconds since the epoch: some front-ends write milliseconds (any time after 1973 in
    milliseconds is past the year 5000 in seconds)."""
    return moment // 1000 if moment > 100_000_000_000 else moment
