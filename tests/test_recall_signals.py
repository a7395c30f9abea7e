"""Each recall signal answers questions that plain hybrid search over the bare text misses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alma.api.services import Services
from alma.domain import Actor, NewMessage
from alma.projections.ranking import Weights
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


def _session(day: int, lines: list[tuple[str, str]]) -> list[NewMessage]:
    start = datetime(2024, 5, day, 20, 0, tzinfo=UTC)
    return [
        NewMessage(
            "user" if speaker == "Ana" else "assistant",
            text,
            start + timedelta(minutes=n),
            None,
            speaker,
        )
        for n, (speaker, text) in enumerate(lines)
    ]


# The evidence ("It was amazing…") names nothing; the turn after it names the concert. Other
# sessions name the concert's artist or concerts in general.
BESIDE = {
    "¿Qué tal estuvo el concierto de Rosalía?": _session(
        1,
        [
            ("Ana", "¿Qué tal el día?"),
            ("Tomás", "Acabo de volver a casa, estoy agotado."),
            ("Tomás", "¡Fue increíble, lloré con la última canción!"),
            ("Ana", "Me alegro de que el concierto de Rosalía mereciera la pena."),
        ],
    )
    + _session(9, [("Ana", "Rosalía saca disco nuevo en junio."), ("Tomás", "Ya lo sé.")])
    + _session(15, [("Ana", "Quiero entradas para un concierto de jazz."), ("Tomás", "Vale.")])
    + _session(20, [("Ana", "Mi prima canta canciones de Rosalía."), ("Tomás", "Como todos.")])
    + _session(23, [("Ana", "¿Qué cenamos?"), ("Tomás", "Pizza.")]),
    "How was the Coldplay concert?": _session(
        2,
        [
            ("Ana", "How was your day?"),
            ("Tom", "Just got home, I'm exhausted."),
            ("Tom", "It was amazing, I cried at the last song!"),
            ("Ana", "So glad the Coldplay concert was worth it."),
        ],
    )
    + _session(10, [("Ana", "Coldplay has a new album out in June."), ("Tom", "I know.")])
    + _session(16, [("Ana", "I want tickets for a jazz concert."), ("Tom", "Sure.")])
    + _session(21, [("Ana", "My cousin sings Coldplay songs."), ("Tom", "Like everyone.")])
    + _session(24, [("Ana", "What's for dinner?"), ("Tom", "Pizza.")]),
}


def test_the_turn_beside_the_one_that_matches_rises_with_it(
    services: Services, actor: Actor
) -> None:
    app, index = services.app, services.memory_index
    character = app.create_character(actor.tenant, {"name": "Tomás"}, actor)
    ranks: dict[str, dict[float, int]] = {}
    for n, (question, messages) in enumerate(BESIDE.items()):
        instance = app.create_instance(actor.tenant, character.id, f"t{n}", "", actor)
        evidence = str(app.import_messages(actor.tenant, instance.id, messages, actor)[2])
        services.memory.catch_up()
        for weights in (Weights(neighbours=0.0), Weights()):
            index.weights = weights
            found = [hit.doc.doc_id for hit in index.search(instance.id, question, k=12)]
            ranks.setdefault(question, {})[weights.neighbours] = found.index(evidence)
    for question, rank in ranks.items():
        assert rank[Weights().neighbours] < rank[0.0], (question, rank)
        assert rank[Weights().neighbours] < 6, (question, rank)
