"""Hybrid retrieval must find answers that dense search alone misses, on a data set of long
multi-session conversations in Spanish and English (tests/data/recall)."""

from __future__ import annotations

from pathlib import Path

import pytest

from alma.api.services import Services, build_services
from alma.embeddings import MULTILINGUAL_MODEL, PACKAGED_MODEL
from alma.projections.ranking import Weights, weights_for
from alma.settings import Settings
from tests.recall import DENSE_ONLY, load, recall_at

# A random ranking of ~220 messages rarely puts an answer in the first five, and BM25 alone stays
# under this floor (bench/recall.py): a retriever worth shipping must do clearly better than both.
FLOOR_AT_5 = 0.50
# One question is 1/68 = 1.5 points; hybrid must win by at least two questions, not by noise.
MARGIN = 2 / 68


@pytest.mark.slow
def test_hybrid_retrieval_beats_dense_only_and_both_beat_the_floor(services: Services) -> None:
    questions = load(services)
    index = services.memory_index

    dense = recall_at(index, questions, 5, DENSE_ONLY)
    hybrid = recall_at(index, questions, 5, Weights())

    print(f"recall@5 over {len(questions)} questions: dense {dense:.3f}, hybrid {hybrid:.3f}")
    assert dense >= FLOOR_AT_5
    assert hybrid >= FLOOR_AT_5
    assert hybrid >= dense + MARGIN


@pytest.mark.slow
def test_the_multilingual_model_answers_more_spanish_questions(tmp_path: Path) -> None:
    """ALMA_EMBEDDING_MODEL=intfloat/multilingual-e5-small, with its weights (`weights_for`),
    answers more of the 33 Spanish questions at hit@5 than the default model with its own: 24
    against 21 (README; it was 25 against 18 before the default's ranking read what a turn says
    and brought in its neighbours). The margin asked is two questions, more than noise. The
    model, not the store, is under test: one SQLite store per model."""
    found = {}
    for n, model in enumerate((PACKAGED_MODEL, MULTILINGUAL_MODEL)):
        services = build_services(
            Settings(  # type: ignore[call-arg]
                data_dir=tmp_path / str(n),
                embedding_model=model,
                memory_formation=False,
                _env_file=None,
            )
        )
        try:
            spanish = [q for q in load(services) if q.language == "es"]
            found[model] = recall_at(services.memory_index, spanish, 5, weights_for(model))
        finally:
            services.close()
    print(f"Spanish recall@5 over {len(spanish)} questions: {found}")
    assert found[MULTILINGUAL_MODEL] >= found[PACKAGED_MODEL] + 2 / len(spanish)
