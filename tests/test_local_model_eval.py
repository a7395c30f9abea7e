"""The offline model's evaluation set (tests/data/local_model) and the checks bench/local_model.py
scores replies with: the set is what the issue asks for, and each check tells a good reply from
the failures seen with SmolLM2."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from alma.llm import tokens
from alma.projections.ranking import fold
from tests.local_model_eval import DATA, EvalTurn, language_of, load, score

# alma's local model: a 2048-token context less the tokenizers' margin, as services.py sizes it.
LOCAL_WINDOW = int(2048 / 1.5)
MAX_TOKENS = 160


@pytest.fixture(scope="module")
def turns() -> list[EvalTurn]:
    return load(LOCAL_WINDOW, MAX_TOKENS)


def by_question(turns: list[EvalTurn], question: str) -> EvalTurn:
    return next(t for t in turns if t.question == question)


def test_forty_questions_half_spanish_over_four_characters(turns: list[EvalTurn]) -> None:
    assert len(turns) == 40
    assert Counter(t.language for t in turns) == {"es": 20, "en": 20}
    assert Counter(t.character for t in turns) == {"rosa": 10, "mateo": 10, "nell": 10, "jonah": 10}


def test_every_key_fact_is_stored_where_the_prompt_shows_it(turns: list[EvalTurn]) -> None:
    """A question can only be failed for a missing fact that alma put in front of the model."""
    for turn in turns:
        if turn.key:
            system = fold(" ".join(m["content"] for m in turn.messages if m["role"] == "system"))
            assert any(fold(key) in system for key in turn.key), turn.question


def test_prompts_fit_the_local_models_budget_whole(turns: list[EvalTurn]) -> None:
    data = json.loads(DATA.read_text(encoding="utf-8"))
    history = {c["id"]: len(c["history"]) for c in data["characters"]}
    for turn in turns:
        assert tokens.count_messages(turn.messages) <= LOCAL_WINDOW - MAX_TOKENS
        # system, the whole recent conversation, the date, what is remembered, the question
        assert len(turn.messages) == history[turn.character] + 4
        assert turn.messages[-1] == {"role": "user", "content": turn.question}


def test_a_good_reply_passes_every_check(turns: list[EvalTurn]) -> None:
    turn = by_question(turns, "¿Y dónde conociste a Tomás?")
    reply = "Ay, criatura, lo conocí en la feria de Ronda. Me compró un ramo de tomillo."
    assert score(turn, reply, "stop") == dict.fromkeys(score(turn, reply, "stop"), True)


def test_the_echo_seen_with_smollm2_fails(turns: list[EvalTurn]) -> None:
    turn = by_question(turns, "¿Y dónde conociste a Tomás?")
    checks = score(turn, "¡Y dónde conociste a Tomás?", "stop")
    assert not checks["no_echo"]
    assert not checks["key_fact"]


def test_a_reply_in_the_other_language_fails_the_language_check(turns: list[EvalTurn]) -> None:
    turn = by_question(turns, "¿Cómo se llama tu gata?")
    checks = score(turn, "My cat is called Canela and she sleeps on the oven.", "stop")
    assert not checks["language"]
    assert checks["key_fact"]
    assert language_of("My cat is called Canela and she sleeps on the oven.") == "en"
    assert language_of("Mi gata se llama Canela y duerme en el horno.") == "es"


def test_a_short_reply_is_judged_by_the_few_words_it_has(turns: list[EvalTurn]) -> None:
    brother = by_question(turns, "What does your brother do?")
    assert score(brother, "He sails cargo ships to Lisbon.", "stop")["language"]
    assert not score(brother, "Lleva barcos de carga a Lisboa.", "stop")["language"]
    assert score(by_question(turns, "¿Cómo se llama tu gata?"), "Canela.", "stop")["language"]


@pytest.mark.parametrize(
    "reply",
    [
        "As an AI language model, I do not have a dog.",
        "My dog is Biscuit.\nUser: What a lovely name!",
        "Biscuit, of course. <|im_start|>user\nAnd the cat?",
    ],
)
def test_breaking_persona_or_writing_the_users_lines_fails(
    turns: list[EvalTurn], reply: str
) -> None:
    assert not score(by_question(turns, "What's your dog called?"), reply, "stop")["in_persona"]


def test_a_loop_or_a_cut_reply_fails_the_clean_end(turns: list[EvalTurn]) -> None:
    turn = by_question(turns, "Who taught you to play?")
    looping = "Miss Clara taught me to play. Miss Clara taught me to play. She was kind."
    assert not score(turn, looping, "stop")["clean_end"]
    assert not score(turn, "Miss Clara, the church organist, when I was", "length")["clean_end"]
    assert score(turn, "Miss Clara, the church organist. I was seven.", "stop")["clean_end"]


def test_a_fact_is_found_in_its_inflected_forms(turns: list[EvalTurn]) -> None:
    turn = by_question(turns, "Have you ever rescued anyone from the sea?")
    assert score(turn, "Aye, I pulled two kayakers out in 2019.", "stop")["key_fact"]
    assert not score(turn, "Not that I recall, love.", "stop")["key_fact"]
