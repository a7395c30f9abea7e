"""Build conversations.json, the retrieval-quality data set, from the hand-written sources.

    python tests/data/recall/build.py           # rewrite conversations.json
    python tests/data/recall/build.py --check   # fail if conversations.json is out of date

The sources live in src/: pools.txt holds the shared small talk (filler, session openers and
closers per language) and one file per conversation holds its character, its session dates, its
facts (the exchanges a question will need), conversation-specific distractor exchanges and its
questions. This script only arranges them: it samples filler for each session, places facts and
distractors among it, stamps times, and turns each question's fact references into message
indices. The output is deterministic (fixed seed, standard library only).

Source format, one conversation file:

    key: value                      # id, language, character, description, instance,
                                    # sessions (start times, UTC), filler (pool=count ...), pool
    == fact NAME SESSION            # one exchange: U:/A: lines alternating, starting with U:
    == extra [SESSION | LO-HI]      # U:/A: pairs, each placed in a random session of the range
    ?? KIND | question | NAME.i ... | short answer

NAME.i is the i-th message of fact NAME (0 = its first user line).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
OUT = HERE / "conversations.json"
SEED = 20250917
MIN_TURNS, MAX_TURNS = 150, 300
MIN_DISTINCT_FILLER_LINES = 80

DESCRIPTION = (
    "Retrieval-quality data set for alma: six long multi-session role-play conversations "
    "(3 Spanish, 2 English, 1 Spanish/English code-switching) with facts buried among small "
    "talk that shares their vocabulary, and questions a user would ask later. answer_turns are "
    "indices into the conversation's messages; a retriever ranks all messages of the "
    "conversation for each question. Built by build.py from src/; see README.md."
)

Pair = tuple[str, str]


@dataclass
class Fact:
    name: str
    session: int
    turns: list[str]


@dataclass
class Extra:
    sessions: tuple[int, int] | None
    pair: Pair


@dataclass
class Question:
    kind: str
    text: str
    refs: list[tuple[str, int]]
    answer: str


@dataclass
class ConversationSource:
    meta: dict[str, str] = field(default_factory=dict)
    facts: list[Fact] = field(default_factory=list)
    extras: list[Extra] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)


def _content_lines(path: Path) -> list[tuple[int, str]]:
    out = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append((number, line))
    return out


def _turns_to_pairs(turns: list[str], where: str) -> list[Pair]:
    if len(turns) % 2:
        raise ValueError(f"{where}: a user line without its assistant reply")
    return [(turns[i], turns[i + 1]) for i in range(0, len(turns), 2)]


def _append_turn(turns: list[str], line: str, where: str) -> None:
    expected = "U: " if len(turns) % 2 == 0 else "A: "
    if not line.startswith(expected):
        raise ValueError(f"{where}: expected a line starting with {expected.strip()!r}")
    turns.append(line[3:].strip())


def parse_pools(path: Path) -> dict[tuple[str, str], list[Pair]]:
    pools: dict[tuple[str, str], list[str]] = {}
    current: list[str] | None = None
    for number, line in _content_lines(path):
        where = f"{path.name}:{number}"
        if line.startswith("== "):
            kind, lang = line[3:].split()
            current = pools.setdefault((kind, lang), [])
        elif current is None:
            raise ValueError(f"{where}: text before the first section")
        else:
            _append_turn(current, line, where)
    return {key: _turns_to_pairs(turns, f"{path.name} [{key}]") for key, turns in pools.items()}


def _session_range(spec: list[str], where: str) -> tuple[int, int] | None:
    if not spec:
        return None
    lo, _, hi = spec[0].partition("-")
    low, high = int(lo), int(hi or lo)
    if low > high:
        raise ValueError(f"{where}: empty session range")
    return (low, high)


def parse_conversation(path: Path) -> ConversationSource:
    src = ConversationSource()
    block: tuple[str, list[str]] | None = None
    block_turns: list[str] = []
    block_where = ""

    def close_block() -> None:
        if block is None:
            return
        kind, args = block
        if kind == "fact":
            _turns_to_pairs(block_turns, block_where)
            src.facts.append(Fact(args[0], int(args[1]), list(block_turns)))
        else:
            sessions = _session_range(args, block_where)
            for pair in _turns_to_pairs(block_turns, block_where):
                src.extras.append(Extra(sessions, pair))

    for number, line in _content_lines(path):
        where = f"{path.name}:{number}"
        if line.startswith("== "):
            close_block()
            kind, *args = line[3:].split()
            if kind not in ("fact", "extra"):
                raise ValueError(f"{where}: unknown block {kind!r}")
            block, block_turns, block_where = (kind, args), [], where
        elif line.startswith("?? "):
            close_block()
            block = None
            kind, text, refs, answer = (part.strip() for part in line[3:].split("|"))
            parsed_refs = []
            for ref in refs.split():
                name, _, index = ref.partition(".")
                parsed_refs.append((name, int(index)))
            src.questions.append(Question(kind, text, parsed_refs, answer))
        elif block is not None:
            _append_turn(block_turns, line, where)
        else:
            key, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"{where}: expected 'key: value'")
            src.meta[key.strip()] = value.strip()
    close_block()
    return src


def _timestamps(rng: random.Random, start: str, count: int) -> list[str]:
    t = datetime.fromisoformat(start).replace(tzinfo=UTC)
    stamps = []
    for i in range(count):
        if i:
            # Users take longer to write than the character takes to answer.
            t += timedelta(seconds=rng.randint(10, 70) if i % 2 else rng.randint(30, 260))
        stamps.append(t.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return stamps


def build_conversation(
    src: ConversationSource, pools: dict[tuple[str, str], list[Pair]]
) -> dict[str, object]:
    meta = src.meta
    conv_id = meta["id"]
    rng = random.Random(f"{SEED}:{conv_id}")
    starts = meta["sessions"].split()
    n_sessions = len(starts)

    filler: list[Pair] = []
    for spec in meta["filler"].split():
        lang, _, count = spec.partition("=")
        pool = list(pools[("filler", lang)])
        rng.shuffle(pool)
        if int(count) > len(pool):
            raise ValueError(f"{conv_id}: asks for {count} {lang} filler, pool has {len(pool)}")
        filler.extend(pool[: int(count)])
    rng.shuffle(filler)

    pool_lang = meta["pool"]
    openers = rng.sample(pools[("opener", pool_lang)], n_sessions)
    closers = rng.sample(pools[("closer", pool_lang)], n_sessions)

    # Uneven sessions: each filler exchange goes to a session drawn with random weights.
    weights = [rng.uniform(0.6, 1.5) for _ in range(n_sessions)]
    per_session_filler: list[list[Pair]] = [[] for _ in range(n_sessions)]
    for i, pair in enumerate(filler):
        session = i if i < n_sessions else rng.choices(range(n_sessions), weights)[0]
        per_session_filler[session].append(pair)

    per_session_extras: list[list[Pair]] = [[] for _ in range(n_sessions)]
    for extra in src.extras:
        lo, hi = extra.sessions if extra.sessions else (0, n_sessions - 1)
        per_session_extras[rng.randint(lo, hi)].append(extra.pair)

    messages: list[dict[str, str]] = []
    fact_start: dict[str, int] = {}
    for s in range(n_sessions):
        others: list[list[str]] = [list(p) for p in per_session_filler[s]]
        others += [list(p) for p in per_session_extras[s]]
        rng.shuffle(others)
        facts = [f for f in src.facts if f.session == s]
        # Facts keep their source order; none is the first or last exchange of a session.
        slots = sorted(rng.sample(range(1, len(others) + len(facts) + 1), len(facts)))
        body: list[tuple[str | None, list[str]]] = [(None, turns) for turns in others]
        for slot, fact in zip(slots, facts, strict=True):
            body.insert(slot - 1, (fact.name, fact.turns))
        blocks = [(None, list(openers[s])), *body, (None, list(closers[s]))]

        turns_in_session = sum(len(turns) for _, turns in blocks)
        stamps = iter(_timestamps(rng, starts[s], turns_in_session))
        for name, turns in blocks:
            if name is not None:
                fact_start[name] = len(messages)
            for i, text in enumerate(turns):
                role = "user" if i % 2 == 0 else "assistant"
                messages.append({"role": role, "content": text, "timestamp": next(stamps)})

    questions = []
    facts_by_name = {f.name: f for f in src.facts}
    for q in src.questions:
        turns = []
        for name, index in q.refs:
            if name not in facts_by_name or index >= len(facts_by_name[name].turns):
                raise ValueError(f"{conv_id}: question {q.text!r} refers to {name}.{index}")
            turns.append(fact_start[name] + index)
        questions.append(
            {"q": q.text, "answer_turns": sorted(turns), "kind": q.kind, "answer": q.answer}
        )

    return {
        "id": conv_id,
        "language": meta["language"],
        "character": {"name": meta["character"], "description": meta["description"]},
        "instance": {"name": meta["instance"]},
        "messages": messages,
        "questions": questions,
    }


def validate(data: dict[str, object], pools: dict[tuple[str, str], list[Pair]]) -> None:
    for lang in ("es", "en"):
        lines = {line for pair in pools[("filler", lang)] for line in pair}
        if len(lines) < MIN_DISTINCT_FILLER_LINES:
            raise ValueError(f"only {len(lines)} distinct {lang} filler lines")
    conversations = data["conversations"]
    assert isinstance(conversations, list)
    for conv in conversations:
        messages, questions = conv["messages"], conv["questions"]
        cid = conv["id"]
        if not MIN_TURNS <= len(messages) <= MAX_TURNS:
            raise ValueError(f"{cid}: {len(messages)} messages")
        for i, m in enumerate(messages):
            if m["role"] != ("user" if i % 2 == 0 else "assistant"):
                raise ValueError(f"{cid}: message {i} breaks the user/assistant alternation")
        stamps = [m["timestamp"] for m in messages]
        if stamps != sorted(stamps):
            raise ValueError(f"{cid}: timestamps go backwards")
        contents = [m["content"] for m in messages]
        duplicates = {c for c in contents if contents.count(c) > 1}
        if duplicates:
            raise ValueError(f"{cid}: repeated messages {sorted(duplicates)[:3]}")
        if not 8 <= len(questions) <= 12:
            raise ValueError(f"{cid}: {len(questions)} questions")
        for q in questions:
            if not q["answer_turns"] or max(q["answer_turns"]) >= len(messages):
                raise ValueError(f"{cid}: bad answer_turns for {q['q']!r}")


def build() -> dict[str, object]:
    pools = parse_pools(SRC / "pools.txt")
    sources = [parse_conversation(p) for p in sorted(SRC.glob("*.txt")) if p.name != "pools.txt"]
    order = {"es": 0, "en": 1, "mixed": 2}
    sources.sort(key=lambda s: (order[s.meta["language"]], s.meta["id"]))
    data: dict[str, object] = {
        "version": 1,
        "description": DESCRIPTION,
        "conversations": [build_conversation(s, pools) for s in sources],
    }
    validate(data, pools)
    return data


def render(data: dict[str, object]) -> str:
    return json.dumps(data, ensure_ascii=False, indent=1) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    text = render(build())
    if args.check:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT.name} is out of date: run build.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    data = json.loads(text)
    for conv in data["conversations"]:
        print(f"{conv['id']}: {len(conv['messages'])} messages, {len(conv['questions'])} questions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
