"""Forgetting means forgetting: `DELETE …/memories/{id}?recall=messages` forgets the memory and
takes out of recall the messages it was formed from and those that state it — search, a rebuilt
index, the prompt, memory formation, a fork and an imported copy all leave them out — while the
conversation and its history keep every message as it was said. Without it, a forget is what it
always was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from alma.api.services import rebuild_memory_index
from alma.settings import Settings
from tests.cli import alma
from tests.conftest import Api, make_character, make_instance, running_api
from tests.openai_stub import OpenAIStub, Reply
from tests.test_formation import _asked, _forming, _settle, _turn

CASES = Path(__file__).parent / "data" / "forget" / "cases.json"
TIZON = "Mi gato negro Tizón"
CANELO = "Tengo también un perro marrón que se llama Canelo."
SUMMARY = "Summarise the stretch"


def _cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads(CASES.read_text(encoding="utf-8"))["cases"]
    return cases


def _instance(api: Api, name: str = "Rosa") -> str:
    return str(make_instance(api, make_character(api)["id"], name=name)["id"])


def _import(api: Api, instance: str, messages: list[dict[str, Any]]) -> list[str]:
    body = {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
    response = api.client.post(f"/v1/instances/{instance}/messages", json=body, headers=api.acme)
    assert response.status_code == 201, response.text
    ids: list[str] = response.json()["ids"]
    return ids


def _remember(api: Api, instance: str, text: str) -> str:
    path = f"/v1/instances/{instance}/memories"
    response = api.client.post(path, json={"text": text}, headers=api.acme)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _forget(api: Api, instance: str, memory: str, **params: str) -> Any:
    path = f"/v1/instances/{instance}/memories/{memory}"
    return api.client.delete(path, params=params, headers=api.acme)


def _found(api: Api, instance: str, q: str) -> list[str]:
    response = api.client.get(
        f"/v1/instances/{instance}/memories/search",
        params={"q": q, "k": 100, "consistent": "true"},
        headers=api.acme,
    )
    assert response.status_code == 200, response.text
    return [hit["text"] for hit in response.json()["results"]]


def _conversation(api: Api, instance: str) -> list[tuple[str, str, str]]:
    path = f"/v1/instances/{instance}/messages"
    response = api.client.get(path, params={"limit": 500}, headers=api.acme)
    assert response.status_code == 200, response.text
    return [(m["id"], m["role"], m["content"]) for m in response.json()["items"]]


def _withdrawals(api: Api, instance: str) -> list[dict[str, Any]]:
    path = f"/v1/instances/{instance}/events"
    params = {"type": "MessagesWithdrawnFromRecall", "limit": 500}
    response = api.client.get(path, params=params, headers=api.acme)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def _tizon(api: Api) -> tuple[str, list[dict[str, Any]], list[str], str]:
    """An instance whose conversation tells of the black cat Tizón among other things, and the
    memory "Mi gato negro Tizón": (instance, messages, their ids, memory)."""
    instance = _instance(api)
    [case] = [c for c in _cases() if c["id"] == "es-tizon"]
    messages = case["messages"]
    ids = _import(api, instance, messages)
    return instance, messages, ids, _remember(api, instance, TIZON)


def _said(messages: list[dict[str, Any]], ids: list[str], label: str) -> dict[str, str]:
    return {i: m["content"] for i, m in zip(ids, messages, strict=True) if m["label"] == label}


def test_forgetting_with_messages_takes_what_states_it_out_of_recall_and_keeps_the_conversation(
    api: Api,
) -> None:
    instance, messages, ids, memory = _tizon(api)
    stating, other = _said(messages, ids, "states"), _said(messages, ids, "other")
    said = _conversation(api, instance)
    assert set(stating.values()) <= set(_found(api, instance, TIZON))

    response = _forget(api, instance, memory, recall="messages")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["memory_id"] == memory
    assert [m["id"] for m in body["withdrawn"]] == list(stating)  # in the order said
    assert [(m["role"], m["content"], m["reason"]) for m in body["withdrawn"]] == [
        ("user", text, "states") for text in stating.values()
    ]
    assert all(m["words"] >= 0.5 and m["similarity"] >= 0.5 for m in body["withdrawn"])

    def recalled() -> set[str]:
        found = set()
        for question in (TIZON, "¿Cómo se llama mi gato negro?", "Tizón"):
            found |= set(_found(api, instance, question))
        return found

    assert not recalled() & {TIZON, *stating.values()}
    for question, answer in [
        ("¿Cómo se llama mi perro?", CANELO),
        ("¿A qué se dedica Lucía?", "Mi hermana Lucía es enfermera en el hospital de Triana."),
        ("el gato de la vecina", "El gato de mi vecina es blanco y se llama Nieve."),
    ]:
        assert answer in _found(api, instance, question), question
    assert set(other.values()) <= set(_found(api, instance, "gato perro Lucía lluvia negro"))
    # The conversation, its history and the audit keep everything as it was said.
    assert _conversation(api, instance) == said
    [event] = _withdrawals(api, instance)
    assert event["data"]["message_ids"] == list(stating)
    assert event["data"]["memory_id"] == memory
    audit = api.client.get(f"/v1/instances/{instance}/memory/audit", headers=api.acme).json()
    assert audit["items"][-1]["kind"] == "memory_forgotten"
    assert audit["items"][-1]["before"] == TIZON
    assert _forget(api, instance, memory, recall="messages").status_code == 404

    # A rebuilt index keeps them out.
    rebuild_memory_index(api.services)
    assert not recalled() & {TIZON, *stating.values()}
    assert CANELO in _found(api, instance, "perro")


def test_a_forget_takes_no_message_that_says_something_else(api: Api) -> None:
    """Every case of tests/data/forget, Spanish, English and mixed, with its memory written in
    full and in shorter ways: what a forget takes out of recall is what states the memory (or
    speaks of it), never a near miss; in full, it takes most of what states it."""
    stated = 0
    for case in _cases():
        for n, text in enumerate([case["memory"], *case["also"]]):
            instance = _instance(api, name=f"{case['id']} {n}")
            ids = _import(api, instance, case["messages"])
            labels = {i: m["label"] for i, m in zip(ids, case["messages"], strict=True)}
            response = _forget(api, instance, _remember(api, instance, text), recall="messages")
            assert response.status_code == 200, response.text
            taken = [labels[message["id"]] for message in response.json()["withdrawn"]]
            assert "other" not in taken, (text, response.json()["withdrawn"])
            stated += taken.count("states") if n == 0 else 0
    stating = sum(m["label"] == "states" for c in _cases() for m in c["messages"])
    assert stated >= 13, f"{stated} of {stating} stating messages"


def test_a_plain_forget_still_forgets_only_the_memory(api: Api) -> None:
    instance, messages, ids, memory = _tizon(api)
    stating = _said(messages, ids, "states")

    response = _forget(api, instance, memory)

    assert (response.status_code, response.content) == (204, b"")
    found = _found(api, instance, TIZON)
    assert TIZON not in found
    assert set(stating.values()) <= set(found)
    assert _withdrawals(api, instance) == []
    again = _remember(api, instance, TIZON)
    assert _forget(api, instance, again, recall="memory").status_code == 204
    assert set(stating.values()) <= set(_found(api, instance, TIZON))


@pytest.mark.parametrize(
    "params", [{"recall": "everything"}, {"recall": ""}, {"recall": "Messages"}]
)
def test_a_bad_recall_is_refused_and_writes_nothing(api: Api, params: dict[str, str]) -> None:
    instance, _, _, memory = _tizon(api)
    written = api.written()

    response = _forget(api, instance, memory, **params)

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["details"][0]["loc"] == ["query", "recall"]
    assert api.written() == written
    path = f"/v1/instances/{instance}/memories/{memory}"
    assert api.client.get(path, headers=api.acme).status_code == 200


def test_another_tenant_cannot_forget_with_messages(api: Api) -> None:
    instance, _, _, memory = _tizon(api)
    written = api.written()
    path = f"/v1/instances/{instance}/memories/{memory}"

    response = api.client.delete(path, params={"recall": "messages"}, headers=api.rival)

    assert response.status_code == 404, response.text
    assert api.written() == written
    assert TIZON in _found(api, instance, TIZON)


def test_a_fork_and_an_imported_copy_keep_what_was_withdrawn(
    api: Api, settings: Settings, tmp_path: Path
) -> None:
    instance, messages, ids, memory = _tizon(api)
    stating = set(_said(messages, ids, "states").values())
    base = f"/v1/instances/{instance}"
    before = api.client.get(base, headers=api.acme).json()["version"]
    assert _forget(api, instance, memory, recall="messages").status_code == 200

    now = api.client.post(f"{base}/fork", json={"name": "Rosa bis"}, headers=api.acme).json()
    then = api.client.post(
        f"{base}/fork", json={"name": "Rosa antes", "at_version": before}, headers=api.acme
    ).json()

    assert not stating & set(_found(api, now["id"], TIZON))
    assert [c for _, _, c in _conversation(api, now["id"])] == [m["content"] for m in messages]
    [copied] = _withdrawals(api, now["id"])
    assert copied["data"]["forked_from"] == {"instance_id": instance}
    assert copied["data"]["memory_id"] == memory
    fork_ids = {c: i for i, _, c in _conversation(api, now["id"])}
    assert sorted(copied["data"]["message_ids"]) == sorted(fork_ids[c] for c in stating)
    # A fork from before the forget still recalls the messages.
    assert stating <= set(_found(api, then["id"], TIZON))

    exported = tmp_path / "acme.jsonl"
    done = alma(api.services.settings, "export", "--tenant", "acme", "--output", str(exported))
    assert done.returncode == 0, done.stderr
    target = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path / "target",
        _env_file=None,
        memory_formation=False,
        read_model_wait_s=30.0,
        consistency_wait_s=60.0,
    )
    imported = alma(target, "import", str(exported))
    assert imported.returncode == 0, imported.stderr
    with running_api(target) as copy:
        assert not stating & set(_found(copy, instance, TIZON))
        assert not stating & set(_found(copy, now["id"], TIZON))
        assert [c for _, _, c in _conversation(copy, instance)] == [m["content"] for m in messages]
        assert CANELO in _found(copy, instance, "perro")


def test_a_withdrawn_message_leaves_the_prompts_recent_turns(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    instance, messages, ids, memory = _tizon(chat_api)
    assert _forget(chat_api, instance, memory, recall="messages").status_code == 200
    openai_stub.script(Reply("No sé de qué gato me hablas."))

    response = chat_api.client.post(
        f"/v1/instances/{instance}/chat",
        json={"message": "¿Te acuerdas de mi gato?"},
        headers=chat_api.acme,
    )

    assert response.status_code == 200, response.text
    prompt = "\n".join(m["content"] for m in openai_stub.requests[-1]["messages"])
    for text in _said(messages, ids, "states").values():
        assert text not in prompt, text
    for text in _said(messages, ids, "other").values():
        assert text in prompt, text  # the recent turns around them stay
    assert len(_conversation(chat_api, instance)) == len(messages) + 2


def test_memory_formation_lets_go_of_withdrawn_messages(
    settings: Settings, openai_stub: OpenAIStub
) -> None:
    with running_api(_forming(settings, openai_stub, summary_every=4)) as api:
        instance = _instance(api)
        fact = "El usuario tiene un gato negro llamado Tizón"
        told = "Te presento a mi gato negro, Tizón: se ha pasado la tarde en la ventana."
        turn = _turn(api, openai_stub, instance, told, [{"op": "add", "text": fact}])
        formed = api.client.get(f"/v1/instances/{instance}/memories", headers=api.acme).json()
        [memory] = formed["items"]
        assert memory["source"] == {
            "messages": [turn["turn"]["message_id"], turn["turn"]["reply_id"]]
        }

        response = _forget(api, instance, memory["id"], recall="messages")

        assert response.status_code == 200, response.text
        [withdrawn] = response.json()["withdrawn"]
        assert (withdrawn["id"], withdrawn["reason"]) == (turn["turn"]["message_id"], "source")
        _settle(api)
        _turn(api, openai_stub, instance, "Mañana vamos al río", [])
        summary = Reply("Hablaron de ir al río.")
        _turn(api, openai_stub, instance, "Llevaré pan", [], then=(summary,))
        [asked] = _asked(openai_stub, SUMMARY)
        assert "Mañana vamos al río" in asked and "Mm-hm." in asked
        assert "Tizón" not in asked
