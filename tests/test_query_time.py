"""Time in a search's query: the period an English or Spanish expression names, and sources that
happened within it (or whose text names a time within it) ranking first, where the same words
without the time cannot tell them apart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from alma.projections.query_time import period_in
from tests.conftest import Api, make_character, make_instance, search

# A Friday afternoon in October.
ANCHOR = datetime(2023, 10, 20, 15, 0, tzinfo=UTC)

NAMED = [
    ("What did Caroline do in May 2023?", "2023-05-01", "2023-05-31"),
    ("¿Qué hizo Caroline en mayo de 2023?", "2023-05-01", "2023-05-31"),
    ("When did Melanie go camping in June?", "2023-06-01", "2023-06-30"),
    ("¿Qué cocinó en diciembre?", "2022-12-01", "2022-12-31"),  # the latest December
    ("What did she paint in 2022?", "2022-01-01", "2022-12-31"),
    ("What did we do last summer?", "2023-06-01", "2023-08-31"),
    ("¿Qué hicimos el verano pasado?", "2023-06-01", "2023-08-31"),
    ("What happened yesterday?", "2023-10-19", "2023-10-19"),
    ("¿Qué pasó ayer?", "2023-10-19", "2023-10-19"),
    ("Where did we go last week?", "2023-10-09", "2023-10-15"),  # Monday to Sunday
    ("¿Adónde fuimos la semana pasada?", "2023-10-09", "2023-10-15"),
    ("What did I read last month?", "2023-09-01", "2023-09-30"),
    ("¿Qué leí el mes pasado?", "2023-09-01", "2023-09-30"),
    ("What happened last year?", "2022-01-01", "2022-12-31"),
    ("What did I cook two weeks ago?", "2023-10-03", "2023-10-10"),  # about then: a week
    ("¿Qué cociné hace dos semanas?", "2023-10-03", "2023-10-10"),
    ("What did Melanie show on October 13, 2023?", "2023-10-13", "2023-10-13"),
    ("Fue el 8 de mayo", "2023-05-08", "2023-05-08"),
    ("It was 8 May 2023", "2023-05-08", "2023-05-08"),
    ("on 2023-05-08", "2023-05-08", "2023-05-08"),
]


@pytest.mark.parametrize(("text", "since", "until"), NAMED)
def test_a_time_expression_names_its_period(text: str, since: str, until: str) -> None:
    period = period_in(text, ANCHOR)
    assert period is not None and period.since is not None and period.until is not None
    assert (period.since.date().isoformat(), period.until.date().isoformat()) == (since, until)


@pytest.mark.parametrize(
    "text",
    [
        "May I ask you something?",
        "What did Caroline say about the support group?",
        "¿Qué cocinó Andrés para su familia?",
        "It was her 18th birthday",
    ],
)
def test_text_without_a_time_names_no_period(text: str) -> None:
    assert period_in(text, ANCHOR) is None


def test_a_time_that_cannot_be_is_no_period() -> None:
    february = period_in("el 31 de febrero de 2023", ANCHOR)  # no such day: the month it names
    assert february is not None and february.since == datetime(2023, 2, 1, tzinfo=UTC)
    assert period_in("on 2023-13-45", ANCHOR) is None
    first_day = datetime(1, 1, 1, 12, tzinfo=UTC)
    assert period_in("yesterday", first_day) is None  # before year 1
    assert period_in("last year", first_day) is None


def _told(api: Api, said: list[tuple[str, datetime]]) -> tuple[str, dict[str, str]]:
    """An instance holding `said`, each snippet when it happened, and a memory text written
    now; its id and the snippets' ids by text."""
    memory = "Rosa cocina para su familia y va al mercado con los suyos."
    instance = str(make_instance(api, make_character(api)["id"], memory=memory)["id"])
    ids = {}
    for text, when in said:
        response = api.client.post(
            f"/v1/instances/{instance}/memories",
            json={"text": text, "occurred_at": when.isoformat()},
            headers=api.acme,
        )
        assert response.status_code == 201, response.text
        ids[text] = response.json()["id"]
    return instance, ids


def _first(api: Api, instance: str, question: str) -> str:
    return str(search(api, instance, question, k=5)[0]["text"])


def test_a_question_that_names_a_time_finds_what_happened_then(api: Api) -> None:
    """The same words every time ("what did I cook for the family"): only when it happened
    tells the answers apart. The conversation is long past (the memory text, written today, is
    not part of it), so relative times are read from its latest source (2 August 2023): "el
    verano pasado" is 2022's, "two months ago" early June."""
    instance, _ = _told(
        api,
        [
            ("Cooked paella for the family.", datetime(2023, 3, 12, 20, tzinfo=UTC)),
            ("Cooked lasagna for the family.", datetime(2023, 5, 20, 20, tzinfo=UTC)),
            ("Cooked a curry for the family.", datetime(2023, 8, 2, 20, tzinfo=UTC)),
            ("Cociné cocido para la familia.", datetime(2022, 12, 24, 20, tzinfo=UTC)),
            ("Cociné gazpacho para la familia.", datetime(2022, 7, 10, 20, tzinfo=UTC)),
            # Said the next day: the text names the day it happened.
            ("Yesterday I cooked a risotto for the family.", datetime(2023, 4, 2, 9, tzinfo=UTC)),
        ],
    )
    questions = {
        "What did I cook for the family in May 2023?": "Cooked lasagna for the family.",
        "¿Qué cociné para la familia en diciembre de 2022?": "Cociné cocido para la familia.",
        "What did I cook for the family on 12 March 2023?": "Cooked paella for the family.",
        "¿Qué cociné para la familia el verano pasado?": "Cociné gazpacho para la familia.",
        "What did I cook for the family on 1 April 2023?": (
            "Yesterday I cooked a risotto for the family."
        ),
        "What did I cook for the family two months ago?": "Cooked lasagna for the family.",
    }
    found = {question: _first(api, instance, question) for question in questions}
    assert found == questions
    # Without the time, one question; it cannot have these five answers.
    assert len(set(questions.values())) == 5


def test_relative_times_in_a_live_conversation_are_read_from_now(api: Api) -> None:
    now = datetime.now(UTC)
    instance, _ = _told(
        api,
        [
            ("Fui al mercado con mi hermana Lucía.", now - timedelta(days=1)),
            ("Fui al mercado con mi madre.", now - timedelta(days=15)),
            ("Fui al mercado con mi tía Carmen.", now - timedelta(days=60)),
        ],
    )
    questions = {
        "¿Con quién fui al mercado ayer?": "Fui al mercado con mi hermana Lucía.",
        "¿Con quién fui al mercado hace dos semanas?": "Fui al mercado con mi madre.",
        "Who did I go to the market with two months ago?": "Fui al mercado con mi tía Carmen.",
    }
    assert {question: _first(api, instance, question) for question in questions} == questions


def test_a_time_in_the_query_ranks_rather_than_filters(api: Api) -> None:
    """What happened outside the period named is still found, below what happened within it;
    `since`/`until` are the filter."""
    instance, ids = _told(
        api,
        [
            ("Mi gato Tizón se escapó por el tejado.", datetime(2023, 5, 3, tzinfo=UTC)),
            ("Cociné lentejas con chorizo.", datetime(2023, 6, 3, tzinfo=UTC)),
        ],
    )
    hits = [
        h["id"]
        for h in search(api, instance, "¿Qué pasó con el gato en junio de 2023?")
        if h["source"] == "memory"
    ]
    assert hits == [
        ids["Mi gato Tizón se escapó por el tejado."],
        ids["Cociné lentejas con chorizo."],
    ]
    within = search(
        api, instance, "¿Qué pasó en junio de 2023?", since="2023-06-01", until="2023-06-30"
    )
    assert [h["id"] for h in within] == [ids["Cociné lentejas con chorizo."]]
