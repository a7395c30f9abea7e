"""Chat with an instance through a model server we control: the prompt alma builds, the events
it records, streaming, failures, and the OpenAI-compatible endpoints used by the real SDK."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from alma.settings import Settings
from tests.cli import create_key, free_port, running, wait_for_health
from tests.conftest import Api, make_character, make_instance, search
from tests.openai_stub import Fail, OpenAIStub, Reply


def _world(api: Api) -> tuple[str, str]:
    character = make_character(
        api,
        name="Doña Rosa",
        description="Curandera de la sierra que habla con refranes",
        personality="cálida, pícara",
    )
    instance = make_instance(
        api, character["id"], name="Rosa", memory="Vive en Oaxaca con su gato Tizón."
    )
    instance_id = str(instance["id"])
    for text in [
        "Su hermana Lucía trabaja de enfermera en el hospital de Triana",
        "Le encanta el mole negro de su abuela",
    ]:
        api.client.post(
            f"/v1/instances/{instance_id}/memories", json={"text": text}, headers=api.acme
        )
    return str(character["id"]), instance_id


def _chat(api: Api, instance_id: str, message: str, **body: Any) -> Any:
    return api.client.post(
        f"/v1/instances/{instance_id}/chat", json={"message": message, **body}, headers=api.acme
    )


def _events(api: Api, instance_id: str, kind: str) -> list[dict[str, Any]]:
    response = api.client.get(
        f"/v1/instances/{instance_id}/events",
        params={"type": kind, "limit": 500},
        headers=api.acme,
    )
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_a_reply_is_personal_and_the_prompt_carries_persona_memory_and_recall(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    openai_stub.script(
        Reply("¡Ay, mi Lucía! Enfermera, y de las buenas.", prompt_tokens=300, completion_tokens=12)
    )
    chat_api.services.memory.wait(chat_api.written(), 30)

    response = _chat(chat_api, instance, "¿A qué se dedica mi hermana Lucía?", max_tokens=100)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["reply"] == "¡Ay, mi Lucía! Enfermera, y de las buenas."
    assert body["usage"] == {"prompt_tokens": 300, "completion_tokens": 12}
    assert body["model"] == "gpt-3.5-turbo"
    assert body["memories_used"][0]["text"].startswith("Su hermana Lucía")
    [request] = openai_stub.requests
    assert request["model"] == "gpt-3.5-turbo"
    assert request["max_tokens"] == 100
    system, *_, recalled, last = request["messages"]
    assert system["role"] == "system"
    for expected in [
        "Rosa",
        "Doña Rosa",
        "Curandera de la sierra",
        "cálida, pícara",
        "Vive en Oaxaca con su gato Tizón.",
    ]:
        assert expected in system["content"], expected
    # What is recalled for the message comes just before it.
    assert recalled["role"] == "system"
    assert "Su hermana Lucía trabaja de enfermera" in recalled["content"]
    assert last == {"role": "user", "content": "¿A qué se dedica mi hermana Lucía?"}


def test_every_turn_is_recorded_with_what_explains_the_reply(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    openai_stub.script(Reply("Claro que me acuerdo."))
    body = _chat(chat_api, instance, "¿Te acuerdas de mí? 🌮").json()

    [user] = _events(chat_api, instance, "MessageRecorded")
    [reply] = _events(chat_api, instance, "ReplyRecorded")
    assert (user["data"]["role"], user["data"]["content"]) == ("user", "¿Te acuerdas de mí? 🌮")
    data = reply["data"]
    assert data["content"] == "Claro que me acuerdo."
    assert data["in_reply_to"] == user["data"]["message_id"] == body["turn"]["message_id"]
    assert data["model"] == "gpt-3.5-turbo"
    assert data["memory_ids"] == [m["id"] for m in body["memories_used"]]
    assert len(data["prompt_sha256"]) == 64
    assert reply["version"] == body["turn"]["version"]
    conversation = chat_api.client.get(f"/v1/instances/{instance}/messages", headers=chat_api.acme)
    assert [(m["role"], m["content"]) for m in conversation.json()["items"]] == [
        ("user", "¿Te acuerdas de mí? 🌮"),
        ("assistant", "Claro que me acuerdo."),
    ]


def test_the_conversation_so_far_is_in_the_next_prompt(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    openai_stub.script(Reply("Me llamo Rosa."), Reply("Ya te lo dije: Rosa."))
    _chat(chat_api, instance, "¿Cómo te llamas?")
    chat_api.services.conversation.wait(chat_api.written(), 30)
    _chat(chat_api, instance, "¿Y otra vez?")
    second = [m for m in openai_stub.requests[1]["messages"] if m["role"] != "system"]
    assert second[-3:] == [
        {"role": "user", "content": "¿Cómo te llamas?"},
        {"role": "assistant", "content": "Me llamo Rosa."},
        {"role": "user", "content": "¿Y otra vez?"},
    ]


def test_a_forgotten_memory_never_reaches_the_prompt(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    base = f"/v1/instances/{instance}/memories"
    secret = chat_api.client.post(
        base, json={"text": "La clave de la caja fuerte es 4711"}, headers=chat_api.acme
    ).json()
    chat_api.client.delete(f"{base}/{secret['id']}", headers=chat_api.acme)
    _chat(chat_api, instance, "¿Cuál es la clave de la caja fuerte?")
    assert "4711" not in json.dumps(openai_stub.requests[-1], ensure_ascii=False)


def test_a_failing_model_answers_502_and_the_message_is_still_recorded(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    openai_stub.script(Fail(500), Fail(500))
    response = _chat(chat_api, instance, "¿Estás ahí?")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "model_unavailable"
    assert len(openai_stub.requests) == 2  # one retry, as configured
    [user] = _events(chat_api, instance, "MessageRecorded")
    [failure] = _events(chat_api, instance, "ReplyFailed")
    assert user["data"]["content"] == "¿Estás ahí?"
    assert failure["data"]["in_reply_to"] == user["data"]["message_id"]
    assert failure["data"]["status"] == 502
    assert "sk-test" not in json.dumps(failure)
    assert _events(chat_api, instance, "ReplyRecorded") == []


def test_a_model_slower_than_the_timeout_answers_504(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    openai_stub.script(Reply("tarde", delay_s=3))
    response = _chat(chat_api, instance, "¿Hola?")
    assert response.status_code == 504
    assert [f["data"]["status"] for f in _events(chat_api, instance, "ReplyFailed")] == [504]


def test_streaming_sends_tokens_then_the_turn_and_records_the_whole_reply(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    openai_stub.script(Reply("Había una vez un gato llamado Tizón."))
    with chat_api.client.stream(
        "POST",
        f"/v1/instances/{instance}/chat",
        json={"message": "Cuéntame un cuento", "stream": True},
        headers=chat_api.acme,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = [f for f in response.read().decode().split("\n\n") if f]
    tokens = [json.loads(f.removeprefix("data: "))["token"] for f in frames[:-1]]
    assert len(tokens) > 1
    assert "".join(tokens) == "Había una vez un gato llamado Tizón."
    event, data = frames[-1].split("\n", 1)
    assert event == "event: turn"
    assert json.loads(data.removeprefix("data: "))["reply"] == "".join(tokens)
    [reply] = _events(chat_api, instance, "ReplyRecorded")
    assert (reply["data"]["content"], reply["data"]["interrupted"]) == ("".join(tokens), False)


def test_a_stream_the_model_fails_ends_with_an_error_event_and_records_the_failure(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    openai_stub.script(Fail(500), Fail(500))
    with chat_api.client.stream(
        "POST",
        f"/v1/instances/{instance}/chat",
        json={"message": "¿Estás ahí?", "stream": True},
        headers=chat_api.acme,
    ) as response:
        assert response.status_code == 200  # the status line went out before the model failed
        frames = [f for f in response.read().decode().split("\n\n") if f]
    event, data = frames[-1].split("\n", 1)
    assert event == "event: error"
    error = json.loads(data.removeprefix("data: "))["error"]
    assert (error["code"], error["details"]) == ("model_unavailable", None)
    assert error["message"] and "sk-test" not in error["message"]
    [user] = _events(chat_api, instance, "MessageRecorded")
    [failure] = _events(chat_api, instance, "ReplyFailed")
    assert failure["data"]["in_reply_to"] == user["data"]["message_id"]
    assert failure["data"]["status"] == 502


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"message": ""}, 422),
        ({"message": "   "}, 422),
        ({"message": "hola", "temperature": 2.5}, 422),
        ({"message": "hola", "max_tokens": 0}, 422),
        ({"message": "hola", "max_tokens": 100_000}, 422),
        ({"message": "🌮" * 30_000}, 413),  # under 100,000 characters, over 16k tokens
    ],
)
def test_bad_chat_requests_call_no_model_and_write_nothing(
    chat_api: Api, openai_stub: OpenAIStub, body: dict[str, Any], status: int
) -> None:
    _, instance = _world(chat_api)
    before = chat_api.written()
    response = chat_api.client.post(
        f"/v1/instances/{instance}/chat", json=body, headers=chat_api.acme
    )
    assert response.status_code == status, response.text
    if status == 413:
        assert response.json()["error"]["details"]["limit_tokens"] > 0
    assert openai_stub.requests == []
    assert chat_api.written() == before


def test_two_clients_chatting_at_once_lose_no_message(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    openai_stub.default = Reply("Sí.")

    def talk(client: int) -> None:
        for n in range(4):
            assert _chat(chat_api, instance, f"cliente {client} mensaje {n}").status_code == 200

    threads = [threading.Thread(target=talk, args=(c,)) for c in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    users = _events(chat_api, instance, "MessageRecorded")
    replies = _events(chat_api, instance, "ReplyRecorded")
    assert sorted(u["data"]["content"] for u in users) == sorted(
        f"cliente {c} mensaje {n}" for c in range(2) for n in range(4)
    )
    asked_at = {u["data"]["message_id"]: u["version"] for u in users}
    assert len(replies) == 8
    assert {r["data"]["in_reply_to"] for r in replies} == set(asked_at)
    assert all(r["version"] > asked_at[r["data"]["in_reply_to"]] for r in replies)


def _sdk(api: Api, headers: dict[str, str]) -> openai.OpenAI:
    key = headers["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(
        api_key=key, base_url="http://testserver/v1", http_client=api.client, max_retries=0
    )


def test_the_openai_sdk_chats_with_an_instance_named_as_the_model(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    sdk = _sdk(chat_api, chat_api.acme)
    assert instance in [m.id for m in sdk.models.list().data]

    openai_stub.script(Reply("¡Hola, corazón!"))
    completion = sdk.chat.completions.create(
        model=instance, messages=[{"role": "user", "content": "Hola, Rosa"}]
    )
    assert completion.choices[0].message.content == "¡Hola, corazón!"
    assert completion.usage is not None and completion.usage.completion_tokens > 0

    openai_stub.script(Reply("Aquí sigo, mi niña."))
    stream = sdk.chat.completions.create(
        model="Doña Rosa/Rosa",
        messages=[
            {"role": "user", "content": "Hola, Rosa"},
            {"role": "assistant", "content": "¡Hola, corazón!"},
            {"role": "user", "content": "¿Sigues ahí?"},
        ],
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Aquí sigo, mi niña."
    said = [m for m in openai_stub.requests[-1]["messages"] if m["role"] != "system"]
    assert said[-3:-1] == [
        {"role": "user", "content": "Hola, Rosa"},
        {"role": "assistant", "content": "¡Hola, corazón!"},
    ]
    replies = _events(chat_api, instance, "ReplyRecorded")
    assert [r["data"]["content"] for r in replies] == ["¡Hola, corazón!", "Aquí sigo, mi niña."]


def test_the_user_s_name_in_an_openai_request_is_who_said_the_message(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    sdk = _sdk(chat_api, chat_api.acme)
    openai_stub.script(Reply("¡Qué bien, Caroline!"))
    sdk.chat.completions.create(
        model=instance,
        messages=[{"role": "user", "content": "Ayer fui al grupo de apoyo", "name": "Caroline"}],
    )
    said = chat_api.client.get(f"/v1/instances/{instance}/messages", headers=chat_api.acme)
    assert [(m["content"], m["name"]) for m in said.json()["items"]] == [
        ("Ayer fui al grupo de apoyo", "Caroline"),
        ("¡Qué bien, Caroline!", "Rosa"),
    ]
    hits = search(chat_api, instance, "grupo de apoyo")
    assert [h["speaker"] for h in hits if h["text"] == "Ayer fui al grupo de apoyo"] == ["Caroline"]

    before = chat_api.written()
    for messages in [
        [{"role": "user", "content": "Hola", "name": "n" * 201}],
        [
            {"role": "user", "content": "Hola", "name": " "},
            {"role": "assistant", "content": "Hola, corazón"},
            {"role": "user", "content": "¿Qué tal?"},
        ],
    ]:
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            sdk.chat.completions.create(model=instance, messages=messages)
        assert refused.value.status_code == 422
        assert refused.value.param == "name"
    assert chat_api.written() == before


def test_openai_clients_get_openai_shaped_errors(chat_api: Api, openai_stub: OpenAIStub) -> None:
    _, instance = _world(chat_api)
    sdk = _sdk(chat_api, chat_api.acme)
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="nadie", messages=[{"role": "user", "content": "hola"}])
    with pytest.raises(openai.NotFoundError):
        _sdk(chat_api, chat_api.rival).chat.completions.create(
            model=instance, messages=[{"role": "user", "content": "hola"}]
        )
    response = chat_api.client.post(
        "/v1/chat/completions", json={"model": instance}, headers=chat_api.acme
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "messages")
    assert openai_stub.requests == []
    assert _sdk(chat_api, chat_api.rival).models.list().data == []


def test_the_openai_turn_checks_the_model_before_the_messages(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    answered = {"role": "assistant", "content": "¡Hola, corazón!"}
    unknown = chat_api.client.post(
        "/v1/chat/completions",
        json={"model": "nadie", "messages": [answered]},
        headers=chat_api.acme,
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "not_found_error"
    refused = chat_api.client.post(
        "/v1/chat/completions",
        json={"model": instance, "messages": [answered]},
        headers=chat_api.acme,
    )
    assert refused.status_code == 422
    assert refused.json()["error"] == {
        "code": "invalid_request",
        "message": "the last message must be the user's, with text content (or, after it, the "
        "start of the reply, or tool results)",
        "details": {"field": "messages"},
        "type": "invalid_request_error",
        "param": "messages",
    }
    assert openai_stub.requests == []
    assert _events(chat_api, instance, "MessageRecorded") == []


def test_openai_clients_learn_that_the_model_failed_streaming_and_not(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    sdk = _sdk(chat_api, chat_api.acme)
    hello = [{"role": "user", "content": "¿Estás ahí?"}]
    openai_stub.script(Fail(500), Fail(500))
    with pytest.raises(openai.InternalServerError) as failed:
        sdk.chat.completions.create(model=instance, messages=hello)  # type: ignore[arg-type]
    assert failed.value.status_code == 502
    error = failed.value.body
    assert isinstance(error, dict)
    assert (error["code"], error["type"], error["param"]) == (
        "model_unavailable",
        "api_error",
        None,
    )
    assert error["details"]["attempts"] == 2

    openai_stub.script(Fail(500), Fail(500))
    response = chat_api.client.post(
        "/v1/chat/completions",
        json={"model": instance, "messages": hello, "stream": True},
        headers=chat_api.acme,
    )
    assert response.status_code == 200
    frames = [f.removeprefix("data: ") for f in response.text.split("\n\n") if f]
    assert json.loads(frames[0])["choices"][0]["delta"] == {"role": "assistant"}
    assert frames[-1] == "[DONE]"
    streamed = json.loads(frames[-2])["error"]
    assert (streamed["type"], streamed["code"]) == ("api_error", None)
    assert streamed["message"] == error["message"]

    openai_stub.script(Fail(500), Fail(500))
    with pytest.raises(openai.APIError):
        list(sdk.chat.completions.create(model=instance, messages=hello, stream=True))  # type: ignore[arg-type]
    assert [f["data"]["status"] for f in _events(chat_api, instance, "ReplyFailed")] == [502] * 3


@pytest.mark.slow
def test_with_no_key_the_local_model_answers_end_to_end(api: Api) -> None:
    character = make_character(api, name="Captain Hale", description="A retired sea captain")
    instance = make_instance(api, character["id"], name="Hale", memory="Sailed to Lisbon in 1990.")
    response = api.client.post(
        f"/v1/instances/{instance['id']}/chat",
        json={"message": "Where did you sail in 1990?", "max_tokens": 40, "temperature": 0},
        headers=api.acme,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["reply"].strip()
    assert body["model"].startswith("local/")
    [reply] = _events(api, str(instance["id"]), "ReplyRecorded")
    assert reply["data"]["model"].startswith("local/")


@pytest.mark.slow
def test_the_openai_sdk_chats_against_alma_serve_streaming_and_not(
    settings: Settings, openai_stub: OpenAIStub, tmp_path: Path
) -> None:
    _, key = create_key(settings, "acme")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    model_env = {
        "OPENAI_API_KEY": "sk-test-alma-0123456789",
        "OPENAI_BASE_URL": openai_stub.base_url,
        "ALMA_MEMORY_FORMATION": "false",  # its model calls would take the scripted replies
    }
    log = tmp_path / "serve.log"
    with running(settings, ["serve", "--port", str(port)], log, model_env) as process:
        wait_for_health(base, process, log)
        http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        character = http.post(
            "/v1/characters", json={"name": "Doña Rosa", "description": "Curandera de la sierra"}
        ).json()
        instance = http.post(
            f"/v1/characters/{character['id']}/instances",
            json={"name": "Rosa", "memory": "Vive en Oaxaca."},
        ).json()["id"]
        sdk = openai.OpenAI(api_key=key, base_url=f"{base}/v1", max_retries=0, timeout=30)
        assert instance in [m.id for m in sdk.models.list().data]

        openai_stub.script(Reply("¡Hola, corazón! 🌵"))
        completion = sdk.chat.completions.create(
            model=instance, messages=[{"role": "user", "content": "Hola, Rosa"}]
        )
        assert completion.choices[0].message.content == "¡Hola, corazón! 🌵"

        openai_stub.script(Reply("Aquí sigo, mi niña."))
        stream = sdk.chat.completions.create(
            model=instance, messages=[{"role": "user", "content": "¿Sigues ahí?"}], stream=True
        )
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
        assert len([p for p in pieces if p]) > 1 and "".join(pieces) == "Aquí sigo, mi niña."

        assert "Vive en Oaxaca." in json.dumps(openai_stub.requests[-1]["messages"])
        replies = http.get(
            f"/v1/instances/{instance}/events", params={"type": "ReplyRecorded"}
        ).json()["items"]
        assert [r["data"]["content"] for r in replies] == [
            "¡Hola, corazón! 🌵",
            "Aquí sigo, mi niña.",
        ]
