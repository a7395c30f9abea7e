"""Retrieval quality: recall@5 and recall@10 on tests/data/recall for each ranking.

Run from the repository root: `python bench/recall.py`. Loads the data set (6 conversations,
1,320 messages, 68 questions; Spanish, English and mixed) into alma on the embedded default and
asks every question with each ranking: dense only, BM25 only, and the hybrid fusion alma ships
(plus variants), printing the share of questions with an answer message in the first k results.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alma.api.services import build_services
from alma.projections.ranking import Weights
from alma.settings import Settings
from tests.recall import DENSE_ONLY, load, recall_at

RANKINGS = {
    "dense only": DENSE_ONLY,
    "BM25 only": Weights(
        dense=0.0, lexical=1.0, recency=0.0, importance=0.0, content=0.0, neighbours=0.0
    ),
    "hybrid default, without content": Weights(content=0.0),
    "hybrid, alma's default": Weights(),
    "hybrid default, no neighbours": Weights(neighbours=0.0),
    "hybrid default, neighbours 0.3": Weights(neighbours=0.3),
    "hybrid 0.5 dense / 0.5 BM25": Weights(dense=0.5, lexical=0.5, recency=0.0, importance=0.0),
    "hybrid default + recency 0.1": Weights(recency=0.1),
}


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        services = build_services(Settings(data_dir=Path(folder), _env_file=None))  # type: ignore[call-arg]
        try:
            questions = load(services)
            print(
                f"{len(questions)} questions over {len({q.instance_id for q in questions})} "
                "conversations"
            )
            print(f"{'ranking':<32}{'recall@5':>10}{'recall@10':>11}")
            for name, weights in RANKINGS.items():
                at5 = recall_at(services.memory_index, questions, 5, weights)
                at10 = recall_at(services.memory_index, questions, 10, weights)
                print(f"{name:<32}{at5:>10.3f}{at10:>11.3f}")
        finally:
            services.close()


if __name__ == "__main__":
    main()
