"""Lorebook activation for one chat turn: which entries the conversation's last messages (and,
with recursive scanning, the entries already activated) call up, within each book's budget.

It follows SillyTavern's world info: a key is a word or `/regex/flags`; an entry with secondary
keys and `selective` activates by its logic (AND ANY, AND ALL, NOT ANY, NOT ALL); a constant
entry is always in; each book scans its own depth (an entry may scan its own) and fills its
token budget with constant entries first, then by priority (the insertion order when it has
none), each whole, up to the first that does not fit. Beyond SillyTavern's keys, a `vectorized`
entry may also be called up by meaning (projections/lore_meaning.py): of a book's vectorized
entries, the one the new message is most about, when it is close enough.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from alma.chat.prompt import LoreEntry
from alma.domain.lore_keys import Key, compiled, matches, present

MAX_RECURSION_STEPS = 10


@dataclass(frozen=True)
class Book:
    """A lorebook as activation needs it: its id, its fields and its entries."""

    id: UUID
    version: int
    settings: dict[str, Any]
    entries: Sequence[dict[str, Any]]


@dataclass(frozen=True)
class _Keys:
    """A version of a lorebook's keys, ready for scanning: each entry's (by id) compiled for
    its case sensitivity, and the plain ones of each case, which `present` looks for at once."""

    of_entry: dict[int, tuple[tuple[Key, ...], tuple[Key, ...]]]
    needles: dict[bool, frozenset[str]]
    # Which entries a plain primary key (by case, then needle) can call up; those with a
    # regular-expression primary key may be called up by any text.
    by_needle: dict[bool, dict[str, set[int]]]
    by_pattern: frozenset[int]
    deepest: int  # the most messages any entry scans


# Recent versions of lorebooks, so a turn does not prepare the same keys again.
_PREPARED: dict[tuple[UUID, int], _Keys] = {}
_PREPARED_KEPT = 256


def _keys(book: Book) -> _Keys:
    prepared = _PREPARED.get((book.id, book.version))
    if prepared is None:
        of_entry = {}
        needles: dict[bool, set[str]] = {False: set(), True: set()}
        by_needle: dict[bool, dict[str, set[int]]] = {False: {}, True: {}}
        by_pattern = set()
        for entry in book.entries:
            entry_id, case = int(entry["id"]), bool(entry["case_sensitive"])
            primary = tuple(compiled(k, case) for k in entry["keys"])
            secondary = tuple(compiled(k, case) for k in entry["secondary_keys"] if k.strip())
            of_entry[entry_id] = (primary, secondary)
            needles[case].update(k.sought for k in primary + secondary if k.pattern is None)
            for key in primary:
                if key.pattern is not None:
                    by_pattern.add(entry_id)
                elif key.sought:
                    by_needle[case].setdefault(key.sought, set()).add(entry_id)
        depths = [e["scan_depth"] for e in book.entries if e["scan_depth"] is not None]
        prepared = _Keys(
            of_entry,
            {case: frozenset(n - {""}) for case, n in needles.items()},
            by_needle,
            frozenset(by_pattern),
            max([book.settings["scan_depth"], *depths]),
        )
        if len(_PREPARED) >= _PREPARED_KEPT:
            _PREPARED.clear()
        _PREPARED[(book.id, book.version)] = prepared
    return prepared


class _Scan:
    """The texts a book's entries are matched against, by scan depth, each also lower-cased
    once, and which of the book's plain keys occur in each."""

    def __init__(self, book: Book, messages: Sequence[str]) -> None:
        self.book = book
        self.messages = messages
        self.recursed: list[str] = []
        self._texts: dict[tuple[int, bool], tuple[str, str]] = {}
        self._present: dict[tuple[int, bool, bool], set[str]] = {}
        self._recursed_present: dict[bool, set[str]] = {}  # in the activated entries' content

    def text(self, depth: int, with_recursion: bool) -> tuple[str, str]:
        key = (depth, with_recursion)
        if key not in self._texts:
            parts = list(self.messages[-depth:]) if depth > 0 else []
            if with_recursion:
                parts += self.recursed
            text = "\n".join(parts)
            self._texts[key] = (text, text.lower())
        return self._texts[key]

    def present(self, depth: int, with_recursion: bool, case_sensitive: bool) -> set[str]:
        """The book's plain keys found in the text (the messages' part scanned once; each
        recursion step scans only the content it adds)."""
        kept = (depth, with_recursion, case_sensitive)
        if kept not in self._present:
            if with_recursion:
                said = self.present(depth, False, case_sensitive)
                self._present[kept] = said | self._recursed_present.get(case_sensitive, set())
            else:
                text, folded = self.text(depth, False)
                needles = _keys(self.book).needles[case_sensitive]
                self._present[kept] = present(needles, text if case_sensitive else folded)
        return self._present[kept]

    def recurse(self, contents: list[str]) -> None:
        self.recursed += contents
        self._texts = {k: v for k, v in self._texts.items() if not k[1]}
        self._present = {k: v for k, v in self._present.items() if not k[1]}
        added = "\n".join(contents)
        for case in (False, True):
            needles = _keys(self.book).needles[case]
            found = present(needles, added if case else added.lower())
            self._recursed_present[case] = self._recursed_present.get(case, set()) | found


Meaning = Callable[[Sequence[str]], Sequence[float]]


def activate(
    books: Sequence[Book],
    messages: Sequence[str],
    count: Callable[[str], int],
    meaning: Meaning | None = None,
    min_score: float = 0.5,
) -> list[LoreEntry]:
    """The entries to offer the prompt, most important first (constant, then by priority),
    each book within its own token budget. `messages`: the conversation's texts, oldest first,
    ending with the new message; `meaning`: how close in meaning each text is to the new
    message, which calls up a vectorized entry from `min_score` (or its book's own)."""
    chosen: list[LoreEntry] = []
    for book in books:
        chosen += _within_budget(book, _activated(book, messages, meaning, min_score), count)
    return sorted(chosen, key=_importance)


def _activated(
    book: Book, messages: Sequence[str], meaning: Meaning | None, min_score: float
) -> list[dict[str, Any]]:
    scan = _Scan(book, messages)
    keys = _keys(book)
    waiting = [e for e in book.entries if e["enabled"] and e["content"].strip()]
    meant = _by_meaning(book, waiting, meaning, min_score)
    found: list[dict[str, Any]] = []
    for _ in range(MAX_RECURSION_STEPS):
        able = _callable(scan, keys)
        new = [
            e
            for e in waiting
            if e is meant
            or e["constant"]
            or (int(e["id"]) in able and _called(e, book.settings, scan, keys))
        ]
        if not new:
            break
        found += new
        called = {id(e) for e in new}
        waiting = [e for e in waiting if id(e) not in called]
        if not book.settings["recursive_scanning"]:
            break
        contents = [e["content"] for e in new if not e["prevent_recursion"]]
        if not contents:
            break
        scan.recurse(contents)
    return found


def _callable(scan: _Scan, keys: _Keys) -> set[int]:
    """The entries whose keys can match at all: a plain primary key found in the most text any
    entry scans (each entry's own text is part of it), or a regular-expression one."""
    able = set(keys.by_pattern)
    for case, entries in keys.by_needle.items():
        for found in scan.present(keys.deepest, True, case):
            able |= entries.get(found, set())
    return able


def _by_meaning(
    book: Book, waiting: list[dict[str, Any]], meaning: Meaning | None, min_score: float
) -> dict[str, Any] | None:
    """Of the book's vectorized entries, the one the new message is most about, if close enough."""
    candidates = [e for e in waiting if e["vectorized"] and not e["constant"]]
    if meaning is None or not candidates:
        return None
    scores = meaning([e["content"] for e in candidates])
    best = max(range(len(candidates)), key=scores.__getitem__)
    own = book.settings["min_score"]
    return candidates[best] if scores[best] >= (min_score if own is None else own) else None


def _called(entry: dict[str, Any], settings: dict[str, Any], scan: _Scan, keys: _Keys) -> bool:
    if entry["constant"]:
        return True
    depth = entry["scan_depth"] if entry["scan_depth"] is not None else settings["scan_depth"]
    recursion = not entry["exclude_recursion"]
    text, folded = scan.text(depth, recursion)
    if not text:
        return False
    case = bool(entry["case_sensitive"])
    words = bool(entry["match_whole_words"])
    there = scan.present(depth, recursion, case)
    primary, secondary = keys.of_entry[int(entry["id"])]
    for key in primary:
        if matches(key, text, folded, case, words, there):
            break
    else:
        return False
    if not entry["selective"] or not secondary:
        return True
    hits = [matches(key, text, folded, case, words, there) for key in secondary]
    logic = entry["selective_logic"]
    if logic == "and_any":
        return any(hits)
    if logic == "and_all":
        return all(hits)
    if logic == "not_any":
        return not any(hits)
    return not all(hits)  # not_all


def _within_budget(
    book: Book, entries: list[dict[str, Any]], count: Callable[[str], int]
) -> list[LoreEntry]:
    offered = sorted((_lore(book.id, e) for e in entries), key=_importance)
    budget = book.settings["token_budget"]
    if budget is None:
        return offered
    kept: list[LoreEntry] = []
    for entry in offered:
        budget -= count(entry.content)
        if budget < 0:
            break
        kept.append(entry)
    return kept


def _importance(entry: LoreEntry) -> tuple[bool, int]:
    return (not entry.constant, -entry.priority)


def _lore(book_id: UUID, entry: dict[str, Any]) -> LoreEntry:
    priority = entry["priority"] if entry["priority"] is not None else entry["insertion_order"]
    return LoreEntry(
        id=f"{book_id}:{entry['id']}",
        content=entry["content"],
        position=entry["position"],
        depth=entry["depth"],
        order=entry["insertion_order"],
        priority=priority,
        constant=entry["constant"],
    )
