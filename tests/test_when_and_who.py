"""When a memory happened and who said it: `occurred_at` and `speaker` on snippets, `name` on
messages, kept in the events, the index (through a rebuild and an upgrade from an earlier
version), search within a period, and the chat prompt."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest

from alma.api.services import Services, build_services, rebuild_memory_index
from alma.domain import Actor, NewMessage
from alma.projections import MemoryIndex, Period
from alma.projections.vectors import OCCURRED
from tests.conftest import Api, make_character, make_instance, search
from tests.openai_stub import OpenAIStub, Reply

MAY_8 = "2023-05-08T13:56:00Z"


def _instance(api: Api) -> str:
    return str(make_instance(api, make_character(api)["id"], name="Rosa")["id"])


def _send(api: Api, method: str, path: str, body: dict[str, Any]) -> Any:
    response = api.client.request(method, path, json=body, headers=api.acme)
    assert response.status_code in (200, 201), response.text
    return response.json()


def test_a_snippet_keeps_when_it_happened_and_who_said_it(api: Api) -> None:
    instance = _instance(api)
    base = f"/v1/instances/{instance}/memories"
    told = _send(
        api,
        "POST",
        base,
        {
            "text": "I went to the LGBTQ support group.",
            "occurred_at": "2023-05-08T13:56:00",  # no offset: UTC
            "speaker": "Caroline",
        },
    )
    spanish = _send(
        api,
        "POST",
        base,
        {
            "text": "Fui al mercado de Triana con mi hermana Lucía.",
            "occurred_at": "2024-03-01T19:30:00+01:00",
            "speaker": "José Núñez",
        },
    )
    plain = _send(api, "POST", base, {"text": "Vive en Oaxaca con su gato Tizón."})

    assert (told["occurred_at"], told["speaker"]) == (MAY_8, "Caroline")
    assert (spanish["occurred_at"], spanish["speaker"]) == ("2024-03-01T18:30:00Z", "José Núñez")
    assert (plain["occurred_at"], plain["speaker"]) == (plain["created_at"], None)
    assert api.client.get(f"{base}/{told['id']}", headers=api.acme).json() == told

    # Found, with when it happened and who said it; created_at stays when it was added.
    (hit,) = [h for h in search(api, instance, k=20, q="support group") if h["id"] == told["id"]]
    assert (hit["occurred_at"], hit["speaker"], hit["created_at"]) == (
        MAY_8,
        "Caroline",
        told["created_at"],
    )
    (hit,) = [h for h in search(api, instance, k=20, q="gato Tizón") if h["id"] == plain["id"]]
    assert (hit["occurred_at"], hit["speaker"]) == (plain["created_at"], None)

    # Edited like the other fields: left out, kept; null, back to the default.
    edit = f"{base}/{told['id']}"
    moved = _send(api, "PATCH", edit, {"speaker": "Melanie", "occurred_at": "2023-06-01"})
    assert (moved["speaker"], moved["occurred_at"], moved["version"]) == (
        "Melanie",
        "2023-06-01T00:00:00Z",
        2,
    )
    kept = _send(api, "PATCH", edit, {"text": "I went to the support group again."})
    assert (kept["speaker"], kept["occurred_at"], kept["version"]) == (
        "Melanie",
        "2023-06-01T00:00:00Z",
        3,
    )
    same = _send(api, "PATCH", edit, {"speaker": "Melanie"})
    assert same["version"] == 3  # nothing changed, nothing recorded
    cleared = _send(api, "PATCH", edit, {"speaker": None, "occurred_at": None})
    assert (cleared["speaker"], cleared["occurred_at"], cleared["version"]) == (
        None,
        told["created_at"],
        4,
    )
    (hit,) = [h for h in search(api, instance, k=20, q="support group") if h["id"] == told["id"]]
    assert (hit["speaker"], hit["occurred_at"]) == (None, told["created_at"])


def test_imported_messages_say_who_said_them_and_replies_are_the_instance_s(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    api = chat_api
    instance = _instance(api)
    turns = [
        {
            "role": "user",
            "content": "Yesterday I went to the LGBTQ support group.",
            "timestamp": "2023-05-08T13:56:00",
            "name": "Caroline",
        },
        {"role": "assistant", "content": "That's great!", "timestamp": MAY_8, "name": "Melanie"},
        {"role": "assistant", "content": "¿Y qué tal te fue?", "timestamp": MAY_8},
        {"role": "user", "content": "Muy bien, gracias.", "timestamp": MAY_8},
    ]
    _send(api, "POST", f"/v1/instances/{instance}/messages", {"messages": turns})
    openai_stub.script(Reply("¡Me alegro mucho!"))
    response = api.client.post(
        f"/v1/instances/{instance}/chat", json={"message": "¿Te acuerdas?"}, headers=api.acme
    )
    assert response.status_code == 200, response.text

    said = api.client.get(f"/v1/instances/{instance}/messages", headers=api.acme).json()["items"]
    # Not given: the assistant's is the instance's name, the user's none; a reply is the
    # instance's, a chat message nobody's in particular.
    assert [(m["content"], m["name"]) for m in said] == [
        ("Yesterday I went to the LGBTQ support group.", "Caroline"),
        ("That's great!", "Melanie"),
        ("¿Y qué tal te fue?", "Rosa"),
        ("Muy bien, gracias.", None),
        ("¿Te acuerdas?", None),
        ("¡Me alegro mucho!", "Rosa"),
    ]
    events = api.client.get(
        f"/v1/instances/{instance}/events", params={"limit": 500}, headers=api.acme
    ).json()["items"]
    named = [e["data"]["name"] for e in events if e["type"] != "Created"]
    assert named == [m["name"] for m in said]

    (hit,) = [
        h for h in search(api, instance, k=20, q="support group") if h["source"] == "message"
    ][:1]
    assert (hit["text"], hit["speaker"], hit["occurred_at"], hit["created_at"]) == (
        "Yesterday I went to the LGBTQ support group.",
        "Caroline",
        MAY_8,
        MAY_8,
    )


def test_search_within_a_period_finds_only_what_happened_then(api: Api) -> None:
    instance = _instance(api)
    for text, when, speaker in [
        ("Caroline went to the support group for the first time", MAY_8, "Caroline"),
        ("Caroline told the support group about her pride parade", "2023-07-01T10:00:00Z", None),
        ("Caroline started a support group for young artists", "2022-01-15T09:00:00Z", None),
    ]:
        body = {"text": text, "occurred_at": when, "speaker": speaker}
        _send(api, "POST", f"/v1/instances/{instance}/memories", body)
    message = {
        "role": "user",
        "content": "Melanie loves the support group meetings",
        "timestamp": "2024-02-01T20:00:00Z",
        "name": "Melanie",
    }
    _send(api, "POST", f"/v1/instances/{instance}/messages", {"messages": [message]})

    def found(**period: str) -> dict[str, str]:
        """When each hit happened, by its text's first words."""
        hits = search(api, instance, k=20, q="support group", **period)
        assert all({"occurred_at", "speaker", "created_at"} <= set(h) for h in hits)
        return {" ".join(h["text"].split()[:3]): h["occurred_at"] for h in hits}

    assert found() == {
        "Caroline went to": MAY_8,
        "Caroline told the": "2023-07-01T10:00:00Z",
        "Caroline started a": "2022-01-15T09:00:00Z",
        "Melanie loves the": "2024-02-01T20:00:00Z",
    }
    assert set(found(since="2023-01-01", until="2023-12-31T23:59:59")) == {
        "Caroline went to",
        "Caroline told the",
    }
    # Both bounds are included, a time without an offset is UTC, and an offset is converted.
    assert set(found(since="2023-05-08T13:56:00")) == {
        "Caroline went to",
        "Caroline told the",
        "Melanie loves the",
    }
    assert set(found(until="2023-05-08T15:56:00+02:00")) == {
        "Caroline went to",
        "Caroline started a",
    }
    assert "Caroline went to" not in found(since="2023-05-08T13:56:00.000001Z")
    assert found(since="2025-01-01T00:00:00Z") == {}
    (may,) = [h for h in search(api, instance, k=20, q="first time", until=MAY_8, since=MAY_8)]
    assert (may["speaker"], may["occurred_at"]) == ("Caroline", MAY_8)


BAD_SNIPPETS = [
    ({"occurred_at": "yesterday"}, "invalid_request", None),
    ({"occurred_at": "2023-13-01T00:00:00Z"}, "invalid_request", None),
    ({"occurred_at": "0001-01-01T00:00:00+01:00"}, "invalid_request", None),  # before year 1
    ({"speaker": ""}, "invalid_input", "speaker"),
    ({"speaker": " \t\n"}, "invalid_input", "speaker"),
    ({"speaker": "n" * 201}, "invalid_input", "speaker"),
    ({"speaker": 7}, "invalid_request", None),
]


@pytest.mark.parametrize(("fields", "code", "field"), BAD_SNIPPETS)
def test_a_bad_time_or_speaker_is_refused_and_writes_nothing(
    api: Api, fields: dict[str, Any], code: str, field: str | None
) -> None:
    instance = _instance(api)
    base = f"/v1/instances/{instance}/memories"
    memory = _send(api, "POST", base, {"text": "Su hermana Lucía es enfermera"})
    before = api.written()
    for method, path, body in [
        ("POST", base, {"text": "Fui al mercado", **fields}),
        ("PATCH", f"{base}/{memory['id']}", fields),
    ]:
        response = api.client.request(method, path, json=body, headers=api.acme)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == code, error
        if field is not None:
            assert error["details"] == {"field": field}
    assert api.written() == before


@pytest.mark.parametrize("name", ["", "   ", "n" * 201])
def test_a_bad_name_in_any_imported_message_writes_none_of_them(api: Api, name: str) -> None:
    instance = _instance(api)
    before = api.written()
    messages = [
        {"role": "user", "content": "Hola", "name": "Caroline"},
        {"role": "assistant", "content": "Buenas", "name": name},
    ]
    response = api.client.post(
        f"/v1/instances/{instance}/messages", json={"messages": messages}, headers=api.acme
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"
    assert response.json()["error"]["details"] == {"field": "name"}
    assert api.written() == before


def test_a_period_that_ends_before_it_begins_is_refused(api: Api) -> None:
    instance = _instance(api)
    _send(api, "POST", f"/v1/instances/{instance}/memories", {"text": "Tiene un gato"})
    before = api.written()
    path = f"/v1/instances/{instance}/memories/search"
    backwards = {"q": "gato", "since": "2024-01-02", "until": "2024-01-01T23:59:59Z"}
    response = api.client.get(path, params=backwards, headers=api.acme)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["details"]) == ("invalid_input", {"field": "since"})
    not_a_time = api.client.get(path, params={"q": "gato", "until": "mañana"}, headers=api.acme)
    assert not_a_time.status_code == 422, not_a_time.text
    assert not_a_time.json()["error"]["code"] == "invalid_request"
    assert api.written() == before


def test_the_chat_prompt_shows_when_each_memory_happened_and_who_said_it(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    instance = _instance(chat_api)
    base = f"/v1/instances/{instance}/memories"
    for body in [
        {"text": "I went to the LGBTQ support group.", "occurred_at": MAY_8, "speaker": "Caroline"},
        {
            "text": "Fui al mercado de Triana con mi hermana Lucía.",
            "occurred_at": "2024-03-01T19:30:00+01:00",
            "speaker": "José Núñez",
        },
        {"text": "Tiene un gato que se llama Tizón.", "occurred_at": "2022-11-30T23:30:00-02:00"},
    ]:
        _send(chat_api, "POST", base, body)
    openai_stub.script(Reply("Claro que me acuerdo."))

    response = chat_api.client.post(
        f"/v1/instances/{instance}/chat",
        json={"message": "¿Te acuerdas del grupo de apoyo, de Triana y del gato?"},
        headers=chat_api.acme,
    )

    assert response.status_code == 200, response.text
    recalled = openai_stub.requests[-1]["messages"][-2]  # just before the user's message
    assert recalled["role"] == "system"
    section = recalled["content"].removeprefix("## Things you remember\n")
    assert section.splitlines() == [  # oldest first, each on its day in UTC
        "- [1 December 2022] Tiene un gato que se llama Tizón.",
        "- [8 May 2023] Caroline: I went to the LGBTQ support group.",
        "- [1 March 2024] José Núñez: Fui al mercado de Triana con mi hermana Lucía.",
    ]


def _docs(index: MemoryIndex, instance: UUID) -> set[tuple[Any, ...]]:
    rows = index.store.query(
        "SELECT doc_id, kind, text, speaker, occurred_at, created_at FROM memory_docs "
        "WHERE generation = %s AND instance_id = %s",
        (index.generation, str(instance)),
    )
    return {tuple(row) for row in rows}


def _said(services: Services, actor: Actor) -> UUID:
    """An instance with snippets and messages that carry when and who, and one that does not."""
    app = services.app
    character = app.create_character("acme", {"name": "Doña Rosa", "description": ""}, actor)
    instance = app.create_instance("acme", character.id, "Rosa", "Vive en Oaxaca.", actor).id
    may = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    group = app.add_memory(
        "acme", instance, "Caroline went to the support group", actor, occurred_at=may
    )
    app.patch_memory("acme", instance, group.id, actor, {"speaker": "Caroline"})
    app.add_memory("acme", instance, "Le encanta el mole negro", actor, speaker="José Núñez")
    app.add_memory("acme", instance, "Tiene un gato que se llama Tizón", actor)
    app.import_messages(
        "acme",
        instance,
        [
            NewMessage("user", "¿Fuiste al grupo de apoyo?", may, name="Melanie"),
            NewMessage("assistant", "Sí, el lunes.", may),
        ],
        actor,
    )
    return instance


def test_a_rebuild_gives_the_same_times_and_speakers(services: Services, actor: Actor) -> None:
    instance = _said(services, actor)
    index = services.memory_index
    services.memory.catch_up()
    before = _docs(index, instance)
    speakers = {row[2]: row[3] for row in before}
    assert speakers["Caroline went to the support group"] == "Caroline"
    assert speakers["Sí, el lunes."] == "Rosa"
    within = Period(since=datetime(2023, 5, 8, tzinfo=UTC), until=datetime(2023, 5, 9, tzinfo=UTC))
    found = [hit.doc for hit in index.search(instance, "support group", period=within)]

    rebuild_memory_index(services)

    assert _docs(index, instance) == before
    assert [hit.doc for hit in index.search(instance, "support group", period=within)] == found
    assert {doc.text for doc in found} == {
        "Caroline went to the support group",
        "¿Fuiste al grupo de apoyo?",
        "Sí, el lunes.",
    }


def test_an_index_and_a_conversation_from_before_speakers_are_brought_up_to_date(
    services: Services, actor: Actor
) -> None:
    app = services.app
    character = app.create_character("acme", {"name": "Rosa", "description": ""}, actor)
    instance = app.create_instance("acme", character.id, "Rosa", "", actor).id
    app.add_memory("acme", instance, "Caroline went to the support group", actor)
    june = datetime(2023, 6, 1, tzinfo=UTC)
    app.import_messages("acme", instance, [NewMessage("user", "Melanie paints", june)], actor)
    services.memory.catch_up()
    services.conversation.catch_up()
    index = services.memory_index
    generation = index.generation
    # The layout an earlier version wrote: no speakers, no created_at, vectors without times.
    with index.store.transaction() as cursor:
        cursor.execute("ALTER TABLE memory_docs DROP COLUMN speaker")
        cursor.execute("ALTER TABLE memory_docs DROP COLUMN created_at")
    name = index.vectors.name(generation, instance)
    stored = index.vectors.client.get_collection(name, embedding_function=None).get(
        include=["embeddings", "metadatas"]
    )
    index.vectors.drop_instance(generation, instance)
    index.vectors.upsert(
        generation,
        instance,
        stored["ids"],
        stored["embeddings"],
        [{k: v for k, v in m.items() if k != OCCURRED} for m in stored["metadatas"]],
    )
    with services.conversation_view.store.transaction() as cursor:
        cursor.execute("ALTER TABLE conversation_messages DROP COLUMN name")

    upgraded = build_services(services.settings)
    try:
        index = upgraded.memory_index
        since = Period(since=datetime(2023, 1, 1, tzinfo=UTC))
        vector = index.embedder.encode_query("support group painting")
        near = dict(index.vectors.nearest(generation, instance, vector, 10, since))
        texts = {doc.text: doc for doc in index.memories(instance, 0, 10)}
        memory = texts["Caroline went to the support group"]
        assert near.keys() == {memory.doc_id, *_message_ids(upgraded, instance)}
        assert (memory.speaker, memory.created_at) == (None, memory.occurred_at)
        hits = index.search(instance, "Melanie paints", period=Period(until=june))
        assert [(h.doc.text, h.doc.occurred_at) for h in hits] == [("Melanie paints", june)]

        (old,) = upgraded.conversation_view.messages(instance, 0, 10)
        assert old.name is None
        app.import_messages(
            "acme", instance, [NewMessage("user", "¡Y canta!", june, name="Caroline")], actor
        )
        upgraded.conversation.catch_up()
        upgraded.memory.catch_up()
        said = upgraded.conversation_view.messages(instance, 0, 10)
        assert [(m.content, m.name) for m in said] == [
            ("Melanie paints", None),
            ("¡Y canta!", "Caroline"),
        ]
        (hit,) = [h for h in index.search(instance, "canta") if h.doc.text == "¡Y canta!"]
        assert (hit.doc.speaker, hit.doc.occurred_at) == ("Caroline", june)
    finally:
        upgraded.close()


def _message_ids(services: Services, instance: UUID) -> set[str]:
    return {str(m.id) for m in services.conversation_view.messages(instance, 0, 100)}


def test_a_period_finds_what_happened_then_however_far_from_the_query(
    services: Services, actor: Actor
) -> None:
    """The nearest of all are asked for first; when too few of them happened within the period,
    Chroma filters by it: a source far from the query, the only one then, is still found."""
    app = services.app
    character = app.create_character("acme", {"name": "Rosa", "description": ""}, actor)
    instance = app.create_instance("acme", character.id, "Rosa", "", actor).id
    for n in range(80):
        app.add_memory("acme", instance, f"Mi gato número {n} duerme en el sofá", actor)
    storm = datetime(2020, 1, 1, tzinfo=UTC)
    old = app.add_memory("acme", instance, "La tormenta tumbó el olivo", actor, occurred_at=storm)
    services.memory.catch_up()
    index = services.memory_index
    query = "¿Dónde duerme el gato?"
    nearest = index.vectors.nearest(
        index.generation, instance, index.embedder.encode_query(query), 50
    )
    assert str(old.id) not in dict(nearest)  # only a filtered search reaches it

    hits = index.search(instance, query, period=Period(until=datetime(2021, 1, 1, tzinfo=UTC)))

    assert [(hit.doc.doc_id, hit.doc.occurred_at) for hit in hits] == [(str(old.id), storm)]
