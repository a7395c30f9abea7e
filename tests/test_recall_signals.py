"""Each recall signal answers questions that plain hybrid search over the bare text misses."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from alma.api.services import Services
from alma.domain import Actor, NewMessage
from alma.embeddings import LARGE_MODEL
from alma.projections.ranking import Weights, weights_for
from tests.conftest import Api, make_character, make_instance, search
from tests.recall import Question
from tests.recall import load as load_recall

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


# A question whose answer is in a turn that shares no word with it, only a name with the turn
# the question is about (multi-hop): the second hop follows the name.
HOPS = {
    "Where does the person who gave me the telescope live now?": [
        "My aunt Rosalind gave me a brass telescope for my fortieth birthday.",
        "Rosalind moved to Lisbon last spring, into a flat near the river.",
    ],
    "¿En qué ciudad está ahora quien me regaló la guitarra?": [
        "Mi tía Remedios me regaló una guitarra cuando cumplí quince años.",
        "Remedios se mudó a Cádiz hace un año, cerca de la playa.",
    ],
}
AROUND = [
    "I looked at Saturn through the telescope on Friday night.",
    "The telescopes at the observatory are enormous.",
    "My neighbour lives in the blue house at the end of the street.",
    "My cousin lives in Manchester with his two dogs.",
    "Where I live now the winters are long and grey.",
    "Toco la guitarra todas las tardes después de cenar.",
    "La guitarra de mi abuelo está en el desván.",
    "Mi hermana está ahora en Madrid por trabajo.",
    "¿Te acuerdas de la ciudad donde nos conocimos?",
    "Me regalaron un reloj por mi cumpleaños.",
]


def test_the_second_hop_finds_the_turn_that_shares_only_a_name_with_the_first_hits(
    services: Services, actor: Actor
) -> None:
    app = services.app
    character = app.create_character("acme", {"name": "Rosa", "description": "x"}, actor)
    instance = app.create_instance("acme", character.id, "Rosa", "", actor)
    for text in [*AROUND, *(text for pair in HOPS.values() for text in pair)]:
        app.add_memory("acme", instance.id, text, actor)
    services.memory.catch_up()
    index = services.memory_index

    def top(question: str) -> list[str]:
        return [hit.doc.text for hit in index.search(instance.id, question, k=5)]

    plain = {question: top(question) for question in HOPS}
    index.weights = replace(Weights(), expansion=0.2)
    hopped = {question: top(question) for question in HOPS}
    for question, (first, second) in HOPS.items():
        assert first in plain[question] and second not in plain[question], plain[question]
        assert second in hopped[question], hopped[question]


def test_bm25_scaled_by_the_query_weighs_a_match_on_one_word_of_a_question_as_a_small_share(
    services: Services, actor: Actor
) -> None:
    """Under `lexical_scale="query"` a source matching only a name of a question about
    something never said scores lower than under the default scale, which gives the query's
    best BM25 hit the full lexical weight whatever it matched; a source matching the whole
    question keeps its score."""
    app = services.app
    character = app.create_character("acme", {"name": "Rosa", "description": "x"}, actor)
    instance = app.create_instance("acme", character.id, "Rosa", "", actor)
    for text in [
        "My sister Inés works as a nurse in Valencia.",
        "I had pasta for dinner with my neighbours.",
        "We watched a film on Sunday afternoon.",
        "Mi hermano Tomás trabaja de panadero en Cuenca.",
    ]:
        app.add_memory("acme", instance.id, text, actor)
    services.memory.catch_up()
    index = services.memory_index
    said = ["Is Inés a nurse in Valencia?", "¿Tomás trabaja de panadero en Cuenca?"]
    never = ["What did Inés think of the Kilimanjaro climb?", "¿Qué opinó Tomás del Kilimanjaro?"]

    def tops() -> dict[str, float]:
        return {q: index.search(instance.id, q, k=1)[0].score for q in [*said, *never]}

    best = tops()
    index.weights = replace(Weights(), lexical_scale="query")
    query = tops()
    for question in said:
        assert query[question] == pytest.approx(best[question], abs=0.05), (question, query)
    for question in never:
        assert query[question] < best[question] - 0.1, (question, query, best)


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


# The evidence is two turns before the one that names the trip; a question between them says
# nothing of it.
TWO_BEFORE = {
    "¿Qué tal el viaje a Lisboa?": _session(
        3,
        [
            ("Tomás", "¡Fue precioso, no quería volver!"),
            ("Ana", "¿Y el hotel?"),
            ("Ana", "Me alegro de que el viaje a Lisboa saliera bien."),
        ],
    )
    + _session(11, [("Ana", "Mi jefe se va de viaje a Lisboa."), ("Tomás", "Qué suerte.")])
    + _session(18, [("Ana", "¿Qué cenamos?"), ("Tomás", "Pizza.")]),
    "How was the trip to Lisbon?": _session(
        4,
        [
            ("Tom", "It was beautiful, I didn't want to come back!"),
            ("Ana", "And the hotel?"),
            ("Ana", "So glad the trip to Lisbon went well."),
        ],
    )
    + _session(12, [("Ana", "My boss is off on a trip to Lisbon."), ("Tom", "Lucky him.")])
    + _session(19, [("Ana", "What's for dinner?"), ("Tom", "Pizza.")]),
}


def test_two_neighbours_a_side_lift_a_turn_two_away_from_the_match(
    services: Services, actor: Actor
) -> None:
    """The default blends two turns on each side (measured best on LoCoMo, README), as do
    all-mpnet-base-v2's weights (`weights_for`); one turn a side does not reach this evidence."""
    app, index = services.app, services.memory_index
    character = app.create_character(actor.tenant, {"name": "Tomás"}, actor)
    assert weights_for(LARGE_MODEL).neighbours_each_side == 2
    for n, (question, messages) in enumerate(TWO_BEFORE.items()):
        instance = app.create_instance(actor.tenant, character.id, f"t{n}", "", actor)
        evidence = str(app.import_messages(actor.tenant, instance.id, messages, actor)[0])
        services.memory.catch_up()
        rank = {}
        for weights in (Weights(neighbours_each_side=1), Weights()):
            index.weights = weights
            found = [hit.doc.doc_id for hit in index.search(instance.id, question, k=12)]
            rank[weights.neighbours_each_side] = found.index(evidence)
        assert rank[2] < rank[1], (question, rank)
        assert rank[2] <= 3, (question, rank)


def _rank(services: Services, question: Question, weights: Weights) -> int | None:
    """Where the question's first answer comes among ten hits under `weights` (None: absent)."""
    services.memory_index.weights = weights
    hits = services.memory_index.search(question.instance_id, question.text, now=question.asked_at)
    found = [n for n, hit in enumerate(hits) if hit.doc.doc_id in question.answers]
    return found[0] if found else None


@pytest.mark.slow
def test_what_a_turn_says_and_the_turns_beside_the_first_hits_find_answers_on_our_data(
    services: Services,
) -> None:
    """On tests/data/recall: a turn that names things outranks small talk close in meaning
    (`Weights.content`), and the turn beside a first hit is a candidate though neither meaning
    nor words found it (`Weights.neighbour_candidates`). Without each, these answers fall out
    of the first five."""
    asked = {question.text: question for question in load_recall(services)}
    plain = Weights()
    for text, without in [
        ("¿Qué alimentos tengo prohibidos?", replace(plain, content=0.0)),
        ("¿Qué hueso me fracturé de joven?", replace(plain, content=0.0)),
        ("¿Qué hueso me fracturé de joven?", replace(plain, neighbour_candidates=0)),
    ]:
        question = asked[text]
        with_it, without_it = _rank(services, question, plain), _rank(services, question, without)
        assert with_it is not None and with_it < 5, (text, with_it)
        assert without_it is None or without_it >= 5, (text, without, without_it)


# Caroline asks Melanie about what she enjoys, in many words like the question's; what Melanie
# does is in her own turns, which share no word with it but her name.
ASKS_MELANIE = [
    "Melanie, what activities do you enjoy most?",
    "Which activities does Melanie enjoy with her family, I wonder.",
    "Melanie, you always enjoy so many activities!",
    "Do you enjoy outdoor activities, Melanie?",
    "Melanie, I enjoy hearing about your activities.",
    "What activities do you enjoy on weekends, Melanie?",
    "Melanie, tell me which activities you enjoy.",
    "I hope you enjoy your activities this summer, Melanie.",
    "Melanie, what activity do you enjoy the most lately?",
    "Enjoy your activities, Melanie!",
    "Melanie, any fun activities you enjoyed recently?",
    "So many activities to enjoy, right Melanie?",
    "Melanie, which activities should I enjoy with you?",
    "Activities are more fun to enjoy together, Melanie.",
    "Melanie, did you enjoy the activities at the fair?",
    "I enjoy the same activities as you, Melanie.",
]
MELANIE_DOES = [
    "I took the kids swimming at the lake this morning.",
    "I signed up for a pottery class downtown.",
    "We went camping in the mountains last weekend.",
]
CAROLINE_DOES = [
    "I went hiking with my friends yesterday.",
    "I joined a book club at the library.",
    "I started painting landscapes again.",
]


def test_past_the_first_hits_the_turns_of_the_person_a_question_names_come_first(
    services: Services, actor: Actor
) -> None:
    """A question about one person (LoCoMo's multi-hop) has its evidence in many of their turns:
    past the first ten hits their turns rise above those of whoever talks about them
    (`Weights.named_speaker`). The first ten stay as ranked."""
    app, index = services.app, services.memory_index
    character = app.create_character(actor.tenant, {"name": "Caroline"}, actor)
    instance = app.create_instance(actor.tenant, character.id, "Caroline", "", actor)
    said = [("Caroline", text) for text in ASKS_MELANIE + CAROLINE_DOES]
    said += [("Melanie", text) for text in MELANIE_DOES]
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for day, (speaker, text) in enumerate(said):  # a day apart: no turn is another's neighbour
        app.add_memory(
            actor.tenant,
            instance.id,
            text,
            actor,
            occurred_at=start + timedelta(days=day),
            speaker=speaker,
        )
    services.memory.catch_up()
    found = {}
    for weights in (replace(Weights(), named_speaker=0.0), Weights()):
        index.weights = weights
        hits = index.search(instance.id, "What activities does Melanie enjoy?", k=16)
        found[weights.named_speaker] = [hit.doc.text for hit in hits]
    default = Weights().named_speaker
    assert found[default][:10] == found[0.0][:10]
    assert set(MELANIE_DOES) <= set(found[default]), found[default]
    assert not set(MELANIE_DOES) <= set(found[0.0]), found[0.0]
