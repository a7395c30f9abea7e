"""What a past reply was built from, read back at any time (`GET .../messages/{message_id}`): the
memories its prompt recalled as they were then, their scores and what became of them since, the
lore entries as they were then, the model and the tokens; on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from tests.conftest import Api, make_character, make_instance
from tests.openai_stub import OpenAIStub, Reply

LUCIA = "Su hermana Lucía trabaja de enfermera en el hospital de Triana"
MOLE = "Le encanta el mole negro de su abuela"
TEXT = "Vive en Oaxaca con su gato Tizón."


def _get(api: Api, instance_id: str, message_id: str, headers: dict[str, str] | None = None) -> Any:
    return api.client.get(
        f"/v1/instances/{instance_id}/messages/{message_id}", headers=headers or api.acme
    )


def _chat(api: Api, stub: OpenAIStub, instance_id: str, message: str, reply: Reply) -> Any:
    """One chat turn answered with `reply`: the chat's answer."""
    stub.script(reply)
    return api.client.post(
        f"/v1/instances/{instance_id}/chat", json={"message": message}, headers=api.acme
    ).json()


def _world(api: Api) -> tuple[str, dict[str, str], dict[str, Any]]:
    """An instance with a memory text, two memories and a lorebook whose entry is always in."""
    character = make_character(api, name="Doña Rosa 🌿")
    instance_id = str(make_instance(api, character["id"], name="Rosa", memory=TEXT)["id"])
    memories = {}
    for text in (LUCIA, MOLE):
        made = api.client.post(
            f"/v1/instances/{instance_id}/memories", json={"text": text}, headers=api.acme
        )
        memories[text] = made.json()["id"]
    book = api.client.post(
        "/v1/lorebooks",
        json={
            "name": "La sierra",
            "entries": [
                {"keys": [], "constant": True, "comment": "río", "content": "El río Atoyac"}
            ],
        },
        headers=api.acme,
    ).json()
    attached = api.client.put(
        f"/v1/instances/{instance_id}/lorebooks",
        json={"lorebook_ids": [book["id"]]},
        headers=api.acme,
    )
    assert attached.status_code == 200, attached.text
    return instance_id, memories, book


def test_a_past_reply_says_what_it_was_built_from_as_it_was_then(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    instance_id, memories, book = _world(chat_api)
    turn = _chat(
        chat_api,
        openai_stub,
        instance_id,
        "¿A qué se dedica mi hermana Lucía?",
        Reply("¡Ay, mi Lucía!", prompt_tokens=321, completion_tokens=7),
    )
    used = {m["id"]: m for m in turn["memories_used"]}
    assert memories[LUCIA] in used and memories[MOLE] in used

    # Since then: one memory revised, one forgotten, the memory text rewritten, the entry edited.
    url = f"/v1/instances/{instance_id}"
    revised = chat_api.client.patch(
        f"{url}/memories/{memories[LUCIA]}",
        json={"text": "Lucía ya es jefa de enfermeras"},
        headers=chat_api.acme,
    )
    assert revised.status_code == 200, revised.text
    forgotten = chat_api.client.delete(f"{url}/memories/{memories[MOLE]}", headers=chat_api.acme)
    assert forgotten.status_code == 204, forgotten.text
    rewritten = chat_api.client.patch(
        url, json={"memory": "Se mudó a Sevilla."}, headers=chat_api.acme
    )
    assert rewritten.status_code == 200, rewritten.text
    edited = chat_api.client.patch(
        f"/v1/lorebooks/{book['id']}/entries/0",
        json={"content": "El río Guadalquivir"},
        headers=chat_api.acme,
    )
    assert edited.status_code == 200, edited.text

    answer = _get(chat_api, instance_id, turn["turn"]["reply_id"])
    assert answer.status_code == 200, answer.text
    reply = answer.json()
    assert (reply["role"], reply["content"], reply["name"]) == (
        "assistant",
        "¡Ay, mi Lucía!",
        "Rosa",
    )
    built = reply["built_from"]
    assert built["model"] == "gpt-3.5-turbo"
    assert built["usage"] == {"prompt_tokens": 321, "completion_tokens": 7}
    assert built["interrupted"] is False
    assert [m["id"] for m in built["memories_used"]] == list(used)
    shown = {m["id"]: m for m in built["memories_used"]}
    for memory_id, then in used.items():
        assert shown[memory_id]["text"] == then["text"]  # as the prompt had it
        assert shown[memory_id]["score"] == then["score"]
        assert shown[memory_id]["source"] == then["source"]
    lucia, mole = shown[memories[LUCIA]], shown[memories[MOLE]]
    assert (lucia["text"], lucia["now"], lucia["text_now"]) == (
        LUCIA,
        "revised",
        "Lucía ya es jefa de enfermeras",
    )
    assert lucia["occurred_at"] is not None
    assert (mole["now"], mole["text_now"]) == ("forgotten", None)
    [text] = [m for m in built["memories_used"] if m["source"] == "memory_text"]
    assert (text["text"], text["now"], text["text_now"]) == (TEXT, "revised", "Se mudó a Sevilla.")
    [lore] = built["lore_used"]
    assert lore == {
        "id": f"{book['id']}:0",
        "lorebook_id": book["id"],
        "entry_id": 0,
        "lorebook_name": "La sierra",
        "comment": "río",
        "content": "El río Atoyac",  # as it was then
    }

    # The user's message is there too, built from nothing.
    said = _get(chat_api, instance_id, turn["turn"]["message_id"]).json()
    assert (said["role"], said["content"], said["built_from"]) == (
        "user",
        "¿A qué se dedica mi hermana Lucía?",
        None,
    )


def test_a_reply_recorded_before_scores_were_kept_says_it_has_none(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    instance_id, memories, _ = _world(chat_api)
    turn = _chat(chat_api, openai_stub, instance_id, "¿Y Lucía?", Reply("Claro."))
    # A reply as alma recorded them before: the same event without its scores.
    app = chat_api.services.app
    instance = app.repository.get(UUID(instance_id))
    actor = app.reply("acme", UUID(instance_id), UUID(turn["turn"]["reply_id"])).actor
    instance.record_reply(
        UUID(int=7), UUID(turn["turn"]["message_id"]), "Antes.", "gpt-3.5-turbo", 10, 2, 5,
        [memories[LUCIA]], "0" * 64, False, actor, name="Rosa",
    )  # fmt: skip
    app.save(instance)

    old = _get(chat_api, instance_id, str(UUID(int=7))).json()["built_from"]
    [memory] = old["memories_used"]
    assert (memory["text"], memory["score"], memory["now"]) == (LUCIA, None, "unchanged")
    assert old["lore_used"] == []


def test_a_message_that_is_not_there_is_not_found_and_a_bad_id_refused(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    instance_id, _, _ = _world(chat_api)
    turn = _chat(chat_api, openai_stub, instance_id, "Hola", Reply("Claro."))
    reply_id = turn["turn"]["reply_id"]
    other = make_instance(chat_api, make_character(chat_api)["id"], name="Otra")
    before = chat_api.written()

    missing = _get(chat_api, instance_id, str(UUID(int=1)))
    assert missing.status_code == 404, missing.text
    assert missing.json()["error"]["code"] == "not_found"
    assert _get(chat_api, instance_id, reply_id, chat_api.rival).status_code == 404
    assert _get(chat_api, str(other["id"]), reply_id).status_code == 404  # not that instance's
    malformed = _get(chat_api, instance_id, "not-an-id")
    assert malformed.status_code == 422, malformed.text
    assert malformed.json()["error"]["code"] == "invalid_request"
    assert chat_api.written() == before


def test_a_fork_s_copy_of_a_reply_says_what_the_original_s_prompt_held(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    instance_id, _, _ = _world(chat_api)
    turn = _chat(
        chat_api,
        openai_stub,
        instance_id,
        "¿A qué se dedica mi hermana Lucía?",
        Reply("¡Ay, mi Lucía!"),
    )
    original = _get(chat_api, instance_id, turn["turn"]["reply_id"]).json()["built_from"]
    fork = chat_api.client.post(
        f"/v1/instances/{instance_id}/fork", json={"name": "Rosa joven"}, headers=chat_api.acme
    ).json()
    listed = chat_api.client.get(
        f"/v1/instances/{fork['id']}/messages", params={"order": "newest", "limit": 1},
        headers=chat_api.acme,
    ).json()["items"]  # fmt: skip
    [copy] = listed
    built = _get(chat_api, fork["id"], copy["id"]).json()["built_from"]
    assert [(m["text"], m["source"], m["score"]) for m in built["memories_used"]] == [
        (m["text"], m["source"], m["score"]) for m in original["memories_used"]
    ]
    assert {m["now"] for m in built["memories_used"]} == {"unchanged"}
