"""Forgetting with the conversation: which messages `DELETE …/memories/{id}?recall=messages`
takes out of recall, on hand-labelled data.

Run from the repository root: `python bench/forget.py`. Loads two data sets into alma on the
embedded default and asks `chat.forgetting.stating` (what such a forget takes; nothing is
forgotten here) for each memory:

- `tests/data/forget/cases.json`: 9 conversations, each with a memory (and shorter ways to write
  it) and messages labelled `states`, `about` (speaks of it without stating it: either way) or
  `other` (near misses on purpose: the same kind of fact about someone else, the same name in
  another fact);
- `tests/data/recall` with `tests/data/forget/recall_memories.json`: 55 memories written for its
  questions; a question's answer turns state its memory, the turns beside them are `near`
  (replies that often echo them: either way), every other message of the conversation `other`.

Each memory is asked twice: as added by hand, and as if the memory process had formed it from
the ten messages around its first answer turn (its `source`, where the bar is lower). Prints,
per data set and language, how many messages of each label were taken, and how long finding
them took.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alma.api.services import Services, build_services
from alma.chat.forgetting import stating
from alma.domain import Actor, NewMessage
from alma.settings import Settings

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
WINDOW = 10  # messages a memory is formed from: the memory process's import window
ACTOR = Actor("bench", "bench", "forget")


@dataclass
class Case:
    data_set: str
    conversation: str
    language: str
    memory: str
    messages: list[dict[str, Any]]  # role, content, label
    first: int  # the first stating message


@dataclass
class Tally:
    taken: Counter[str] = field(default_factory=Counter)
    total: Counter[str] = field(default_factory=Counter)
    times: list[float] = field(default_factory=list)


def cases() -> list[Case]:
    found = []
    for case in json.loads((DATA / "forget" / "cases.json").read_text())["cases"]:
        first = next(i for i, m in enumerate(case["messages"]) if m["label"] == "states")
        for memory in [case["memory"], *case["also"]]:
            found.append(
                Case("cases", case["id"], case["language"], memory, case["messages"], first)
            )
    conversations = {
        c["id"]: c
        for c in json.loads((DATA / "recall" / "conversations.json").read_text())["conversations"]
    }
    written = json.loads((DATA / "forget" / "recall_memories.json").read_text())["memories"]
    for key, memory in written.items():
        name, question = key.split("/")
        conversation = conversations[name]
        answers = set(conversation["questions"][int(question)]["answer_turns"])
        beside = {turn + step for turn in answers for step in (-1, 1)} - answers
        messages = [
            {**m, "label": "states" if i in answers else "near" if i in beside else "other"}
            for i, m in enumerate(conversation["messages"])
        ]
        found.append(Case("recall", name, conversation["language"], memory, messages, min(answers)))
    return found


def measure(services: Services, all_cases: list[Case]) -> dict[tuple[str, str, str], Tally]:
    app, index = services.app, services.memory_index
    character = app.create_character("bench", {"name": "Bench", "description": ""}, ACTOR)
    instances: dict[str, tuple[Any, list[str]]] = {}  # one instance per conversation
    for case in all_cases:
        key = f"{case.data_set}/{case.conversation}"
        if key not in instances:
            instance = app.create_instance("bench", character.id, f"i{len(instances)}", "", ACTOR)
            said = [NewMessage(m["role"], m["content"]) for m in case.messages]
            ids = [str(i) for i in app.import_messages("bench", instance.id, said, ACTOR)]
            instances[key] = (instance.id, ids)
    services.memory.catch_up()
    tallies: dict[tuple[str, str, str], Tally] = {}
    for case in all_cases:
        instance_id, ids = instances[f"{case.data_set}/{case.conversation}"]
        labels = dict(zip(ids, (m["label"] for m in case.messages), strict=True))
        start = max(0, case.first - WINDOW // 2)
        window = ids[start : start + WINDOW]
        for formed in (False, True):
            source = {"messages": window} if formed else None
            memory = app.add_memory("bench", instance_id, case.memory, ACTOR, source=source)
            began = time.perf_counter()
            taken = {w.message.doc_id for w in stating(index, memory)}
            tally = tallies.setdefault(
                (case.data_set, case.language, "formed from 10" if formed else "by hand"), Tally()
            )
            tally.times.append(time.perf_counter() - began)
            for message_id, label in labels.items():
                tally.total[label] += 1
                tally.taken[label] += message_id in taken
    return tallies


def main() -> None:
    all_cases = cases()
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(data_dir=Path(folder), _env_file=None, memory_formation=False)  # type: ignore[call-arg]
        services = build_services(settings)
        try:
            services.memory_index.embedder.load()
            tallies = measure(services, all_cases)
        finally:
            services.close()
    print(f"{len(all_cases)} memories; taken / messages of each label")
    print(
        f"{'data set':<9}{'language':<9}{'memory':<16}{'states':>10}{'about/near':>12}"
        f"{'other':>12}{'p50 ms':>8}{'p95 ms':>8}"
    )
    for (data_set, language, how), tally in sorted(tallies.items()):
        gray = "about" if data_set == "cases" else "near"
        times = sorted(tally.times)
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        print(
            f"{data_set:<9}{language:<9}{how:<16}"
            f"{tally.taken['states']:>4} / {tally.total['states']:<3}"
            f"{tally.taken[gray]:>5} / {tally.total[gray]:<4}"
            f"{tally.taken['other']:>4} / {tally.total['other']:<5}"
            f"{statistics.median(times) * 1000:>8.0f}{p95 * 1000:>8.0f}"
        )


if __name__ == "__main__":
    main()
