"""Each recall signal answers questions that plain hybrid search over the bare text misses."""

from __future__ import annotations

from tests.conftest import Api, make_character, make_instance, search

# Two people tell the same kind of thing; a question names one of them.
SAID_BY_EACH = [
    ("Melanie", "I painted a sunrise over the lake last week."),
    ("Caroline", "I painted a portrait of my grandmother for her birthday."),
    ("Melanie", "We went camping in the mountains with the kids."),
    ("Caroline", "We went camping by the beach with my friends."),
    ("Lucía", "Cociné un cocido madrileño para toda la familia."),
    ("Andrés", "Cociné una paella de marisco el domingo."),
    ("Lucía", "Leí un libro de poesía en el tren."),
    ("Andrés", "Leí un libro de historia en casa."),
]
QUESTIONS = {
    "What did Caroline paint?": "I painted a portrait of my grandmother for her birthday.",
    "What did Melanie paint?": "I painted a sunrise over the lake last week.",
    "Where did Caroline go camping?": "We went camping by the beach with my friends.",
    "Where did Melanie go camping?": "We went camping in the mountains with the kids.",
    "¿Qué cocinó Andrés?": "Cociné una paella de marisco el domingo.",
    "¿Qué cocinó Lucía?": "Cociné un cocido madrileño para toda la familia.",
    "¿Qué libro leyó Lucía?": "Leí un libro de poesía en el tren.",
    "¿Qué libro leyó Andrés?": "Leí un libro de historia en casa.",
}


def _top(api: Api, instance: str, question: str) -> str:
    return str(search(api, instance, question, k=3)[0]["text"])


def test_a_question_that_names_a_speaker_finds_what_that_speaker_said(api: Api) -> None:
    instance = str(make_instance(api, make_character(api)["id"], name="Rosa")["id"])
    for speaker, text in SAID_BY_EACH:
        added = api.client.post(
            f"/v1/instances/{instance}/memories",
            json={"text": text, "speaker": speaker},
            headers=api.acme,
        )
        assert added.status_code == 201, added.text
    found = {question: _top(api, instance, question) for question in QUESTIONS}
    assert found == QUESTIONS


def test_imported_messages_are_found_by_the_name_of_who_said_them(api: Api) -> None:
    instance = str(make_instance(api, make_character(api)["id"], name="Rosa")["id"])
    messages = [
        {"role": "user" if n % 2 == 0 else "assistant", "content": text, "name": speaker}
        for n, (speaker, text) in enumerate(SAID_BY_EACH)
    ]
    imported = api.client.post(
        f"/v1/instances/{instance}/messages", json={"messages": messages}, headers=api.acme
    )
    assert imported.status_code in (200, 201), imported.text
    found = {question: _top(api, instance, question) for question in QUESTIONS}
    assert found == QUESTIONS
