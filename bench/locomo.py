"""Recall on LoCoMo's very long conversations, through the HTTP API of a real `alma serve`.

Run from the repository root: `python bench/locomo.py [--data PATH]`. The data is LoCoMo's
development split (two of its ten conversations, CC BY-NC 4.0), read where it lies, by default
`../shared/data/locomo-dev/locomo-dev.json` beside the checkout: it is never copied into this
repository. The other eight conversations are held out.

Each conversation goes into alma twice, each time into an instance of its own, the two ways a
conversation reaches alma:
- as memory snippets: every turn `POST /v1/instances/{id}/memories` with its `speaker` and, as
  `occurred_at`, its session's time (plus a second per turn, to keep their order);
- as a conversation: every session `POST /v1/instances/{id}/messages`, the first speaker as the
  user and the second as the character, each message with its speaker's `name` and its
  `timestamp`.
A turn that shares a photo carries the photo's caption in its text ("[shares a photo of ...]"),
which is how the conversation shows it to its readers.

Once `/health` shows the index caught up, every question of categories 1-5 is asked
(`GET .../memories/search?q=...&k=50`) and each hit is led back to the turn it was made from. A
question's recall@k is the share of its evidence turns among the first k hits (evidence ids
missing from the conversation are skipped, and questions left with none); the figures are the
mean over questions, per category and overall, for k = 1, 5, 10, 25, 50. Also printed: the
ingest rate through HTTP and the search latency seen by the client (p50/p95).

Targets (issue 15): R@10 >= 75 and R@50 >= 90, both ways. For reference, on all ten
conversations: the DRAGON dialogue retriever of the LoCoMo paper R@10 66.2 / R@50 82.7.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from alma.embeddings import PACKAGED_MODEL, Backend
from bench.report import Row, checked, log, machine_load, percentiles_ms, print_table
from bench.serve import ROOT, alma_serve, create_key

DATA = ROOT.parent / "shared" / "data" / "locomo-dev" / "locomo-dev.json"
TENANT = "locomo"
KS = (1, 5, 10, 25, 50)
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
TARGETS = {10: 75.0, 50: 90.0}
DRAGON = "DRAGON (LoCoMo paper, all 10 conversations): R@10 66.2, R@50 82.7"


@dataclass(frozen=True)
class Turn:
    dia_id: str
    speaker: str
    text: str
    at: datetime


@dataclass(frozen=True)
class Question:
    text: str
    category: int
    evidence: frozenset[str]


@dataclass(frozen=True)
class Conversation:
    sample_id: str
    speakers: tuple[str, str]
    sessions: list[list[Turn]]
    questions: list[Question]


def session_time(text: str) -> datetime:
    """ "1:56 pm on 8 May, 2023": LoCoMo's session times carry no zone; read as UTC."""
    return datetime.strptime(text, "%I:%M %p on %d %B, %Y").replace(tzinfo=UTC)


def turn_text(turn: dict[str, Any]) -> str:
    caption = turn.get("blip_caption")
    return f"{turn['text']} [shares {caption}]" if caption else str(turn["text"])


def conversation(sample: dict[str, Any]) -> Conversation:
    talk = sample["conversation"]
    sessions = []
    n = 1
    while f"session_{n}" in talk:
        start = session_time(talk[f"session_{n}_date_time"])
        sessions.append(
            [
                Turn(t["dia_id"], t["speaker"], turn_text(t), start + timedelta(seconds=i))
                for i, t in enumerate(talk[f"session_{n}"])
            ]
        )
        n += 1
    known = {turn.dia_id for session in sessions for turn in session}
    questions = []
    for qa in sample["qa"]:
        evidence = frozenset(e for e in qa.get("evidence", []) if e in known)
        if qa["category"] in CATEGORIES and evidence:
            questions.append(Question(qa["question"], qa["category"], evidence))
    return Conversation(
        sample["sample_id"], (talk["speaker_a"], talk["speaker_b"]), sessions, questions
    )


def load(path: Path) -> list[Conversation]:
    return [conversation(sample) for sample in json.loads(path.read_text())]


# The two ways in: each returns what every id the search may answer stands for (a turn)


def as_memories(http: httpx.Client, instance_id: str, talk: Conversation) -> dict[str, str]:
    turns = {}
    for session in talk.sessions:
        for turn in session:
            response = http.post(
                f"/v1/instances/{instance_id}/memories",
                json={"text": turn.text, "speaker": turn.speaker, "occurred_at": iso(turn.at)},
            )
            response.raise_for_status()
            turns[str(response.json()["id"])] = turn.dia_id
    return turns


def as_messages(http: httpx.Client, instance_id: str, talk: Conversation) -> dict[str, str]:
    turns = {}
    user = talk.speakers[0]
    for session in talk.sessions:
        messages = [
            {
                "role": "user" if turn.speaker == user else "assistant",
                "content": turn.text,
                "name": turn.speaker,
                "timestamp": iso(turn.at),
            }
            for turn in session
        ]
        response = http.post(f"/v1/instances/{instance_id}/messages", json={"messages": messages})
        response.raise_for_status()
        for message_id, turn in zip(response.json()["ids"], session, strict=True):
            turns[str(message_id)] = turn.dia_id
    return turns


Ingest = Callable[[httpx.Client, str, Conversation], dict[str, str]]
WAYS: dict[str, Ingest] = {
    "memory snippets (POST /memories with speaker and occurred_at)": as_memories,
    "a conversation (POST /messages with name and timestamp)": as_messages,
}


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def new_instance(http: httpx.Client, talk: Conversation, way: int) -> str:
    character = http.post(
        "/v1/characters",
        json={
            "name": f"{talk.speakers[1]} ({talk.sample_id}, way {way})",
            "description": f"{talk.speakers[1]}, who talks with {talk.speakers[0]} for months.",
        },
    )
    character.raise_for_status()
    instance = http.post(  # names are unique in a tenant; every message names its speaker
        f"/v1/characters/{character.json()['id']}/instances",
        json={"name": f"{talk.speakers[1]} {talk.sample_id}-{way}"},
    )
    instance.raise_for_status()
    return str(instance.json()["id"])


def caught_up(http: httpx.Client, timeout: float = 600.0) -> None:
    """Waits until the server's projections have processed every event (`/health`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http.get("/health").json().get("projection_lag_events") == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the projections did not catch up within {timeout} s")


@dataclass
class Scores:
    """Recall@k of every question, by category; search latencies; ingest figures."""

    recall: dict[int, list[list[float]]]
    searches: list[float]
    turns: int = 0
    ingest_s: float = 0.0


def ask(
    http: httpx.Client, instance_id: str, talk: Conversation, turns: dict[str, str], scores: Scores
) -> None:
    for question in talk.questions:
        start = time.perf_counter()
        response = http.get(
            f"/v1/instances/{instance_id}/memories/search",
            params={"q": question.text, "k": max(KS)},
        )
        scores.searches.append(time.perf_counter() - start)
        response.raise_for_status()
        found = [turns.get(hit["id"]) for hit in response.json()["results"]]
        scores.recall[question.category].append(
            [len(question.evidence & set(found[:k])) / len(question.evidence) for k in KS]
        )


def run_way(http: httpx.Client, way: int, ingest: Ingest, talks: Sequence[Conversation]) -> Scores:
    scores = Scores(defaultdict(list), [])
    for talk in talks:
        instance_id = new_instance(http, talk, way)
        start = time.perf_counter()
        turns = ingest(http, instance_id, talk)
        caught_up(http)
        scores.ingest_s += time.perf_counter() - start
        scores.turns += len(turns)
        log(f"{talk.sample_id}: {len(turns):,} turns in; asking {len(talk.questions)} questions")
        ask(http, instance_id, talk, turns, scores)
    return scores


def percent(values: Sequence[float]) -> str:
    return f"{100 * statistics.mean(values):5.1f}"


def table(title: str, scores: Scores) -> list[Row]:
    header = "  ".join(f"R@{k:<3}" for k in KS)
    rows = [Row(f"{title}", f"questions  {header}")]
    every: list[list[float]] = []
    for category, name in CATEGORIES.items():
        values = scores.recall.get(category, [])
        every += values
        if values:
            cells = "  ".join(percent([v[i] for v in values]) for i in range(len(KS)))
            rows.append(Row(f"  {category} {name}", f"{len(values):>9}  {cells}"))
    overall = [percent([v[i] for v in every]) for i in range(len(KS))]
    rows.append(Row("  all", f"{len(every):>9}  {'  '.join(overall)}"))
    for k, target in TARGETS.items():
        value = 100 * statistics.mean(v[KS.index(k)] for v in every)
        rows.append(Row(f"  R@{k}", f"{value:.1f}", f">= {target:.0f}", checked(value >= target)))
    p50, p95, _ = percentiles_ms(scores.searches)
    rate = scores.turns / scores.ingest_s
    rows.append(Row("  ingest through HTTP, index caught up", f"{rate:,.1f} turns/s"))
    rows.append(Row("  search through HTTP (k=50)", f"p50 {p50:.2f} ms, p95 {p95:.2f} ms"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="a LoCoMo JSON file")
    parser.add_argument(
        "--model", default=PACKAGED_MODEL, help="ALMA_EMBEDDING_MODEL of the server (its weights)"
    )
    parser.add_argument(
        "--backend",
        choices=get_args(Backend),
        help="ALMA_EMBEDDING_BACKEND of the server; unset = alma's default",
    )
    args = parser.parse_args()
    # Recall over what was imported: the local model's memories would be another bench.
    server = {"ALMA_EMBEDDING_MODEL": args.model, "ALMA_MEMORY_FORMATION": "false"}
    if args.backend is not None:
        server["ALMA_EMBEDDING_BACKEND"] = args.backend
    talks = load(args.data)
    print(
        f"LoCoMo recall through HTTP: {len(talks)} conversations "
        f"({', '.join(t.sample_id for t in talks)}), "
        f"{sum(len(s) for t in talks for s in t.sessions):,} turns, "
        f"{sum(len(t.questions) for t in talks)} questions; embedding model {args.model} "
        f"(backend {args.backend or 'default'}); "
        f"{DRAGON}"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="alma-bench-locomo-") as tmp:
        folder = Path(tmp)
        key = create_key(folder, TENANT)
        with (
            alma_serve(folder, server) as (_, base_url),
            httpx.Client(
                base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
            ) as http,
        ):
            for way, (title, ingest) in enumerate(WAYS.items(), start=1):
                log(f"way {way}: {title}")
                rows += table(f"as {title}", run_way(http, way, ingest, talks))
    rows.append(Row("machine", machine_load()))
    print_table("Recall@k (%) by question category", rows)


if __name__ == "__main__":
    main()
