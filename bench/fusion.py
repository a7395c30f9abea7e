"""The fusion's weights, its BM25 scale and the second hop, measured on LoCoMo's dev split and on
our own data set, through alma's own search.

Run from the repository root: `python bench/fusion.py [--data PATH]`. Puts each of LoCoMo's two
development conversations into an instance in process (every turn a memory snippet with its
speaker and occurred_at, as bench/locomo.py does through HTTP; the data is read where it lies,
never copied) and tests/data/recall's six conversations as imported messages, then asks every
question under each ranking: LoCoMo's recall@10 by category (multi-hop, temporal, open-domain,
single-hop, adversarial), its R@10 and R@50 overall, our set's hit@5 and hit@10 (the share of
questions with an answer message in the first k), all of it and its Spanish part; whether the
score tells "never said" from said (never: the highest top score of questions about things never
said, `NEVER_SAID`; said: the median top score of our set's questions; above: the share of those
above "never", which a min_score between them would keep); and the p95 of LoCoMo's searches.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path
from uuid import UUID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alma.api.services import Services, build_services
from alma.domain import Actor
from alma.embeddings import PACKAGED_MODEL
from alma.projections import MemoryIndex
from alma.projections.ranking import Weights
from alma.settings import Settings
from bench.locomo import CATEGORIES, DATA, load
from bench.report import log, machine_load, percentiles_ms
from tests.recall import Question
from tests.recall import load as load_recall

DEFAULT = Weights()
# The ranking before issue 15's last round: no content, one neighbour a side blended at half,
# no turns brought in beside the first hits.
BEFORE = replace(
    DEFAULT,
    content=0.0,
    neighbours=0.5,
    neighbours_each_side=1,
    neighbour_candidates=0,
    named_speaker=0.0,
)
RANKINGS = {
    "alma's default (0.72/0.25/0.03, content 0.15, 2 a side at 0.7, named 0.05)": DEFAULT,
    "before: no content, 1 neighbour a side at 0.5, none brought in": BEFORE,
    "default without the named speaker past the first 10": replace(DEFAULT, named_speaker=0.0),
    "default without content": replace(DEFAULT, content=0.0),
    "default, no turns brought in beside the first hits": replace(DEFAULT, neighbour_candidates=0),
    "default, one neighbour a side": replace(DEFAULT, neighbours_each_side=1),
    "default, neighbours at 0.5": replace(DEFAULT, neighbours=0.5),
    "default, neighbours at 1.0": replace(DEFAULT, neighbours=1.0),
    "default, content 0.1": replace(DEFAULT, content=0.1),
    "default, content 0.2": replace(DEFAULT, content=0.2),
    "0.62 dense / 0.35 BM25 (best)": replace(DEFAULT, dense=0.62, lexical=0.35),
    "default + second hop 0.1": replace(DEFAULT, expansion=0.1),
    "default + second hop 0.2": replace(DEFAULT, expansion=0.2),
}
# Questions about things no conversation of tests/data/recall mentions (none holds their key
# words), as a user would ask what the character cannot remember.
NEVER_SAID = [
    ("es", "¿Cuándo empecé las clases de piano?"),
    ("es", "¿Qué apertura de ajedrez juego yo?"),
    ("es", "¿De qué color es mi guitarra?"),
    ("es", "¿Con quién juego al golf los domingos?"),
    ("en", "Which chess opening do I play?"),
    ("en", "When did I start violin lessons?"),
    ("en", "What colour is my guitar?"),
    ("en", "Who do I play tennis with on Sundays?"),
]
SCORES = ("never", "said")  # columns of scores (0 to 1); the others are percentages and ms
LoCoMo = list[tuple[UUID, str, int, frozenset[str]]]  # instance, question, category, evidence


def locomo_instances(services: Services, data: Path) -> LoCoMo:
    """Every dev conversation's turns as memory snippets; its questions with their evidence as
    the ids of those snippets."""
    app, actor, asked = services.app, Actor("bench", "bench", "fusion"), []
    for talk in load(data):
        character = app.create_character(
            "bench", {"name": talk.speakers[1], "description": talk.sample_id}, actor
        )
        instance = app.create_instance("bench", character.id, talk.sample_id, "", actor)
        ids = {
            turn.dia_id: str(
                app.add_memory(
                    "bench",
                    instance.id,
                    turn.text,
                    actor,
                    occurred_at=turn.at,
                    speaker=turn.speaker,
                ).id
            )
            for session in talk.sessions
            for turn in session
        }
        asked += [
            (instance.id, q.text, q.category, frozenset(ids[e] for e in q.evidence))
            for q in talk.questions
        ]
    return asked


def measure(index: MemoryIndex, locomo: LoCoMo, own: list[Question]) -> list[float]:
    """R@10 by category, R@10 and R@50 overall; own hit@5 and @10, all and Spanish; the p95 of
    LoCoMo's searches in ms (instances of ~400 and ~700 turns: a relative cost, not the target's
    figure, which bench/memory.py takes at 100,000)."""
    by_category: dict[int, list[tuple[float, float]]] = defaultdict(list)
    took = []
    for instance_id, text, category, evidence in locomo:
        start = time.perf_counter()
        hits = index.search(instance_id, text, k=50)
        took.append(time.perf_counter() - start)
        found = [hit.doc.doc_id for hit in hits]
        share = [len(evidence & set(found[:k])) / len(evidence) for k in (10, 50)]
        by_category[category].append((share[0], share[1]))
    every = [pair for pairs in by_category.values() for pair in pairs]
    figures = [100 * statistics.mean(p[0] for p in by_category[c]) for c in CATEGORIES]
    figures += [
        100 * statistics.mean(p[0] for p in every),
        100 * statistics.mean(p[1] for p in every),
    ]
    answered, tops = [], []
    for question in own:
        results = index.search(question.instance_id, question.text, k=10)
        found = [hit.doc.doc_id for hit in results]
        tops.append(results[0].score)
        answered.append(
            (
                question.language,
                bool(question.answers & set(found[:5])),
                bool(question.answers & set(found)),
            )
        )
    for language in (None, "es"):
        chosen = [a for a in answered if language is None or a[0] == language]
        figures += [
            100 * statistics.mean(a[1] for a in chosen),
            100 * statistics.mean(a[2] for a in chosen),
        ]
    never = max(never_said(index, own))
    above = 100 * statistics.mean(top > never for top in tops)
    return [*figures, never, statistics.median(tops), above, percentiles_ms(took)[1]]


def never_said(index: MemoryIndex, own: list[Question]) -> list[float]:
    """The top score of each question about something never said in our set's conversations,
    asked in each conversation of its language (a mixed one takes both)."""
    instances = {(q.instance_id, q.language) for q in own}
    return [
        index.search(instance_id, text, k=1)[0].score
        for instance_id, language in instances
        for asked_in, text in NEVER_SAID
        if language in (asked_in, "mixed")
    ]


def own_weights(weights: Weights) -> str:
    """How a model's weights (`weights_for`) differ from the default."""
    changed = [f"{k}={v}" for k, v in asdict(weights).items() if v != getattr(DEFAULT, k)]
    return "default with " + ", ".join(changed) if changed else "the default"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="a LoCoMo JSON file")
    parser.add_argument("--model", default=PACKAGED_MODEL, help="ALMA_EMBEDDING_MODEL")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="alma-bench-fusion-") as folder:
        services = build_services(
            Settings(data_dir=Path(folder), embedding_model=args.model, _env_file=None)  # type: ignore[call-arg]
        )
        try:
            log("loading LoCoMo's dev split and tests/data/recall")
            locomo = locomo_instances(services, args.data)
            own = load_recall(services)
            index = services.memory_index
            columns = [f"c{c}" for c in CATEGORIES] + [
                "R@10",
                "R@50",
                "own@5",
                "own@10",
                "es@5",
                "es@10",
                "never",
                "said",
                "above",
                "p95 ms",
            ]
            print(
                f"LoCoMo dev: {len(locomo)} questions (R@k %, c1-c5: R@10 by category); "
                f"own set: {len(own)} questions (hit@k %); embedding model {args.model}, "
                f"its weights: {own_weights(index.weights)}"
            )
            print(f"{'ranking':<68}" + "".join(f"{c:>7}" for c in columns))
            for name, weights in RANKINGS.items():
                index.weights = weights
                figures = measure(index, locomo, own)
                cells = [
                    f"{f:>7.2f}" if c in SCORES else f"{f:>7.1f}"
                    for c, f in zip(columns, figures, strict=True)
                ]
                print(f"{name:<68}" + "".join(cells), flush=True)
        finally:
            services.close()
    print(f"machine: {machine_load()}")


if __name__ == "__main__":
    main()
