"""Memory formation by the local model, measured: precision, recall, dropped answers, time.

Run from the repository root:
`python bench/formation.py [--model NAME|FILE.gguf ...] [--threads N] [--answers DIR]`.

Each model (by default `qwen2.5-coder-1.5b`, alma's default, then `smollm2-135m`) runs through
alma's own local backend as `alma serve` runs it with no key (`LocalModelServer`: context 2048,
one thread, seed 42) and is asked exactly what the memory process asks it
(`fact_list_extraction`: the worked examples, the JSON schema, temperature 0), over the annotated
conversations of tests/data/formation (es.json, en.json). A conversation is formed as a live
chat is, one window per turn (the user's message and the character's reply), and what
`read_fact_list` accepts is what would be written.

Each conversation lists the facts a person would expect remembered (`remember`), facts it is
fine to remember but not required (`optional`: what the character says of itself), and facts
that must not be (`not`: small talk); a fact is its key words, every one of which a memory must
contain at a word's start, case and accents aside (`a|b`: either word). Printed per language:

- precision: written memories that state a `remember` or `optional` fact, over all written;
- recall: `remember` facts stated by at least one written memory, over all of them;
- small talk: written memories that state a `not` fact;
- repeats: written memories every expected fact of which (`remember` or `optional`, at least
  one) an earlier memory of the conversation already states, a fact told twice remembered
  twice. Memories the memory process leaves out because the conversation's earlier memories (or
  earlier ones of the same answer) say them already (`repeats`, as it checks the
  instance's memories) are not written; the repeats and the recall are also given as they would
  be without that check, and the memories it left out;
- dropped: answers `read_fact_list` refused whole (not JSON, wrong shape), and refused facts;
- seconds per extraction, wall clock and the process's CPU (llama.cpp runs in it): the wall
  clock is the machine's, inflated by whatever else runs on it; the CPU time is not.

`--operations` measures instead whether the model could revise and forget: the hosted task
(`operations_extraction`, the memories offered with their ids), its answer held to a JSON schema
of add/revise/forget on the offered ids, on tests/data/formation/operations.json. Printed: the
revisions and forgettings a person expects that it made, the memories it revised or forgot
that it should have left alone, and the offered memories it added back as new facts.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# `python bench/formation.py` puts bench/ first on sys.path: import from the root instead.
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench")]

from alma.chat.duplicates import repeats as repeated  # noqa: E402
from alma.chat.extraction import (  # noqa: E402
    Line,
    Malformed,
    fact_list_extraction,
    operations_extraction,
)
from alma.llm.local import DEFAULT_LOCAL_MODEL, LocalModelServer  # noqa: E402
from alma.projections.ranking import fold  # noqa: E402
from bench.report import Row, log, machine_load, print_table  # noqa: E402

DATA = ROOT / "tests" / "data" / "formation"
MODELS = (DEFAULT_LOCAL_MODEL, "smollm2-135m")
LANGUAGES = ("es", "en")
Fact = list[str]  # key words, each "word" or "word|other"


@dataclass
class Tally:
    written: int = 0
    right: int = 0  # written memories that state an expected or optional fact
    small_talk: int = 0
    repeats: int = 0
    expected: int = 0
    recalled: int = 0
    repeats_unchecked: int = 0  # as they would be without the check for repeats
    recalled_unchecked: int = 0
    left_out: int = 0  # memories the check for repeats left out
    answers: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # by reason
    refused: int = 0  # facts left out of an accepted answer
    wall_s: float = 0.0
    cpu_s: float = 0.0


def states(memory: str, fact: Fact) -> bool:
    """Whether `memory` holds every key word of `fact`, each at a word's start."""
    text = fold(memory)
    return all(
        any(re.search(rf"\b{re.escape(fold(word))}", text) for word in key.split("|"))
        for key in fact
    )


def turns(messages: list[dict[str, str]]) -> list[list[Line]]:
    """The windows a live chat forms: each user message with the reply after it."""
    windows: list[list[Line]] = []
    for message in messages:
        line = Line(message["role"], message["content"], message.get("name"))
        if line.role == "user" or not windows:
            windows.append([line])
        else:
            windows[-1].append(line)
    return windows


def measure(model: str, threads: int, answers: Path | None) -> dict[str, Tally]:
    server = LocalModelServer(model, n_threads=threads)
    log(f"{server.model} loaded in {server.load_s:.1f} s")
    client = server.client(timeout_s=600.0)
    tallies: dict[str, Tally] = {}
    kept: list[dict[str, Any]] = []
    try:
        for language in LANGUAGES:
            data = json.loads((DATA / f"{language}.json").read_text())
            tally = tallies.setdefault(language, Tally())
            for conversation in data["conversations"]:
                written: list[tuple[str, str | None]] = []  # text, speaker
                unchecked: list[str] = []
                for window in turns(conversation["messages"]):
                    extraction = fact_list_extraction(
                        conversation["character"], window, client.context_window
                    )
                    if extraction is None:
                        continue
                    wall, cpu = time.perf_counter(), time.process_time()
                    completion = client.complete(
                        extraction.messages, extraction.max_tokens, 0.0, extraction.sampling
                    )
                    tally.wall_s += time.perf_counter() - wall
                    tally.cpu_s += time.process_time() - cpu
                    tally.answers += 1
                    try:
                        operations, refused = extraction.read(completion.text)
                    except Malformed as error:
                        tally.dropped[error.reason] = tally.dropped.get(error.reason, 0) + 1
                        operations, refused = [], 0
                    tally.refused += refused
                    for op in operations:
                        text = op.text or ""
                        unchecked.append(text)
                        if repeated(text, op.speaker, written):
                            tally.left_out += 1
                        else:
                            written.append((text, op.speaker))
                    kept.append({"id": conversation["id"], "answer": completion.text})
                texts = [text for text, _ in written]
                score(conversation, texts, tally)
                tally.repeats_unchecked += repeats(conversation, unchecked)
                tally.recalled_unchecked += recalled(conversation, unchecked)
                log(f"{server.model} {conversation['id']}: {texts}")
    finally:
        server.close()
    if answers is not None:
        answers.mkdir(parents=True, exist_ok=True)
        target = answers / f"{Path(model).name.removesuffix('.gguf')}.jsonl"
        target.write_text("".join(json.dumps(a, ensure_ascii=False) + "\n" for a in kept))
    return tallies


def score(conversation: dict[str, Any], written: list[str], tally: Tally) -> None:
    accepted = conversation["remember"] + conversation.get("optional", [])
    tally.written += len(written)
    tally.right += sum(any(states(m, fact) for fact in accepted) for m in written)
    tally.small_talk += sum(any(states(m, fact) for fact in conversation["not"]) for m in written)
    tally.repeats += repeats(conversation, written)
    tally.expected += len(conversation["remember"])
    tally.recalled += recalled(conversation, written)


def recalled(conversation: dict[str, Any], written: list[str]) -> int:
    """The `remember` facts that a written memory states."""
    return sum(any(states(m, fact) for m in written) for fact in conversation["remember"])


def repeats(conversation: dict[str, Any], written: list[str]) -> int:
    """Written memories whose expected facts (one at least) an earlier one states already."""
    accepted = conversation["remember"] + conversation.get("optional", [])
    count = 0
    for n, memory in enumerate(written):
        facts = [fact for fact in accepted if states(memory, fact)]
        count += bool(facts) and all(any(states(m, f) for m in written[:n]) for f in facts)
    return count


def operations_schema(ids: list[str]) -> dict[str, Any]:
    """The hosted task's answer as a JSON schema: add, revise or forget an offered id."""
    text = {"type": "string", "minLength": 1, "maxLength": 160}

    def op(name: str, **fields: Any) -> dict[str, Any]:
        properties = {"op": {"const": name}, **fields}
        return {
            "type": "object",
            "properties": properties,
            "required": list(properties),
            "additionalProperties": False,
        }

    one = {"enum": ids}
    items = {"anyOf": [op("add", text=text), op("revise", id=one, text=text), op("forget", id=one)]}
    schema = {"type": "array", "items": items, "maxItems": 4}
    return {"type": "json_schema", "json_schema": {"name": "operations", "schema": schema}}


def operations(model: str, threads: int) -> None:
    """Would revise and forget work at this size? The hosted task (`operations_extraction`, the
    memories offered with their ids), held to a JSON schema, on tests/data/formation's cases."""
    cases = json.loads((DATA / "operations.json").read_text())["cases"]
    server = LocalModelServer(model, n_threads=threads)
    client = server.client(timeout_s=600.0)
    asked = {"revise": 0, "forget": 0}
    made = {"revise": 0, "forget": 0}
    wrong = copied = 0
    try:
        for case in cases:
            offered = list(case["memories"].items())
            extraction = operations_extraction(
                "Rosa", offered, [Line("user", case["said"])], client.context_window
            )
            sampling = {"response_format": operations_schema(list(case["memories"]))}
            answer = client.complete(extraction.messages, extraction.max_tokens, 0.0, sampling)
            done, _ = extraction.read(answer.text)
            log(f"{server.model} {case['said']!r}: {[(o.op, o.memory_id, o.text) for o in done]}")
            expect = case["expect"]
            kind = "revise" if "revise" in expect else "forget" if "forget" in expect else None
            changed = [o for o in done if o.op != "add"]
            if kind is not None:
                asked[kind] += 1
                made[kind] += any(
                    o.op == kind
                    and o.memory_id == expect[kind]
                    and (kind == "forget" or states(o.text or "", expect["keys"]))
                    for o in changed
                )
            wrong += sum(kind is None or o.memory_id != expect[kind] for o in changed)
            kept = [fold(text) for text in case["memories"].values()]
            copied += sum(
                any(memory in fold(o.text or "") for memory in kept) for o in done if o.op == "add"
            )
    finally:
        server.close()
    print_table(
        f"revise and forget, {model}",
        [
            Row("revisions made", share(made["revise"], asked["revise"])),
            Row("forgettings made", share(made["forget"], asked["forget"])),
            Row("memories wrongly revised or forgotten", f"{wrong} (in {len(cases)} cases)"),
            Row("offered memories added back as new facts", f"{copied} (in {len(cases)} cases)"),
        ],
    )


def share(part: int, whole: int) -> str:
    return f"{part}/{whole} ({part / whole:.0%})" if whole else "-"


def report(model: str, tallies: dict[str, Tally]) -> None:
    rows = []
    for language, t in tallies.items():
        dropped = ", ".join(f"{n} {reason}" for reason, n in sorted(t.dropped.items())) or "0"
        rows += [
            Row(f"{language} precision", share(t.right, t.written)),
            Row(f"{language} recall", share(t.recalled, t.expected)),
            Row(f"{language} small talk remembered", str(t.small_talk)),
            Row(
                f"{language} repeats remembered",
                f"{t.repeats} ({t.repeats_unchecked} without the check, which left out "
                f"{t.left_out})",
            ),
            Row(
                f"{language} recall without the check",
                share(t.recalled_unchecked, t.expected),
            ),
            Row(
                f"{language} dropped answers",
                f"{dropped} of {t.answers}; facts refused {t.refused}",
            ),
            Row(
                f"{language} seconds per extraction",
                f"{t.wall_s / t.answers:.1f} wall, {t.cpu_s / t.answers:.1f} CPU",
            ),
        ]
    print_table(f"memory formation, {model}", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="a LOCAL_MODELS name or a GGUF path")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--answers", type=Path, help="write each model's answers here")
    parser.add_argument(
        "--operations", action="store_true", help="measure revise and forget instead"
    )
    args = parser.parse_args()
    print(f"machine: {machine_load()} (before)")
    for model in args.model or MODELS:
        if args.operations:
            operations(model, args.threads)
        else:
            report(model, measure(model, args.threads, args.answers))
    print(f"\nmachine: {machine_load()} (after)")


if __name__ == "__main__":
    main()
