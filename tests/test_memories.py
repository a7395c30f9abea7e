"""Memories through the HTTP API: snippets, search, imported messages, the audit."""

from __future__ import annotations

import pytest

from tests.conftest import Api, make_character, make_instance, search


def _instance(api: Api, memory: str = "") -> str:
    return str(make_instance(api, make_character(api)["id"], memory=memory)["id"])


def test_a_memory_can_be_added_revised_listed_and_forgotten(api: Api) -> None:
    instance = _instance(api)
    base = f"/v1/instances/{instance}/memories"
    created = api.client.post(
        base,
        json={"text": "Su hermana Lucía es enfermera", "metadata": {"tema": "familia"}},
        headers=api.acme,
    )
    assert created.status_code == 201
    memory = created.json()
    assert (memory["text"], memory["metadata"], memory["importance"]) == (
        "Su hermana Lucía es enfermera",
        {"tema": "familia"},
        0.5,
    )
    revised = api.client.patch(
        f"{base}/{memory['id']}", json={"text": "Su hermana Lucía es médica"}, headers=api.acme
    ).json()
    assert (revised["text"], revised["metadata"], revised["version"]) == (
        "Su hermana Lucía es médica",
        {"tema": "familia"},
        2,
    )
    listed = api.client.get(base, headers=api.acme).json()["items"]
    assert [m["text"] for m in listed] == ["Su hermana Lucía es médica"]

    assert api.client.delete(f"{base}/{memory['id']}", headers=api.acme).status_code == 204
    assert api.client.get(base, headers=api.acme).json()["items"] == []
    again = api.client.delete(f"{base}/{memory['id']}", headers=api.acme)
    assert again.status_code == 404
    assert (
        api.client.patch(f"{base}/{memory['id']}", json={"text": "x"}, headers=api.acme).status_code
        == 404
    )


def test_search_finds_the_relevant_memory_first(api: Api) -> None:
    instance = _instance(api, memory="Vive en Oaxaca con su gato Tizón.")
    for text in [
        "Su hermana Lucía trabaja de enfermera en el hospital de Triana",
        "Le encanta el mole negro de su abuela",
        "Viajó a Lisboa en 2019 y comió sardinas",
    ]:
        api.client.post(f"/v1/instances/{instance}/memories", json={"text": text}, headers=api.acme)
    results = search(api, instance, "¿Dónde trabaja Lucía?")
    assert results[0]["text"].startswith("Su hermana Lucía")
    assert results[0]["source"] == "memory"
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    cat = search(api, instance, "gato", k=1)
    assert [(r["source"], r["text"]) for r in cat] == [
        ("memory_text", "Vive en Oaxaca con su gato Tizón.")
    ]
    assert search(api, instance, "gato", min_score=0.99) == []


def test_a_forgotten_memory_never_comes_back_insearch(api: Api) -> None:
    instance = _instance(api)
    base = f"/v1/instances/{instance}/memories"
    secret = api.client.post(
        base, json={"text": "La clave de la caja fuerte es 4711"}, headers=api.acme
    ).json()
    api.client.post(base, json={"text": "Le gustan las cajas de música"}, headers=api.acme)
    assert any(r["id"] == secret["id"] for r in search(api, instance, "clave caja fuerte"))
    api.client.delete(f"{base}/{secret['id']}", headers=api.acme)
    results = search(api, instance, "clave caja fuerte 4711", k=100)
    assert all("4711" not in str(r["text"]) for r in results)
    assert results, "the other memory is still found"


def test_imported_messages_are_searchable_with_their_own_dates(api: Api) -> None:
    instance = _instance(api)
    response = api.client.post(
        f"/v1/instances/{instance}/messages",
        json={
            "messages": [
                {
                    "role": "user",
                    "content": "Mi perro se llama Canelo",
                    "timestamp": "2024-03-01T10:00:00Z",
                },
                {"role": "assistant", "content": "¡Qué nombre tan bonito!"},
            ]
        },
        headers=api.acme,
    )
    assert response.status_code == 201
    assert len(response.json()["ids"]) == 2
    results = search(api, instance, "¿cómo se llama mi perro?", k=1)
    assert results[0]["text"] == "Mi perro se llama Canelo"
    assert results[0]["source"] == "message"
    assert results[0]["metadata"] == {"role": "user"}
    assert results[0]["created_at"].startswith("2024-03-01T10:00:00")
    conversation = api.client.get(f"/v1/instances/{instance}/messages", headers=api.acme).json()
    assert [(m["role"], m["content"]) for m in conversation["items"]] == [
        ("user", "Mi perro se llama Canelo"),
        ("assistant", "¡Qué nombre tan bonito!"),
    ]
    assert conversation["items"][0]["timestamp"].startswith("2024-03-01T10:00:00")
    events = api.client.get(
        f"/v1/instances/{instance}/events", params={"type": "MessageRecorded"}, headers=api.acme
    ).json()["items"]
    assert [e["data"]["content"] for e in events] == [
        "Mi perro se llama Canelo",
        "¡Qué nombre tan bonito!",
    ]


def test_the_conversation_pages_back_from_its_latest_message(api: Api) -> None:
    """`order=newest`: a chat view opens on the last messages and pages further back."""
    instance = _instance(api)
    said = [{"role": "user", "content": f"mensaje {n} ¿sí? 🌵"} for n in range(7)]
    posted = api.client.post(
        f"/v1/instances/{instance}/messages", json={"messages": said}, headers=api.acme
    )
    assert posted.status_code == 201, posted.text
    pages: list[list[str]] = []
    cursor = None
    while True:
        params = {"order": "newest", "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = api.client.get(
            f"/v1/instances/{instance}/messages", params=params, headers=api.acme
        ).json()
        pages.append([m["content"] for m in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [
        ["mensaje 6 ¿sí? 🌵", "mensaje 5 ¿sí? 🌵", "mensaje 4 ¿sí? 🌵"],
        ["mensaje 3 ¿sí? 🌵", "mensaje 2 ¿sí? 🌵", "mensaje 1 ¿sí? 🌵"],
        ["mensaje 0 ¿sí? 🌵"],
    ]
    wrong = api.client.get(
        f"/v1/instances/{instance}/messages", params={"order": "up"}, headers=api.acme
    )
    assert wrong.status_code == 422, wrong.text


def test_the_audit_shows_snippet_changes_beside_memory_text_changes(api: Api) -> None:
    instance = _instance(api, memory="Vive en Oaxaca.")
    base = f"/v1/instances/{instance}/memories"
    memory = api.client.post(base, json={"text": "Tiene un gato"}, headers=api.acme).json()
    api.client.patch(f"{base}/{memory['id']}", json={"text": "Tiene dos gatos"}, headers=api.acme)
    api.client.delete(f"{base}/{memory['id']}", headers=api.acme)
    api.client.patch(
        f"/v1/instances/{instance}", json={"memory": "Vive en Puebla."}, headers=api.acme
    )
    audit = api.client.get(f"/v1/instances/{instance}/memory/audit", headers=api.acme).json()
    assert [(a["kind"], a["before"], a["after"]) for a in audit["items"]] == [
        ("memory_text", "", "Vive en Oaxaca."),
        ("memory_added", "", "Tiene un gato"),
        ("memory_revised", "Tiene un gato", "Tiene dos gatos"),
        ("memory_forgotten", "Tiene dos gatos", ""),
        ("memory_text", "Vive en Oaxaca.", "Vive en Puebla."),
    ]
    assert {a["memory_id"] for a in audit["items"][1:4]} == {memory["id"]}
    assert "+Tiene dos gatos" in audit["items"][2]["diff"]


def test_deleting_an_instance_empties_its_index(api: Api) -> None:
    instance = _instance(api, memory="Vive en Oaxaca.")
    api.client.post(
        f"/v1/instances/{instance}/memories", json={"text": "Tiene un gato"}, headers=api.acme
    )
    assert search(api, instance, "gato")
    index = api.services.memory_index
    assert api.client.delete(f"/v1/instances/{instance}", headers=api.acme).status_code == 204
    api.services.memory.wait(api.written(), timeout=10)
    from uuid import UUID

    assert index.vectors.ids(index.generation, UUID(instance)) == set()
    assert index.memories(UUID(instance), 0, 10) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": ""}, "text"),
        ({"text": "   \n"}, "text"),
        ({"text": "x" * 10_001}, "text"),
        ({"text": "ok", "metadata": {"nested": {"a": 1}}}, "metadata"),
        ({"text": "ok", "metadata": {"list": [1, 2]}}, "metadata"),
        ({"text": "ok", "metadata": {"big": "x" * 5000}}, "metadata"),
        ({"text": "ok", "importance": 1.5}, "importance"),
        ({"text": "ok", "importance": -0.1}, "importance"),
    ],
)
def test_bad_memories_are_refused_and_write_nothing(
    api: Api, body: dict[str, object], field: str
) -> None:
    instance = _instance(api)
    before = api.written()
    response = api.client.post(f"/v1/instances/{instance}/memories", json=body, headers=api.acme)
    assert response.status_code == 422
    assert response.json()["error"]["details"]["field"] == field
    assert api.written() == before


@pytest.mark.parametrize(
    "params",
    [
        {"q": ""},
        {"q": "   "},
        {"q": "gato", "k": 0},
        {"q": "gato", "k": 101},
        {"q": "gato", "min_score": 2},
    ],
)
def test_bad_searches_are_refused(api: Api, params: dict[str, object]) -> None:
    instance = _instance(api)
    response = api.client.get(
        f"/v1/instances/{instance}/memories/search", params=params, headers=api.acme
    )
    assert response.status_code == 422
    assert "error" in response.json()


def test_another_tenant_cannot_read_search_or_change_memories(api: Api) -> None:
    instance = _instance(api, memory="Vive en Oaxaca.")
    base = f"/v1/instances/{instance}/memories"
    memory = api.client.post(base, json={"text": "Tiene un gato"}, headers=api.acme).json()
    before = api.written()
    for method, path, kwargs in [
        ("GET", base, {}),
        ("POST", base, {"json": {"text": "intruso"}}),
        ("GET", f"{base}/search", {"params": {"q": "gato"}}),
        ("GET", f"{base}/{memory['id']}", {}),
        ("PATCH", f"{base}/{memory['id']}", {"json": {"text": "x"}}),
        ("DELETE", f"{base}/{memory['id']}", {}),
        (
            "POST",
            f"/v1/instances/{instance}/messages",
            {"json": {"messages": [{"role": "user", "content": "hola"}]}},
        ),
    ]:
        response = api.client.request(method, path, headers=api.rival, **kwargs)
        assert response.status_code == 404, (method, path)
        assert "gato" not in response.text
    assert api.written() == before
