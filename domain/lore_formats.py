"""Lorebooks in the ecosystem's formats: SillyTavern's world-info JSON and the Character Card's
`character_book`, in and out, with every field alma does not use kept verbatim (`extra`, and
the card's `extensions`), so a book goes out as it came in.

Field names and meanings follow SillyTavern (public/scripts/world-info.js: `convertCharacterBook`,
`newWorldInfoEntryDefinition`; src/endpoints/characters.js: `convertWorldInfoToCharacterBook`).
"""

from __future__ import annotations

from typing import Any

from alma.domain.errors import InvalidInput
from alma.domain.lorebook import POSITIONS, SELECTIVE_LOGIC

# SillyTavern's `world_info_position`: 0 before the character, 1 after, 4 at a depth; the
# others (author's note, example messages, outlets) alma places before the character and keeps.
_ST_POSITION = {0: "before_char", 1: "after_char", 4: "at_depth"}
_ST_NUMBER = {name: number for number, name in _ST_POSITION.items()}
# SillyTavern's entry fields that alma reads, by alma's name.
_ST_FIELDS = {
    "id": "uid",
    "keys": "key",
    "secondary_keys": "keysecondary",
    "comment": "comment",
    "content": "content",
    "constant": "constant",
    "selective": "selective",
    "selective_logic": "selectiveLogic",
    "insertion_order": "order",
    "position": "position",
    "depth": "depth",
    "enabled": "disable",
    "exclude_recursion": "excludeRecursion",
    "prevent_recursion": "preventRecursion",
    "scan_depth": "scanDepth",
    "case_sensitive": "caseSensitive",
    "match_whole_words": "matchWholeWords",
    "vectorized": "vectorized",
}
_ST_NAMES = {st: alma for alma, st in _ST_FIELDS.items()}
# Older SillyTavern files, and books converted by hand, name some fields as the cards do: read
# when SillyTavern's own name is not there too.
_OLD_NAMES = {
    "keys": "key",
    "secondary_keys": "keysecondary",
    "insertion_order": "order",
    "enabled": "disable",
}
# What SillyTavern writes into a card entry's `extensions`, by alma's name.
_CARD_EXTENSIONS = {
    "position": "position",
    "depth": "depth",
    "selective_logic": "selectiveLogic",
    "exclude_recursion": "exclude_recursion",
    "prevent_recursion": "prevent_recursion",
    "scan_depth": "scan_depth",
    "match_whole_words": "match_whole_words",
    "case_sensitive": "case_sensitive",
    "vectorized": "vectorized",
}
_CARD_FIELDS = (
    "id",
    "keys",
    "secondary_keys",
    "comment",
    "content",
    "constant",
    "selective",
    "insertion_order",
    "enabled",
    "position",
    "priority",
    "case_sensitive",
    "extensions",
)
_BOOK_FIELDS = ("name", "description", "scan_depth", "token_budget", "recursive_scanning")


def detect(data: Any) -> str:
    """`sillytavern` (entries by uid) or `character_book` (a list of entries), or InvalidInput."""
    if not isinstance(data, dict) or "entries" not in data:
        raise InvalidInput("a lorebook file is a JSON object with `entries`", "entries")
    if isinstance(data["entries"], dict):
        return "sillytavern"
    if isinstance(data["entries"], list):
        return "character_book"
    raise InvalidInput("`entries` must be an object (SillyTavern) or a list (a card)", "entries")


def from_sillytavern(data: dict[str, Any], name: str | None) -> tuple[dict[str, Any], list[Any]]:
    """The book's fields and its entries from SillyTavern's world-info JSON (`name`: the file's
    name, as SillyTavern names a book after its file, when the JSON has none)."""
    extra = {k: v for k, v in data.items() if k not in ("entries", "name")}
    settings = {"name": data.get("name") or name or "Lorebook", "extra": extra}
    entries = []
    for label, given in data["entries"].items():
        if not isinstance(given, dict):
            raise InvalidInput(f"entries[{label!r}] must be an object", "entries")
        entries.append(_from_st_entry(given, label))
    return settings, entries


def _from_st_entry(given: dict[str, Any], label: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"priority": None}
    extra: dict[str, Any] = {}
    for field, value in given.items():
        alma = _ST_NAMES.get(field)
        if alma is None and field in _OLD_NAMES and _OLD_NAMES[field] not in given:
            alma = field
        if alma is None:
            extra[field] = value
        elif field == "disable":
            entry["enabled"] = _negated(value, label)
        else:
            entry[alma] = value
    if "id" not in entry and label.isdigit():
        entry["id"] = int(label)
    for field in ("keys", "secondary_keys"):
        if isinstance(entry.get(field), str):  # very old files: one comma-separated string
            entry[field] = [k.strip() for k in entry[field].split(",") if k.strip()]
    if "selective_logic" in entry:
        entry["selective_logic"] = _logic(entry["selective_logic"], label)
    if "position" in entry:
        position = entry["position"]
        if position not in _ST_POSITION:
            if not isinstance(position, int) or isinstance(position, bool):
                raise InvalidInput(f"entries[{label!r}].position must be a number", "position")
            extra["position"] = position
        entry["position"] = _ST_POSITION.get(position, "before_char")
    entry["extra"] = extra
    return {k: v for k, v in entry.items() if v is not None or k == "priority"}


def to_sillytavern(settings: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": settings["name"], **settings["extra"], "entries": {}}
    for entry in entries:
        st: dict[str, Any] = {**entry["extra"]}
        if entry["extensions"]:
            st["extensions"] = entry["extensions"]
        for alma, field in _ST_FIELDS.items():
            st[field] = entry[alma]
        st["disable"] = not entry["enabled"]  # (SillyTavern's field is the opposite)
        st["selectiveLogic"] = SELECTIVE_LOGIC.index(entry["selective_logic"])
        st["position"] = _st_position(entry)
        out["entries"][str(entry["id"])] = st
    return out


def from_character_book(book: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """The book's fields and its entries from a card's `character_book` (V2 or V3), reading
    SillyTavern's `extensions` as SillyTavern does."""
    settings: dict[str, Any] = {f: book[f] for f in _BOOK_FIELDS if book.get(f) is not None}
    settings.setdefault("name", "Lorebook")
    settings["extensions"] = _object(book.get("extensions", {}), "extensions")
    settings["extra"] = {
        k: v for k, v in book.items() if k not in (*_BOOK_FIELDS, "extensions", "entries")
    }
    entries = []
    for n, given in enumerate(book["entries"]):
        if not isinstance(given, dict):
            raise InvalidInput(f"entries[{n}] must be an object", "entries")
        entries.append(_from_card_entry(given, n))
    return settings, entries


def _from_card_entry(given: dict[str, Any], n: int) -> dict[str, Any]:
    extensions = dict(_object(given.get("extensions", {}), f"entries[{n}].extensions"))
    entry: dict[str, Any] = {
        f: given[f] for f in _CARD_FIELDS if f != "extensions" and given.get(f) is not None
    }
    entry.setdefault("selective", False)  # the card spec's default, unlike SillyTavern's
    entry["extra"] = {k: v for k, v in given.items() if k not in _CARD_FIELDS}
    if "id" in entry and not _whole_number(entry["id"]):
        entry["extra"]["id"] = entry.pop("id")  # some editors write text ids: kept, not used
    for alma, field in _CARD_EXTENSIONS.items():
        if field in extensions:
            value = extensions.pop(field)
            if value is not None:
                entry[alma] = value
    position = entry.get("position")
    if isinstance(position, int) and not isinstance(position, bool):
        if position not in _ST_POSITION:
            entry["extra"]["position"] = position
        entry["position"] = _ST_POSITION.get(position, "before_char")
    elif position is not None and position not in POSITIONS:
        raise InvalidInput(f"entries[{n}].position must be before_char or after_char", "position")
    if "selective_logic" in entry:
        entry["selective_logic"] = _logic(entry["selective_logic"], str(n))
    entry["extensions"] = extensions
    return entry


def to_character_book(settings: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any]:
    book: dict[str, Any] = {
        **settings["extra"],
        **{f: settings[f] for f in _BOOK_FIELDS if settings[f] is not None},
        "name": settings["name"],
        "extensions": settings["extensions"],
        "entries": [],
    }
    for entry in entries:
        card: dict[str, Any] = {**entry["extra"]}
        card.pop("position", None)
        for field in _CARD_FIELDS:
            if field != "extensions" and entry[field] is not None:
                card[field] = entry[field]
        card["id"] = entry["extra"].get("id", card["id"])  # a text id it came with
        # SillyTavern's reading: only its "before" is before_char.
        card["position"] = "before_char" if _st_position(entry) == 0 else "after_char"
        extensions = {**entry["extensions"]}
        for alma, field in _CARD_EXTENSIONS.items():
            extensions[field] = entry[alma]
        extensions["position"] = _st_position(entry)
        extensions["selectiveLogic"] = SELECTIVE_LOGIC.index(entry["selective_logic"])
        card["extensions"] = extensions
        book["entries"].append(card)
    return book


def _st_position(entry: dict[str, Any]) -> int:
    """SillyTavern's number for the entry's position: the one it came with when alma has no
    place of that kind (kept in `extra`) and the entry was not moved since."""
    kept = entry["extra"].get("position")
    if entry["position"] == "before_char" and isinstance(kept, int):
        return kept
    return _ST_NUMBER[entry["position"]]


def _whole_number(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer()
    )


def _logic(value: Any, label: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 4:
        return SELECTIVE_LOGIC[value]
    raise InvalidInput(
        f"entries[{label!r}].selectiveLogic must be 0 (AND ANY), 1 (NOT ALL), 2 (NOT ANY) "
        "or 3 (AND ALL)",
        "selectiveLogic",
    )


def _negated(value: Any, label: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"entries[{label!r}].disable must be true or false", "disable")
    return not value


def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{field} must be a JSON object", field)
    return value
