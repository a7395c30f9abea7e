"""Hybrid retrieval must find answers that dense search alone misses, on a data set of long
multi-session conversations in Spanish and English (tests/data/recall)."""

from __future__ import annotations

import pytest

from alma.api.services import Services
from alma.projections.ranking import Weights
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
