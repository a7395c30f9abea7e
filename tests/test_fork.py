"""A fork remembers: it starts with the original's memory snippets and conversation as they
stood at the fork point, as its own events pointing at the originals, and the two diverge."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tests.conftest import Api, make_character, make_instance

QUESTION = "¿Cómo se llama el loro?"


def _post(api: Api, path: str, body: dict[str, Any]) -> Any:
    response = api.client.post(path, json=body, headers=api.acme)
    assert response.status_code in (200, 201), response.text
    return response.json()


def _search(api: Api, instance_id: object) -> list[tuple[str, str]]:
    response = api.client.get(
        f"/v1/instances/{instance_id}/memories/search",
        params={"q": QUESTION, "k": 10, "consistent": "true"},
        headers=api.acme,
    )
    assert response.status_code == 200, response.text
    return [(r["source"], r["text"]) for r in response.json()["results"]]


def _conversation(api: Api, instance_id: object) -> list[tuple[str, str]]:
    path = f"/v1/instances/{instance_id}/messages"
    response = api.client.get(path, params={"limit": 500, "consistent": "true"}, headers=api.acme)
    assert response.status_code == 200, response.text
    return [(m["role"], m["content"]) for m in response.json()["items"]]


def _memories(api: Api, instance_id: object) -> list[dict[str, Any]]:
    path = f"/v1/instances/{instance_id}/memories"
    response = api.client.get(path, params={"limit": 500, "consistent": "true"}, headers=api.acme)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def _turns(user: str, reply: str) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    }


def test_a_fork_starts_with_the_memories_and_conversation_of_its_point(api: Api) -> None:
    rosa = make_instance(api, make_character(api)["id"], memory="Curandera de Ronda.")
    base = f"/v1/instances/{rosa['id']}"
    parrot = _post(api, f"{base}/memories", {"text": "Su loro se llama Perico", "importance": 0.9})
    sea = _post(api, f"{base}/memories", {"text": "Vive junto al mar, en Cádiz"})
    _post(api, f"{base}/memories", {"text": "Le dan miedo las tormentas"})
    _post(api, f"{base}/messages", _turns("¿Qué tal Perico?", "Muy parlanchín, como siempre."))
    point = api.client.get(base, headers=api.acme).json()["version"]
    found_then, said_then = _search(api, rosa["id"]), _conversation(api, rosa["id"])
    moment = datetime.now(UTC).isoformat()
    assert ("memory", "Su loro se llama Perico") in found_then

    # The original goes on: it forgets, revises, learns and talks.
    api.client.delete(f"{base}/memories/{parrot['id']}", headers=api.acme)
    api.client.patch(
        f"{base}/memories/{sea['id']}", json={"text": "Vive ahora en Madrid"}, headers=api.acme
    )
    _post(api, f"{base}/memories", {"text": "Tiene un loro nuevo, Kiwi"})
    _post(api, f"{base}/messages", _turns("¿Y Kiwi?", "Aprende rápido."))

    by_version = _post(api, f"{base}/fork", {"name": "Rosa antes", "at_version": point})
    by_time = _post(api, f"{base}/fork", {"name": "Rosa entonces", "at": moment})
    for fork in (by_version, by_time):
        assert fork["forked_from"] == {"instance_id": rosa["id"], "version": point}
        assert _search(api, fork["id"]) == found_then
        assert _conversation(api, fork["id"]) == said_then
        copied = _memories(api, fork["id"])
        assert sorted(m["text"] for m in copied) == sorted(
            ["Su loro se llama Perico", "Vive junto al mar, en Cádiz", "Le dan miedo las tormentas"]
        )
        assert {m["source"]["forked_from"]["instance_id"] for m in copied} == {rosa["id"]}
        origin = {m["text"]: m["source"]["forked_from"]["memory_id"] for m in copied}
        assert origin["Su loro se llama Perico"] == parrot["id"]
        assert next(m for m in copied if m["text"].startswith("Su loro"))["importance"] == 0.9

    # The conversation was copied as the fork's own events, each naming the original turn.
    events = api.client.get(
        f"/v1/instances/{by_version['id']}/events", params={"limit": 500}, headers=api.acme
    ).json()["items"]
    turns = [e for e in events if e["type"] in ("MessageRecorded", "ReplyRecorded")]
    assert len(turns) == len(said_then)
    assert all(e["data"]["forked_from"]["instance_id"] == rosa["id"] for e in turns)

    # From here they diverge: what one learns, the other does not know.
    _post(api, f"/v1/instances/{by_version['id']}/memories", {"text": "Adoptó un loro, Lorenzo"})
    assert ("memory", "Adoptó un loro, Lorenzo") not in _search(api, rosa["id"])
    assert ("memory", "Tiene un loro nuevo, Kiwi") not in _search(api, by_version["id"])
    assert ("memory", "Tiene un loro nuevo, Kiwi") in _search(api, rosa["id"])
    assert ("memory", "Adoptó un loro, Lorenzo") in _search(api, by_version["id"])


def test_a_fork_now_copies_everything_and_bad_points_write_nothing(api: Api) -> None:
    rosa = make_instance(api, make_character(api)["id"])
    base = f"/v1/instances/{rosa['id']}"
    _post(api, f"{base}/memories", {"text": "Su loro se llama Perico"})
    _post(api, f"{base}/messages", _turns("Hola", "Buenas"))
    version = api.client.get(base, headers=api.acme).json()["version"]

    written = api.written()
    for body, status in [
        ({"name": "Futura", "at_version": version + 1}, 422),
        ({"name": "Ancestral", "at": "1999-01-01T00:00:00"}, 404),
        ({"name": "Ambas", "at_version": 1, "at": "2030-01-01T00:00:00Z"}, 422),
    ]:
        response = api.client.post(f"{base}/fork", json=body, headers=api.acme)
        assert response.status_code == status, response.text
        assert set(response.json()["error"]) >= {"code", "message"}
    assert api.written() == written

    now = _post(api, f"{base}/fork", {"name": "Rosa hoy"})
    assert now["forked_from"] == {"instance_id": rosa["id"], "version": version}
    assert [m["text"] for m in _memories(api, now["id"])] == ["Su loro se llama Perico"]
    assert _conversation(api, now["id"]) == [("user", "Hola"), ("assistant", "Buenas")]


def test_a_fork_s_snippets_and_turns_keep_when_they_happened_and_who_said_them(api: Api) -> None:
    rosa = make_instance(api, make_character(api)["id"])
    base = f"/v1/instances/{rosa['id']}"
    told = {"text": "Fui al mercado de Triana", "occurred_at": "2023-05-08T13:56:00"}
    _post(api, f"{base}/memories", {**told, "speaker": "José Núñez"})
    _post(api, f"{base}/memories", {"text": "Su loro se llama Perico"})
    turn = {"role": "user", "content": "¿Y Perico?", "timestamp": "2024-03-01T18:30:00Z"}
    _post(api, f"{base}/messages", {"messages": [{**turn, "name": "Lucía"}]})

    fork = _post(api, f"{base}/fork", {"name": "Rosa bis"})

    def snippets(instance_id: object) -> set[tuple[str, str, str | None]]:
        return {(m["text"], m["occurred_at"], m["speaker"]) for m in _memories(api, instance_id)}

    def said(instance_id: object) -> list[dict[str, Any]]:
        path = f"/v1/instances/{instance_id}/messages"
        items: list[dict[str, Any]] = api.client.get(path, headers=api.acme).json()["items"]
        return [{k: m[k] for k in ("content", "name", "timestamp")} for m in items]

    def found(instance_id: object) -> list[tuple[str, str, str | None]]:
        response = api.client.get(
            f"/v1/instances/{instance_id}/memories/search",
            params={"q": "Triana Perico", "consistent": "true", "until": "2024-12-31"},
            headers=api.acme,
        )
        return [(r["text"], r["occurred_at"], r["speaker"]) for r in response.json()["results"]]

    assert ("Fui al mercado de Triana", "2023-05-08T13:56:00Z", "José Núñez") in snippets(
        fork["id"]
    )
    assert snippets(fork["id"]) == snippets(rosa["id"])
    assert (
        said(fork["id"])
        == said(rosa["id"])
        == [{"content": "¿Y Perico?", "name": "Lucía", "timestamp": "2024-03-01T18:30:00Z"}]
    )
    assert found(fork["id"]) == found(rosa["id"])
    assert {text for text, _, _ in found(fork["id"])} == {"Fui al mercado de Triana", "¿Y Perico?"}
