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
prepared once per version of the book). Also with recursive scanning on.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from typing import Any

from alma.chat.lore import Book, activate
from alma.domain.lorebook import ENTRY_DEFAULTS
from alma.llm import tokens

TARGET_P95_MS = 3.0
RUNS = 500
LETTERS = "abcdefghijlmnopqrstuvyzáéíóñ"


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(4, 9)))


def world(rng: random.Random, recursive: bool) -> tuple[Book, list[str]]:
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
            }
        )
    settings = {"scan_depth": 20, "token_budget": 800, "recursive_scanning": recursive}
    messages = [" ".join(rng.choices(vocabulary, k=40)) for _ in range(20)]
    for entry in rng.sample(entries, 15):
        messages[rng.randrange(20)] += " " + entry["keys"][0]
    return Book(uuid.uuid4(), 1, settings, entries), messages


def measure(recursive: bool) -> tuple[float, float, int]:
    book, messages = world(random.Random(7), recursive)
    activate([book], messages, tokens.count)
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        used = activate([book], messages, tokens.count)
        times.append(time.perf_counter() - started)
    times.sort()
    return times[RUNS // 2] * 1000, times[int(RUNS * 0.95)] * 1000, len(used)


def main() -> None:
    one, five, _ = os.getloadavg()
    load = f"load average {one:.2f} (1 min), {five:.2f} (5 min)"
    print(f"alma lorebook benchmark: {os.cpu_count()} CPUs, {load}")
    for recursive in (False, True):
        p50, p95, used = measure(recursive)
        verdict = "ok" if p95 <= TARGET_P95_MS else "over"
        label = "activation, 1,000 entries, 20 messages" + (", recursive" if recursive else "")
        print(
            f"{label:52} p50 {p50:.2f} ms, p95 {p95:.2f} ms ({used} entries in the prompt)"
            + ("" if recursive else f"   p95 <= {TARGET_P95_MS:.2f} ms  {verdict}")
        )


if __name__ == "__main__":
    main()
