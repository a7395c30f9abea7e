"""Retrieval quality on the data set in tests/data/recall: load it into alma, ask its questions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from uuid import UUID

from alma.api.services import Services
from alma.domain import Actor, NewMessage
from alma.projections import MemoryIndex
from alma.projections.ranking import Weights

DATA = Path(__file__).parent / "data" / "recall" / "conversations.json"
DENSE_ONLY = Weights(
    dense=1.0, lexical=0.0, recency=0.0, importance=0.0, content=0.0, neighbours=0.0
)


@dataclass(frozen=True)
class Question:
    instance_id: UUID
    text: str
    answers: frozenset[str]
    asked_at: datetime
    language: str


def load(services: Services) -> list[Question]:
    """Imports every conversation as an instance's messages and indexes them."""
    actor = Actor("eval", "eval", "recall")
    app, questions = services.app, []
    for conversation in json.loads(DATA.read_text())["conversations"]:
        character = app.create_character("eval", {**conversation["character"]}, actor)
        instance = app.create_instance(
            "eval", character.id, conversation["instance"]["name"], "", actor
        )
        messages = [
            NewMessage(m["role"], m["content"], datetime.fromisoformat(m["timestamp"]))
            for m in conversation["messages"]
        ]
        ids = app.import_messages("eval", instance.id, messages, actor)
        asked_at = messages[-1].sent_at + timedelta(days=1)  # type: ignore[operator]
        questions += [
            Question(
                instance.id,
                q["q"],
                frozenset(str(ids[turn]) for turn in q["answer_turns"]),
                asked_at,
                conversation["language"],
            )
            for q in conversation["questions"]
        ]
    services.memory.catch_up()
    return questions


def recall_at(index: MemoryIndex, questions: list[Question], k: int, weights: Weights) -> float:
    """The share of questions with at least one answer message among the first k results."""
    index.weights = weights
    found = 0
    for question in questions:
        hits = index.search(question.instance_id, question.text, k=k, now=question.asked_at)
        found += any(hit.doc.doc_id in question.answers for hit in hits)
    return found / len(questions)
