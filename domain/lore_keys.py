"""A lorebook entry's keys: plain words or `/regex/flags`, matched as SillyTavern matches them,
with regular expressions bounded in time."""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import regex  # type: ignore[import-untyped]

from alma.domain.errors import InvalidInput

log = logging.getLogger(__name__)

# SillyTavern's `parseRegexFromString`: the whole key between slashes, then JavaScript's flags.
_REGEX_KEY = re.compile(r"^/(.+)/([a-z]*)$", re.DOTALL)
# JavaScript's flags that mean something here; g, y, d and u change nothing in a yes/no search.
_FLAGS = {"i": regex.IGNORECASE, "m": regex.MULTILINE, "s": regex.DOTALL}
_HARMLESS = set("gyud")
# A search longer than this is taken as no match (a turn's scan must stay quick).
SEARCH_TIMEOUT_S = 0.02
# At write time a key must answer these probes within this time, or it is refused.
_PROBE_TIMEOUT_S = 0.05
_PROBE_LENGTH = 3000


@dataclass(frozen=True)
class Key:
    """One key as the scan uses it: a compiled regular expression, or the text to look for
    (`sought`, lower-cased unless the match is case-sensitive) and whether that is one word."""

    text: str
    pattern: regex.Pattern[str] | None
    sought: str = ""
    one_word: bool = False


def is_regex(key: str) -> bool:
    return _REGEX_KEY.match(key) is not None


@lru_cache(maxsize=16384)
def compiled(key: str, case_sensitive: bool) -> Key:
    """The key ready for scanning; a regular expression that does not compile (it was checked
    at write time, so only events from elsewhere can hold one) never matches."""
    found = _REGEX_KEY.match(key)
    if found is None:
        sought = needle(key, case_sensitive)
        return Key(key, None, sought, len(sought.split()) == 1)
    try:
        return Key(key, _compile(found.group(1), found.group(2), "keys"))
    except InvalidInput:
        return Key(key, regex.compile(r"(?!)"))


def checked_key(key: str, field: str) -> str:
    """Refuses a regular expression key that is invalid, has a flag JavaScript does not know,
    or backtracks for too long on simple probes (a catastrophic pattern)."""
    found = _REGEX_KEY.match(key)
    if found is None:
        return key
    pattern = _compile(found.group(1), found.group(2), field)
    letters = {c for c in found.group(1) if c.isalnum() or c == " "} | {"a", "0", " "}
    for letter in sorted(letters):
        for probe in (letter * _PROBE_LENGTH + "!", (letter + " ") * (_PROBE_LENGTH // 2) + "!"):
            try:
                pattern.search(probe, timeout=_PROBE_TIMEOUT_S)
            except TimeoutError:
                raise InvalidInput(
                    f"{field}: the regular expression {key!r} takes too long to match "
                    "(catastrophic backtracking); simplify it",
                    field,
                ) from None
    return key


def _compile(body: str, flags: str, field: str) -> regex.Pattern[str]:
    unknown = set(flags) - set(_FLAGS) - _HARMLESS
    if unknown:
        raise InvalidInput(
            f"{field}: unknown regular expression flag {sorted(unknown)[0]!r}", field
        )
    value = 0
    for flag in flags:
        value |= _FLAGS.get(flag, 0)
    try:
        return regex.compile(body, value)
    except (regex.error, ValueError, OverflowError) as error:
        raise InvalidInput(
            f"{field}: invalid regular expression /{body}/: {error}", field
        ) from None


def needle(key: str, case_sensitive: bool) -> str:
    """What a plain key looks for: the key without surrounding spaces, lower-cased unless the
    match is case-sensitive."""
    return key.strip() if case_sensitive else key.strip().lower()


def matches(
    key: Key,
    text: str,
    folded: str,
    case_sensitive: bool,
    whole_words: bool,
    present: Collection[str] | None = None,
) -> bool:
    """Whether `key` (compiled for `case_sensitive`) occurs in `text` (`folded`: the same text
    lower-cased). A regular
    expression ignores the other options, as in SillyTavern; a whole-words key of one word must
    stand between non-word characters, one of several words is looked for as written.
    `present`: the plain needles known to occur in that text (`present`), if found already."""
    if key.pattern is not None:
        try:
            return key.pattern.search(text, timeout=SEARCH_TIMEOUT_S) is not None
        except TimeoutError:
            log.warning("lorebook key %r timed out: taken as no match", key.text)
            return False
    sought = key.sought
    haystack = text if case_sensitive else folded
    if not sought or not (sought in haystack if present is None else sought in present):
        return False
    return not (whole_words and key.one_word) or _as_word(sought, haystack)


def present(needles: frozenset[str], haystack: str) -> set[str]:
    """The needles that occur in `haystack`, found in one pass of a pattern that holds them all
    as a trie (at each place, the longest needle there, and the needles it begins with): many
    times quicker than looking for each one, for the thousands of keys a big world has."""
    found: set[str] = set()
    if not needles or not haystack:
        return found
    for match in _all_of(needles).finditer(haystack):
        longest = match.group(1)
        found.update(longest[:n] for n in range(1, len(longest) + 1) if longest[:n] in needles)
    return found


@lru_cache(maxsize=64)
def _all_of(needles: frozenset[str]) -> re.Pattern[str]:
    trie: dict[str, Any] = {}
    for text in needles:
        node = trie
        for character in text:
            node = node.setdefault(character, {})
        node[""] = {}  # a needle ends here
    return re.compile(f"(?=({_branches(trie)}))")


def _branches(node: dict[str, Any]) -> str:
    """The trie below `node` as a pattern: a chain of single children as one literal (so the
    nesting is only as deep as the branching), a needle that ends here as an optional rest
    (greedy: the longest first)."""
    parts = []
    for character, below in sorted((c, b) for c, b in node.items() if c):
        run = character
        while len(below) == 1 and "" not in below:
            ((following, below),) = below.items()
            run += following
        parts.append(re.escape(run) + _branches(below))
    if not parts:
        return ""
    body = parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"
    return f"(?:{body})?" if "" in node else body


def _as_word(needle: str, haystack: str) -> bool:
    r"""Whether `needle` occurs with no word character (a letter, digit or `_`, in any script)
    right before or after it: SillyTavern's `(?:^|\W)key(?:$|\W)`, found with `str.find`,
    which is some hundred times quicker than that pattern over a long conversation."""
    start = haystack.find(needle)
    while start != -1:
        end = start + len(needle)
        if (start == 0 or not _is_word(haystack[start - 1])) and (
            end == len(haystack) or not _is_word(haystack[end])
        ):
            return True
        start = haystack.find(needle, start + 1)
    return False


def _is_word(character: str) -> bool:
    return character.isalnum() or character == "_"
