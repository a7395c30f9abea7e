"""The OpenAI-compatible routes as OpenAI's own SDK (sync and async) uses them: the whole Chat
Completions request shape, errors the SDK raises as its typed exceptions, models, embeddings and
legacy completions, with the local stub server as the upstream model."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel, ValidationError

from alma.settings import Settings
from tests.conftest import Api, make_character, make_instance, running_api, search, stubbed_model
from tests.openai_stub import OpenAIStub, Reply
from tests.test_chat import _events, _sdk, _world


def _ask(sdk: openai.OpenAI, instance: str, *messages: dict[str, Any], **fields: Any) -> Any:
    return sdk.chat.completions.create(model=instance, messages=list(messages), **fields)


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _said(api: Api, instance: str) -> list[tuple[str, str]]:
    response = api.client.get(f"/v1/instances/{instance}/messages", headers=api.acme)
    return [(m["role"], m["content"]) for m in response.json()["items"]]


def test_content_parts_are_one_text_and_an_image_is_refused_saying_so(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    sdk = _sdk(chat_api, chat_api.acme)
    openai_stub.script(Reply("Claro que sí, mi niña."))
    parts = [{"type": "text", "text": "¿Te acuerdas"}, {"type": "text", "text": "de Lucía?"}]
    answer = _ask(sdk, instance, {"role": "user", "content": parts})
    assert answer.choices[0].message.content == "Claro que sí, mi niña."
    assert openai_stub.requests[-1]["messages"][-1] == _user("¿Te acuerdas\nde Lucía?")
    assert _said(chat_api, instance)[0] == ("user", "¿Te acuerdas\nde Lucía?")

    before, asked = chat_api.written(), len(openai_stub.requests)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with pytest.raises(openai.BadRequestError) as refused:
        _ask(sdk, instance, {"role": "user", "content": [parts[0], image]})
    assert refused.value.param == "messages[0].content[1]"
    assert refused.value.code == "unsupported_parameter"
    assert "image_url content is not supported" in refused.value.message
    assert (chat_api.written(), len(openai_stub.requests)) == (before, asked)


def test_every_sampling_field_reaches_the_model_and_replies_may_be_long(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    sdk = _sdk(chat_api, chat_api.acme)
    sampling = {
        "stop": ["\nUser:"],
        "seed": 7,
        "top_p": 0.9,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "user": "caroline-42",
        "logit_bias": {"50256": -100},
    }
    _ask(sdk, instance, _user("Hola"), max_tokens=8192, n=1, logprobs=False, **sampling)
    sent = openai_stub.requests[-1]
    assert {name: sent[name] for name in sampling} == sampling
    assert sent["max_tokens"] == 8192

    stream = _ask(
        sdk, instance, _user("¿Sigues?"), max_completion_tokens=6000, stream=True, seed=11
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert (openai_stub.requests[-1]["seed"], openai_stub.requests[-1]["max_tokens"]) == (11, 6000)

    before = chat_api.written()
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        _ask(sdk, instance, _user("Hola"), max_tokens=16385)
    assert refused.value.param == "max_tokens"
    assert "below the model's context of 16385" in refused.value.message
    assert chat_api.written() == before


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"extra_body": {"top_k": 5}}, "top_k"),
    ],
)
def test_a_field_alma_cannot_honour_is_refused_by_name_not_dropped(
    chat_api: Api, openai_stub: OpenAIStub, fields: dict[str, Any], param: str
) -> None:
    _, instance = _world(chat_api)
    before = chat_api.written()
    with pytest.raises(openai.BadRequestError) as refused:
        _ask(_sdk(chat_api, chat_api.acme), instance, _user("Hola"), **fields)
    error = refused.value.body
    assert isinstance(error, dict)
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        param,
        "unsupported_parameter",
    )
    assert error["message"].startswith(f"{param} is not supported: ")
    assert (chat_api.written(), openai_stub.requests) == (before, [])


@pytest.mark.parametrize("client_instructions", [True, False])
def test_the_client_s_system_message_follows_the_persona_unless_turned_off(
    settings: Settings, openai_stub: OpenAIStub, client_instructions: bool
) -> None:
    haiku = {"role": "system", "content": "Answer in a haiku."}
    configured = stubbed_model(settings, openai_stub, chat_client_instructions=client_instructions)
    with running_api(configured) as api:
        _, instance = _world(api)
        _ask(_sdk(api, api.acme), instance, haiku, _user("Hola, Rosa"))
    persona, *rest, today, recalled, said = openai_stub.requests[-1]["messages"]
    assert persona["role"] == "system" and "Doña Rosa" in persona["content"]
    assert rest == ([haiku] if client_instructions else [])
    assert today["role"] == "system" and today["content"].startswith("Today is ")
    assert recalled["role"] == "system" and "enfermera" in recalled["content"]  # its memories
    assert said == _user("Hola, Rosa")


def test_a_final_assistant_message_is_continued_and_recorded_whole(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    sdk = _sdk(chat_api, chat_api.acme)
    openai_stub.script(Reply("ciudad de la luz."))
    start = {"role": "assistant", "content": "Ah, Lisboa, "}
    answer = _ask(sdk, instance, _user("Cuéntame de Lisboa"), start)
    assert answer.choices[0].message.content == "ciudad de la luz."
    assert openai_stub.requests[-1]["messages"][-2:] == [_user("Cuéntame de Lisboa"), start]
    assert _said(chat_api, instance) == [
        ("user", "Cuéntame de Lisboa"),
        ("assistant", "Ah, Lisboa, ciudad de la luz."),
    ]

    # Continuing the reply the instance gave: its answer to the same message, not a new turn.
    openai_stub.script(Reply(" Y del fado."))
    said = {"role": "assistant", "content": "Ah, Lisboa, ciudad de la luz."}
    stream = _ask(sdk, instance, _user("Cuéntame de Lisboa"), said, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == " Y del fado."
    messages = _events(chat_api, instance, "MessageRecorded")
    replies = _events(chat_api, instance, "ReplyRecorded")
    assert len(messages) == 1
    assert replies[-1]["data"]["content"] == "Ah, Lisboa, ciudad de la luz. Y del fado."
    assert replies[-1]["data"]["in_reply_to"] == messages[0]["data"]["message_id"]


WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_tools_go_to_the_model_with_the_character_and_the_results_continue_the_turn(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    sdk = _sdk(chat_api, chat_api.acme)
    question = _user("¿Qué tiempo hace en Lisboa? Lucía va mañana.")
    call = Reply("", "tool_calls", tool_calls=(("weather", '{"city": "Lisboa"}'),))
    openai_stub.script(call, Reply("Hace sol en Lisboa, mi niña."))
    asked = _ask(sdk, instance, question, tools=[WEATHER], tool_choice="auto")
    choice = asked.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [called] = choice.message.tool_calls or []
    assert (called.id, called.function.name, called.function.arguments) == (
        "call_0",
        "weather",
        '{"city": "Lisboa"}',
    )
    sent = openai_stub.requests[-1]
    assert (sent["tools"], sent["tool_choice"]) == ([WEATHER], "auto")
    assert "Doña Rosa" in sent["messages"][0]["content"]  # the character's prompt
    assert "enfermera" in "\n".join(m["content"] for m in sent["messages"] if m["role"] == "system")

    result = {"role": "tool", "tool_call_id": called.id, "content": "sunny, 24 °C"}
    exchange = [question, choice.message.model_dump(exclude_none=True), result]
    answer = _ask(sdk, instance, *exchange, tools=[WEATHER])
    assert answer.choices[0].message.content == "Hace sol en Lisboa, mi niña."
    assert openai_stub.requests[-1]["messages"][-3:] == [
        question,
        {"role": "assistant", "content": None, "tool_calls": call.calls()},
        result,
    ]
    messages = _events(chat_api, instance, "MessageRecorded")
    replies = _events(chat_api, instance, "ReplyRecorded")
    assert [m["data"]["content"] for m in messages] == [question["content"]]
    assert [r["data"]["content"] for r in replies] == [
        'weather({"city": "Lisboa"})',
        "Hace sol en Lisboa, mi niña.",
    ]
    assert {r["data"]["in_reply_to"] for r in replies} == {messages[0]["data"]["message_id"]}


def test_a_tool_round_trip_is_recorded_once_however_often_the_history_comes_back(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    sdk = _sdk(chat_api, chat_api.acme)
    question = _user("¿Qué tiempo hace en Lisboa?")
    call = Reply("", "tool_calls", tool_calls=(("weather", '{"city": "Lisboa"}'),))
    openai_stub.script(call, Reply("Hace sol, mi niña."), Reply("Sí, con sol."))
    openai_stub.script(Reply("Lucía vuelve el lunes."), Reply("Tizón duerme."))
    asked = _ask(sdk, instance, question, tools=[WEATHER]).choices[0].message
    result = {"role": "tool", "tool_call_id": "call_0", "content": "sunny, 24 °C"}
    history = [question, asked.model_dump(exclude_none=True), result]
    answered = _ask(sdk, instance, *history, tools=[WEATHER]).choices[0].message
    _ask(sdk, instance, *history, tools=[WEATHER])  # the client retries the same request
    history.append({"role": "assistant", "content": answered.content})
    for text in ("¿Y Lucía?", "¿Y Tizón?"):  # every request resends the whole history
        history.append(_user(text))
        said = _ask(sdk, instance, *history).choices[0].message.content
        history.append({"role": "assistant", "content": said})

    [recorded] = _events(chat_api, instance, "ToolResultRecorded")
    question_id = _events(chat_api, instance, "MessageRecorded")[0]["data"]["message_id"]
    assert {k: recorded["data"][k] for k in ("tool_call_id", "name", "content", "in_reply_to")} == {
        "tool_call_id": "call_0",
        "name": "weather",  # the function of the call it answers
        "content": "sunny, 24 °C",
        "in_reply_to": question_id,
    }
    replies = _events(chat_api, instance, "ReplyRecorded")
    assert [r["data"]["tool_calls"] for r in replies] == [call.calls(), [], [], [], []]
    assert replies[0]["version"] < recorded["version"] < replies[1]["version"]
    assert [m["role"] for m in _listed(chat_api, instance)] == [
        "user", "assistant", "tool", "assistant", "assistant", "user", "assistant", "user",
        "assistant",
    ]  # fmt: skip
    listed_call, listed_result = _listed(chat_api, instance)[1:3]
    assert listed_call["metadata"]["tool_calls"] == call.calls()
    assert (listed_result["content"], listed_result["name"], listed_result["metadata"]) == (
        "sunny, 24 °C",
        "weather",
        {"tool_call_id": "call_0"},
    )
    chat_file = chat_api.client.get(
        f"/v1/instances/{instance}/messages",
        params={"format": "sillytavern"},
        headers=chat_api.acme,
    ).text.splitlines()
    assert len(chat_file) == 1 + 8 and "sunny" not in "".join(chat_file)  # no place for it there
    # Not a memory: searching finds what was said, not the tool's output.
    assert not [hit for hit in search(chat_api, instance, "sunny 24 °C") if "sunny" in hit["text"]]

    fork = chat_api.client.post(
        f"/v1/instances/{instance}/fork", json={"name": "Rosa bis"}, headers=chat_api.acme
    ).json()
    [copied] = _events(chat_api, fork["id"], "ToolResultRecorded")
    assert copied["data"]["forked_from"]["message_id"] == recorded["data"]["message_id"]
    [first, *_] = _events(chat_api, fork["id"], "MessageRecorded")
    assert copied["data"]["in_reply_to"] == first["data"]["message_id"]


def test_a_legacy_function_s_results_are_recorded_by_their_order(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    sdk = _sdk(chat_api, chat_api.acme)
    exchange: list[dict[str, Any]] = [_user("¿Qué tiempo hace hoy y mañana?")]
    for day in ("hoy", "mañana"):
        called = {"name": "weather", "arguments": json.dumps({"day": day})}
        exchange.append({"role": "assistant", "content": None, "function_call": called})
        exchange.append({"role": "function", "name": "weather", "content": "sunny"})
        _ask(sdk, instance, *exchange)
    _ask(sdk, instance, *exchange)  # sent again: nothing new
    recorded = _events(chat_api, instance, "ToolResultRecorded")
    assert [(r["data"]["tool_call_id"], r["data"]["content"]) for r in recorded] == [
        (None, "sunny"),
        (None, "sunny"),
    ]


def test_a_tool_result_without_the_call_it_answers_is_refused_writing_nothing(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    calls = Reply(tool_calls=(("weather", "{}"),)).calls()
    called = {"role": "assistant", "content": None, "tool_calls": calls}
    long = "x" * 100_001
    before = chat_api.written()
    for result, param in (
        ({"role": "tool", "content": "sunny"}, "tool_call_id"),
        ({"role": "tool", "tool_call_id": " ", "content": "sunny"}, "tool_call_id"),
        ({"role": "tool", "tool_call_id": "call_0", "content": long}, "content"),
    ):
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            _ask(_sdk(chat_api, chat_api.acme), instance, _user("¿Y el tiempo?"), called, result)
        assert refused.value.param == f"messages[2].{param}"
    odd = {"role": "assistant", "content": None, "tool_calls": [{"id": [1], "function": "w"}, 5]}
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        _ask(_sdk(chat_api, chat_api.acme), instance, _user("¿Y?"), odd, {"role": "tool"})
    assert refused.value.param == "messages[2].tool_call_id"  # odd calls: a 422, not a 500
    assert (chat_api.written(), openai_stub.requests) == (before, [])


def _listed(api: Api, instance: str) -> list[dict[str, Any]]:
    response = api.client.get(f"/v1/instances/{instance}/messages", headers=api.acme)
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_streamed_tool_calls_come_back_in_openai_s_shape(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    calls = (("weather", '{"city": "Lisboa"}'), ("weather", '{"city": "Oaxaca"}'))
    openai_stub.script(Reply("Miro el cielo.", "tool_calls", tool_calls=calls))
    stream = _ask(
        _sdk(chat_api, chat_api.acme),
        instance,
        _user("¿Y el tiempo?"),
        tools=[WEATHER],
        stream=True,
    )
    text, joined, finish = "", {}, None
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for piece in choice.delta.tool_calls or []:
                whole = joined.setdefault(piece.index, {"name": "", "arguments": ""})
                whole["name"] += piece.function.name or "" if piece.function else ""
                whole["arguments"] += piece.function.arguments or "" if piece.function else ""
    assert (text, finish) == ("Miro el cielo.", "tool_calls")
    assert [(c["name"], c["arguments"]) for _, c in sorted(joined.items())] == list(calls)
    [reply] = _events(chat_api, instance, "ReplyRecorded")
    assert reply["data"]["content"] == (
        'Miro el cielo.\nweather({"city": "Lisboa"})\nweather({"city": "Oaxaca"})'
    )


class Mood(BaseModel):
    mood: str
    intensity: int


def test_structured_output_goes_to_the_model_and_the_sdk_parses_it(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    openai_stub.script(Reply('{"mood": "alegre", "intensity": 7}'))
    parsed = _sdk(chat_api, chat_api.acme).chat.completions.parse(
        model=instance, messages=[_user("¿Cómo te sientes hoy?")], response_format=Mood
    )
    assert parsed.choices[0].message.parsed == Mood(mood="alegre", intensity=7)
    sent = openai_stub.requests[-1]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "Mood"


def test_legacy_function_messages_are_accepted(chat_api: Api, openai_stub: OpenAIStub) -> None:
    _, instance = _world(chat_api)
    sdk = _sdk(chat_api, chat_api.acme)
    function = {"role": "function", "name": "weather", "content": "sunny"}
    _ask(sdk, instance, _user("¿Qué tiempo hace?"), function, _user("¿Y mañana?"))
    assert openai_stub.requests[-1]["messages"][-1] == _user("¿Y mañana?")

    legacy = {
        "role": "assistant",
        "content": None,
        "function_call": {"name": "weather", "arguments": "{}"},
    }
    openai_stub.script(Reply("Sol."))
    answer = _ask(sdk, instance, _user("¿Y hoy?"), legacy, function)
    assert answer.choices[0].message.content == "Sol."
    assert openai_stub.requests[-1]["messages"][-2:] == [legacy, function]


def test_openai_errors_name_the_way_to_the_models_and_the_sdk_types_them(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    sdk = _sdk(chat_api, chat_api.acme)
    with pytest.raises(openai.NotFoundError) as unknown:
        _ask(sdk, "gpt-4o", _user("Hola"))
    assert "GET /v1/models lists them" in unknown.value.message
    assert unknown.value.body["type"] == "not_found_error"  # type: ignore[index]

    assert sdk.models.retrieve(instance).id == instance
    assert sdk.models.retrieve("Doña Rosa/Rosa").id == instance
    with pytest.raises(openai.NotFoundError):
        _sdk(chat_api, chat_api.rival).models.retrieve(instance)

    stranger = openai.OpenAI(
        api_key="alma_not-a-key", base_url="http://testserver/v1", http_client=chat_api.client
    )
    for call in (
        lambda: stranger.embeddings.create(model="any", input="hola"),
        lambda: stranger.completions.create(model=instance, prompt="hola"),
        lambda: stranger.models.retrieve(instance),
    ):
        with pytest.raises(openai.AuthenticationError) as refused:
            call()
        assert refused.value.body["type"] == "authentication_error"  # type: ignore[index]
    assert openai_stub.requests == []


def test_embeddings_come_from_alma_s_own_model(chat_api: Api, openai_stub: OpenAIStub) -> None:
    sdk = _sdk(chat_api, chat_api.acme)
    texts = ["My sister works as a nurse", "She is a nurse at the hospital", "Grandma's mole"]
    answer = sdk.embeddings.create(model="text-embedding-3-small", input=texts)  # base64
    vectors = [item.embedding for item in answer.data]
    own = chat_api.services.memory_index.embedder
    assert answer.model == own.model_name
    for vector, expected in zip(vectors, own.encode(texts), strict=True):
        assert vector == pytest.approx(expected, abs=1e-6)
        assert math.isclose(sum(x * x for x in vector), 1.0, rel_tol=1e-4)

    def similarity(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert similarity(vectors[0], vectors[1]) > similarity(vectors[0], vectors[2])
    assert answer.usage.prompt_tokens > 0

    plain = chat_api.client.post(
        "/v1/embeddings",
        json={"model": "x", "input": "hola", "encoding_format": "float"},
        headers=chat_api.acme,
    )
    assert plain.json()["data"][0]["embedding"] == pytest.approx(own.encode(["hola"])[0])
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.embeddings.create(model="x", input="hola", dimensions=1536)
    assert refused.value.param == "dimensions"
    with pytest.raises(openai.UnprocessableEntityError) as blank:
        sdk.embeddings.create(model="x", input=["hola", "  "])
    assert blank.value.param == "input"


def test_a_legacy_completion_is_a_turn_streaming_and_not(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    sdk = _sdk(chat_api, chat_api.acme)
    openai_stub.script(Reply("Lucía es mi hermana."), Reply("Y es enfermera."))
    done = sdk.completions.create(model=instance, prompt="¿Quién es Lucía?", max_tokens=300)
    assert done.object == "text_completion"
    assert done.choices[0].text == "Lucía es mi hermana."
    assert done.choices[0].finish_reason == "stop"
    assert openai_stub.requests[-1]["messages"][-1] == _user("¿Quién es Lucía?")
    assert openai_stub.requests[-1]["max_tokens"] == 300

    stream = sdk.completions.create(model="Doña Rosa/Rosa", prompt="¿Y qué hace?", stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == "Y es enfermera."
    assert _said(chat_api, instance) == [
        ("user", "¿Quién es Lucía?"),
        ("assistant", "Lucía es mi hermana."),
        ("user", "¿Y qué hace?"),
        ("assistant", "Y es enfermera."),
    ]

    before = chat_api.written()
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.completions.create(model=instance, prompt="Hola", echo=True)
    assert refused.value.param == "echo"
    with pytest.raises(openai.UnprocessableEntityError) as many:
        sdk.completions.create(model=instance, prompt=["Hola", "Adiós"])
    assert (many.value.param or "").startswith("prompt")
    assert chat_api.written() == before


class Person(BaseModel):
    name: str
    age: int


@pytest.mark.slow
def test_the_packaged_smollm2_keeps_to_a_json_schema_and_to_json(settings: Settings) -> None:
    """llama.cpp turns `response_format` into a grammar: the reply is JSON whatever the model
    would have written."""
    with running_api(settings.model_copy(update={"local_model": "smollm2-135m"})) as api:
        character, instance = _world(api)
        sdk = _sdk(api, api.acme)
        question = _user("Who are you, and how old are you?")
        twin = str(make_instance(api, character, name="Rosa bis")["id"])  # no turns of its own
        free = _ask(sdk, twin, question, temperature=0).choices[0].message.content or ""
        with pytest.raises(ValidationError):  # on its own, SmolLM2 answers in prose
            Person.model_validate_json(free)
        parsed = sdk.chat.completions.parse(
            model=instance, messages=[question], response_format=Person, temperature=0
        )
        assert isinstance(parsed.choices[0].message.parsed, Person)  # the SDK validated it

        schema = Person.model_json_schema()
        shaped = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
        asked = _user("¿Quién eres y cuántos años tienes?")
        stream = _ask(sdk, instance, asked, response_format=shaped, temperature=0, stream=True)
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        Person.model_validate_json(streamed)  # raises unless it keeps to the schema

        character = make_character(api, name="Doña Elena")
        plain = str(make_instance(api, character["id"], name="Elena")["id"])
        json_object = {"type": "json_object"}
        hello = _user("Hello! How old are you?")
        answer = _ask(
            sdk, plain, hello, response_format=json_object, temperature=0, max_tokens=120
        ).choices[0]
        # A bare JSON object has no end a small model must reach: it may run to max_tokens.
        assert (answer.message.content or "").startswith("{")
        if answer.finish_reason == "stop":
            assert isinstance(json.loads(answer.message.content or ""), dict)


@pytest.fixture
def async_sdk(chat_api: Api) -> Iterator[openai.AsyncOpenAI]:
    key = chat_api.acme["Authorization"].removeprefix("Bearer ")
    transport = httpx.ASGITransport(app=chat_api.client.app)
    yield openai.AsyncOpenAI(
        api_key=key,
        base_url="http://testserver/v1",
        http_client=httpx.AsyncClient(transport=transport, base_url="http://testserver"),
        max_retries=0,
    )


def test_the_async_sdk_chats_streams_and_embeds(
    chat_api: Api, openai_stub: OpenAIStub, async_sdk: openai.AsyncOpenAI
) -> None:
    _, instance = _world(chat_api)
    openai_stub.script(Reply("¡Hola, corazón!"), Reply("Aquí sigo."))
    system = {"role": "system", "content": "Be brief."}

    async def talk() -> tuple[str | None, str, int]:
        done = await async_sdk.chat.completions.create(
            model=instance, messages=[system, _user("Hola")], top_p=0.5
        )
        stream = await async_sdk.chat.completions.create(
            model=instance,
            messages=[{"role": "user", "content": [{"type": "text", "text": "¿Sigues?"}]}],
            stream=True,
        )
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        embedded = await async_sdk.embeddings.create(model="x", input="hola")
        return done.choices[0].message.content, streamed, len(embedded.data[0].embedding)

    said, streamed, size = asyncio.run(talk())
    assert (said, streamed) == ("¡Hola, corazón!", "Aquí sigo.")
    assert size == len(chat_api.services.memory_index.embedder.encode(["hola"])[0])
    assert openai_stub.requests[0]["top_p"] == 0.5
    assert openai_stub.requests[0]["messages"][1] == system


@pytest.mark.slow
def test_the_local_model_takes_the_sampling_fields_and_a_json_schema(api: Api) -> None:
    _, instance = _world(api)
    sdk = _sdk(api, api.acme)
    count = _user("Count from 1 to 10, separated by commas.")
    plain = _ask(sdk, instance, count, temperature=0, max_tokens=40)
    stopped = _ask(sdk, instance, count, temperature=0, max_tokens=40, stop=["4"], seed=1)
    assert "4" in (plain.choices[0].message.content or "")
    assert "4" not in (stopped.choices[0].message.content or "")
    assert stopped.choices[0].message.content != plain.choices[0].message.content

    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
    }
    shaped = _ask(
        sdk,
        instance,
        _user("Who are you? Answer in JSON."),
        temperature=0,
        max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "who", "schema": schema}},
    )
    assert isinstance(json.loads(shaped.choices[0].message.content or "")["name"], str)
