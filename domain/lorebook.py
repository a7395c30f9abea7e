"""The Lorebook aggregate (world info): entries that enter the prompt when their keys come up,
with the fields of the Character Card's `character_book`; and the lorebooks attached to a
character or an instance."""

from __future__ import annotations

import json
from typing import Any, ClassVar
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, DomainEvent, event

from alma.domain.actor import Actor
from alma.domain.errors import InvalidInput
from alma.domain.lore_keys import checked_key
from alma.domain.patch import merge_patch
from alma.domain.rules import MAX_NAME, storable, valid_name, valid_text

_ATTACHED = uuid5(NAMESPACE_URL, "https://alma.dev/attached-lorebooks")

SELECTIVE_LOGIC = ("and_any", "not_all", "not_any", "and_all")  # SillyTavern's 0-3, in order
POSITIONS = ("before_char", "after_char", "at_depth")
MAX_ENTRIES = 5000
MAX_KEYS = 100
MAX_DEPTH = 1000
MAX_ATTACHED = 50
MAX_EXTRA_BYTES = 64 * 1024
ENTRY_DEFAULTS: dict[str, Any] = {
    "keys": [],
    "secondary_keys": [],
    "selective": True,
    "selective_logic": "and_any",
    "content": "",
    "comment": "",
    "constant": False,
    "enabled": True,
    "case_sensitive": None,
    "match_whole_words": None,
    "insertion_order": 100,
    "position": "before_char",
    "depth": 4,
    "priority": None,
    "scan_depth": None,
    "exclude_recursion": False,
    "prevent_recursion": False,
    "vectorized": False,  # SillyTavern's name: also called up by meaning, not only by its keys
    "extensions": {},
    "extra": {},
}
BOOK_DEFAULTS: dict[str, Any] = {
    "name": "",
    "description": "",
    "scan_depth": 2,
    "token_budget": None,
    "recursive_scanning": False,
    "min_score": None,  # what calls up a vectorized entry by meaning; None: the model's own
    "extensions": {},
    "extra": {},
}


class Lorebook(Aggregate):
    """`settings`: the book's own fields (BOOK_DEFAULTS); `entries`: by id, each a full entry
    (ENTRY_DEFAULTS plus its `id`). Both are replaced, never changed in place, on every event."""

    Changed: ClassVar[type[DomainEvent]]
    Archived: ClassVar[type[DomainEvent]]
    Erased: ClassVar[type[DomainEvent]]
    erased = False

    @event("Created")
    def __init__(
        self, tenant: str, settings: dict[str, Any], entries: list[dict[str, Any]], actor: Actor
    ) -> None:
        self.tenant = tenant
        self.settings = {**BOOK_DEFAULTS, **settings}
        self.entries = {int(e["id"]): {**ENTRY_DEFAULTS, **e} for e in entries}
        self.archived = False

    @classmethod
    def create(
        cls, tenant: str, settings: dict[str, Any], entries: list[dict[str, Any]], actor: Actor
    ) -> Lorebook:
        if len(entries) > MAX_ENTRIES:
            raise InvalidInput(f"a lorebook holds at most {MAX_ENTRIES} entries", "entries")
        checked: list[dict[str, Any]] = []
        for n, given in enumerate(entries):
            entry_id = given.get("id")
            entry = valid_entry({k: v for k, v in given.items() if k != "id"}, {}, f"entries[{n}]")
            entry["id"] = _next_id(checked) if entry_id is None else _entry_id(entry_id, n)
            if any(e["id"] == entry["id"] for e in checked):
                raise InvalidInput(f"entries[{n}]: the id {entry['id']} is repeated", "entries")
            checked.append(entry)
        return cls(tenant, valid_settings(settings, {}), checked, actor)

    @property
    def name(self) -> str:
        return str(self.settings["name"])

    def in_order(self) -> list[dict[str, Any]]:
        """The entries by id, as they are listed and exported."""
        return [self.entries[entry_id] for entry_id in sorted(self.entries)]

    def edit(self, changes: dict[str, Any], actor: Actor) -> None:
        """A merge patch of the book's fields; one event, and none when nothing changes."""
        settings = valid_settings(changes, self.settings)
        if settings != self.settings:
            self.change(settings, actor)

    @event("Changed")
    def change(self, settings: dict[str, Any], actor: Actor) -> None:
        self.settings = {**BOOK_DEFAULTS, **settings}

    def new_entry(self, fields: dict[str, Any], actor: Actor) -> dict[str, Any]:
        if len(self.entries) >= MAX_ENTRIES:
            raise InvalidInput(f"a lorebook holds at most {MAX_ENTRIES} entries", "entries")
        entry = valid_entry(fields, {}, "entry")
        entry["id"] = _next_id(self.entries.values())
        self.add_entry(entry, actor)
        return entry

    @event("EntryAdded")
    def add_entry(self, entry: dict[str, Any], actor: Actor) -> None:
        self.entries = {**self.entries, int(entry["id"]): {**ENTRY_DEFAULTS, **entry}}

    def edit_entry(self, entry_id: int, changes: dict[str, Any], actor: Actor) -> dict[str, Any]:
        """A merge patch of one entry; records nothing when nothing changes."""
        current = self.entries[entry_id]
        entry = valid_entry(changes, current, "entry")
        entry["id"] = entry_id
        if entry != current:
            self.change_entry(entry, actor)
        return entry

    @event("EntryChanged")
    def change_entry(self, entry: dict[str, Any], actor: Actor) -> None:
        self.entries = {**self.entries, int(entry["id"]): {**ENTRY_DEFAULTS, **entry}}

    @event("EntryRemoved")
    def remove_entry(self, entry_id: int, actor: Actor) -> None:
        self.entries = {k: v for k, v in self.entries.items() if k != entry_id}

    @event("Archived")
    def archive(self, actor: Actor) -> None:
        self.archived = True

    @event("Erased")
    def erase(self, actor: Actor) -> None:
        """Its key is destroyed next: none of its events can be read."""
        self.archived = True
        self.erased = True


class AttachedLorebooks(Aggregate):
    """The lorebooks attached to one character or instance (its `owner_id`), in the order given.
    Its id derives from the owner's, so the owner's own aggregate needs no field for it."""

    @staticmethod
    def create_id(tenant: str, owner_id: UUID) -> UUID:
        return uuid5(_ATTACHED, f"{tenant}\x00{owner_id}")

    @event("Created")
    def __init__(self, tenant: str, owner_id: UUID, actor: Actor) -> None:
        self.tenant = tenant
        self.owner_id = owner_id
        self.lorebook_ids: list[UUID] = []

    @event("Changed")
    def change(self, lorebook_ids: list[UUID], actor: Actor) -> None:
        self.lorebook_ids = list(lorebook_ids)


def valid_settings(changes: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """The book's fields with `changes` merged into `current` (null: back to the default;
    `current` empty: a new book), checked."""
    _known(changes, BOOK_DEFAULTS, "")
    merged = _merged(changes, current, BOOK_DEFAULTS)
    merged["name"] = valid_name(merged["name"])
    merged["description"] = valid_text(_string(merged["description"], "description"), "description")
    merged["scan_depth"] = _whole(merged["scan_depth"], "scan_depth", 0, MAX_DEPTH)
    if merged["token_budget"] is not None:
        merged["token_budget"] = _whole(merged["token_budget"], "token_budget", 1, 10**7)
    merged["recursive_scanning"] = _flag(merged["recursive_scanning"], "recursive_scanning")
    if merged["min_score"] is not None:
        merged["min_score"] = _score(merged["min_score"], "min_score")
    for field in ("extensions", "extra"):
        merged[field] = _verbatim(merged[field], field)
    return merged


def valid_entry(changes: dict[str, Any], current: dict[str, Any], where: str) -> dict[str, Any]:
    """An entry with `changes` merged into `current` (null: back to the default; `current`
    empty: a new entry), checked;
    refusals name `where` (`entries[3]`, `entry`) and the field."""
    _known(changes, ENTRY_DEFAULTS, f"{where}.")
    merged = _merged(changes, {k: v for k, v in current.items() if k != "id"}, ENTRY_DEFAULTS)

    def at(field: str) -> str:
        return f"{where}.{field}"

    for field in ("keys", "secondary_keys"):
        keys = merged[field]
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise InvalidInput(f"{at(field)} must be a list of strings", at(field))
        if len(keys) > MAX_KEYS:
            raise InvalidInput(f"{at(field)} has more than {MAX_KEYS} keys", at(field))
        for key in keys:
            if len(key) > MAX_NAME:
                raise InvalidInput(f"{at(field)}: a key is over {MAX_NAME} characters", at(field))
            checked_key(storable(key, at(field)), at(field))
    flags = ("selective", "constant", "enabled", "exclude_recursion", "prevent_recursion")
    for field in (*flags, "vectorized"):
        merged[field] = _flag(merged[field], at(field))
    for field in ("case_sensitive", "match_whole_words"):
        if merged[field] is not None:
            merged[field] = _flag(merged[field], at(field))
    if merged["selective_logic"] not in SELECTIVE_LOGIC:
        raise InvalidInput(
            f"{at('selective_logic')} must be one of {SELECTIVE_LOGIC}", at("selective_logic")
        )
    if merged["position"] not in POSITIONS:
        raise InvalidInput(f"{at('position')} must be one of {POSITIONS}", at("position"))
    for field in ("content", "comment"):
        merged[field] = valid_text(_string(merged[field], at(field)), at(field))
    merged["insertion_order"] = _whole(merged["insertion_order"], at("insertion_order"))
    merged["depth"] = _whole(merged["depth"], at("depth"), 0, MAX_DEPTH)
    if merged["priority"] is not None:
        merged["priority"] = _whole(merged["priority"], at("priority"))
    if merged["scan_depth"] is not None:
        merged["scan_depth"] = _whole(merged["scan_depth"], at("scan_depth"), 0, MAX_DEPTH)
    for field in ("extensions", "extra"):
        merged[field] = _verbatim(merged[field], at(field))
    return merged


def _known(changes: dict[str, Any], defaults: dict[str, Any], prefix: str) -> None:
    unknown = sorted(set(changes) - set(defaults))
    if unknown:
        field = prefix + unknown[0]
        raise InvalidInput(f"{field} is not a field of a lorebook; keep it in `extra`", field)


def _merged(
    changes: dict[str, Any], current: dict[str, Any], defaults: dict[str, Any]
) -> dict[str, Any]:
    """`current` empty: a new one, whose verbatim fields are taken as they are (nulls too)."""
    merged: dict[str, Any] = {**defaults, **current}
    for field, value in changes.items():
        if value is None:
            merged[field] = defaults[field]
        elif field in ("extensions", "extra") and current:
            merged[field] = merge_patch(merged[field], value)
        else:
            merged[field] = value
    return merged


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string", field)
    return value


def _flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{field} must be true or false", field)
    return value


def _whole(value: Any, field: str, low: int = -(10**9), high: int = 10**9) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{field} must be a whole number from {low} to {high}", field)
    return value


def _score(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not -1 <= value <= 1:
        raise InvalidInput(f"{field} must be a number from -1 to 1", field)
    return float(value)


def _verbatim(value: Any, field: str) -> dict[str, Any]:
    """Fields alma does not use, kept as sent: a JSON object every store can hold."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{field} must be a JSON object", field)
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise InvalidInput(f"{field} must be plain JSON (no NaN or infinity)", field) from None
    if len(text.encode("utf-8", "surrogatepass")) > MAX_EXTRA_BYTES:
        raise InvalidInput(f"{field} is larger than {MAX_EXTRA_BYTES} bytes", field)
    storable(text, field)
    return value


def _entry_id(value: Any, n: int) -> int:
    return _whole(value, f"entries[{n}].id", 0, 10**9)


def _next_id(entries: Any) -> int:
    return max((int(e["id"]) for e in entries), default=-1) + 1
