"""OpenAI's Responses API (`POST /v1/responses`) as the official SDK uses it: `responses.create`,
`responses.stream`, `responses.parse` and `responses.retrieve`, with the local stub server as the
upstream model, whose requests show what reached the model's prompt."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from pydantic import BaseModel

from alma.settings import Settings
from tests.conftest import Api, make_instance, running_api, stubbed_model
from tests.openai_stub import Fail, OpenAIStub, Reply
from tests.test_chat import _events, _sdk, _world
from tests.test_openai_compat import WEATHER, _said, _user

LUCIA = "Su hermana Lucía trabaja de enfermera en el hospital de Triana"


def _system(stub: OpenAIStub) -> str:
    """What the model's last prompt holds beside the conversation: the persona, what is
    remembered."""
    messages: list[dict[str, Any]] = stub.requests[-1]["messages"]
    return "\n".join(m["content"] for m in messages if m["role"] == "system")


def _turns(stub: OpenAIStub) -> list[dict[str, Any]]:
    """The user and assistant messages of the model's last prompt."""
    messages: list[dict[str, Any]] = stub.requests[-1]["messages"]
    return [m for m in messages if m["role"] in ("user", "assistant")]


def test_a_response_is_a_recorded_turn_with_the_character_s_memories(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    sdk = _sdk(chat_api, chat_api.acme)
    openai_stub.script(Reply("Lucía es enfermera, mi niña."))
    response = sdk.responses.create(
        model="Doña Rosa/Rosa",
        input="¿A qué se dedica mi hermana Lucía?",
        max_output_tokens=300,
        store=False,  # without effect: every turn is recorded
    )
    assert response.output_text == "Lucía es enfermera, mi niña."
    assert (response.status, response.model, response.store) == (
        "completed",
        "Doña Rosa/Rosa",
        True,
    )
    assert response.usage is not None and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert LUCIA in _system(openai_stub)  # the memory reached the prompt
    assert openai_stub.requests[-1]["max_tokens"] == 300
    alma = (response.model_extra or {})["alma"]
    assert LUCIA in [m["text"] for m in alma["memories_used"]]

    assert _said(chat_api, instance) == [
        ("user", "¿A qué se dedica mi hermana Lucía?"),
        ("assistant", "Lucía es enfermera, mi niña."),
    ]
    [reply] = _events(chat_api, instance, "ReplyRecorded")
    assert reply["data"]["message_id"] == alma["turn"]["reply_id"]
    assert reply["data"]["message_id"].replace("-", "") in response.id

    stored = sdk.responses.retrieve(response.id)
    assert (stored.id, stored.output_text, stored.status) == (
        response.id,
        response.output_text,
        "completed",
    )
    assert stored.usage is not None and stored.usage.output_tokens == response.usage.output_tokens
    with pytest.raises(openai.NotFoundError):
        _sdk(chat_api, chat_api.rival).responses.retrieve(response.id)


@pytest.mark.parametrize("client_instructions", [True, False])
def test_instructions_follow_the_persona_unless_turned_off(
    settings: Settings, openai_stub: OpenAIStub, client_instructions: bool
) -> None:
    configured = stubbed_model(settings, openai_stub, chat_client_instructions=client_instructions)
    with running_api(configured) as api:
        _, instance = _world(api)
        parts: list[Any] = [
            {"type": "input_text", "text": "Hola,"},
            {"type": "input_text", "text": "Rosa"},
        ]
        response = _sdk(api, api.acme).responses.create(
            model=instance,
            instructions="Answer in a haiku.",
            input=[
                {"role": "developer", "content": "Be brief."},
                {"type": "message", "role": "user", "content": parts},
            ],
        )
    assert response.instructions == "Answer in a haiku."
    persona, *rest, today, recalled, said = openai_stub.requests[-1]["messages"]
    assert "Doña Rosa" in persona["content"]
    assert today["role"] == "system" and today["content"].startswith("Today is ")
    client = {"role": "system", "content": "Answer in a haiku.\n\nBe brief."}
    assert rest == ([client] if client_instructions else [])
    assert recalled["role"] == "system" and LUCIA in recalled["content"]  # its memories
    assert said == _user("Hola,\nRosa")


def test_streamed_deltas_make_the_final_text_in_the_sdk_s_event_order(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    sdk = _sdk(chat_api, chat_api.acme)
    openai_stub.script(Reply("Aquí sigo, mi niña, junto al fuego."), Reply("Y el mole también."))
    with sdk.responses.stream(model=instance, input="¿Sigues ahí?") as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1
    assert "".join(deltas) == final.output_text == "Aquí sigo, mi niña, junto al fuego."
    kinds = [e.type for e in events if e.type != "response.output_text.delta"]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.usage is not None and final.usage.output_tokens > 0

    raw = sdk.responses.create(model=instance, input="¿Y el mole?", stream=True)
    text = "".join(e.delta for e in raw if e.type == "response.output_text.delta")
    assert text == "Y el mole también."
    assert _said(chat_api, instance)[-2:] == [("user", "¿Y el mole?"), ("assistant", text)]

    openai_stub.script(Fail(500), Fail(500))
    failed = list(sdk.responses.create(model=instance, input="¿Estás?", stream=True))
    assert [e.type for e in failed[-2:]] == ["error", "response.failed"]
    assert failed[-2].code == "model_unavailable"  # type: ignore[union-attr]
    assert failed[-1].response.status == "failed"  # type: ignore[union-attr]
    assert [f["data"]["status"] for f in _events(chat_api, instance, "ReplyFailed")] == [502]


def test_earlier_input_messages_stand_in_for_the_conversation(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    openai_stub.script(Reply("Claro, Tizón."))
    said = [
        _user("Mi gato se llama Tizón"),
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "¡Qué bonito!"}],
        },
        _user("¿Te acuerdas de mi gato?"),
    ]
    response = _sdk(chat_api, chat_api.acme).responses.create(model=instance, input=said)  # type: ignore[arg-type]
    assert response.output_text == "Claro, Tizón."
    assert _turns(openai_stub) == [
        said[0],
        {"role": "assistant", "content": "¡Qué bonito!"},
        said[2],
    ]
    assert _said(chat_api, instance) == [
        ("user", "¿Te acuerdas de mi gato?"),
        ("assistant", "Claro, Tizón."),
    ]


def test_previous_response_id_goes_on_from_that_turn_as_recorded(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    character, instance = _world(chat_api)
    sdk = _sdk(chat_api, chat_api.acme)
    openai_stub.script(Reply("¡Qué nombre tan bonito!"), Reply("Pues a pasear."), Reply("Tizón."))
    first = sdk.responses.create(model=instance, input="Mi gato se llama Tizón")
    sdk.responses.create(model=instance, input="Hoy salgo a caminar")
    # Going on from the first response: its turn is the conversation, not the one after it.
    third = sdk.responses.create(
        model=instance, input="¿Cómo se llama mi gato?", previous_response_id=first.id
    )
    assert third.output_text == "Tizón." and third.previous_response_id == first.id
    assert _turns(openai_stub) == [
        _user("Mi gato se llama Tizón"),
        {"role": "assistant", "content": "¡Qué nombre tan bonito!"},
        _user("¿Cómo se llama mi gato?"),
    ]
    assert [text for _, text in _said(chat_api, instance)][-1] == "Tizón."

    other = str(make_instance(chat_api, character, name="Rosa joven")["id"])
    before, asked = chat_api.written(), len(openai_stub.requests)
    unknown = f"resp_{'0' * 64}"
    for model, previous in [(instance, unknown), (instance, "resp_abc"), (other, first.id)]:
        with pytest.raises(openai.NotFoundError) as refused:
            sdk.responses.create(model=model, input="Hola", previous_response_id=previous)
        assert refused.value.param == "previous_response_id"
        assert f"no response '{previous}'" in refused.value.message
    with pytest.raises(openai.NotFoundError):
        _sdk(chat_api, chat_api.rival).responses.create(
            model=instance, input="Hola", previous_response_id=first.id
        )
    assert (chat_api.written(), len(openai_stub.requests)) == (before, asked)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"reasoning": {"effort": "low"}}, "reasoning"),
        ({"background": True}, "background"),
        ({"tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "¿Qué ves?"},
                            {"type": "input_image", "image_url": "data:image/png;base64,iVBO"},
                        ],
                    }
                ]
            },
            "input[0].content[1]",
        ),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0]"),
        ({"text": {"format": {"type": "grammar"}}}, "text.format"),
    ],
)
def test_what_alma_cannot_honour_is_refused_by_name(
    chat_api: Api, openai_stub: OpenAIStub, fields: dict[str, Any], param: str
) -> None:
    _, instance = _world(chat_api)
    before = chat_api.written()
    request = {"model": instance, "input": "Hola", **fields}
    with pytest.raises(openai.BadRequestError) as refused:
        _sdk(chat_api, chat_api.acme).responses.create(**request)
    error = refused.value.body
    assert isinstance(error, dict)
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        param,
        "unsupported_parameter",
    )
    assert "not supported" in error["message"]
    assert (chat_api.written(), openai_stub.requests) == (before, [])


def test_errors_come_as_the_sdk_s_typed_exceptions(chat_api: Api, openai_stub: OpenAIStub) -> None:
    _, instance = _world(chat_api)
    sdk = _sdk(chat_api, chat_api.acme)
    before = chat_api.written()
    with pytest.raises(openai.NotFoundError) as unknown:
        sdk.responses.create(model="gpt-4o", input="Hola")
    assert "GET /v1/models lists them" in unknown.value.message
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve("resp_nada")
    with pytest.raises(openai.UnprocessableEntityError) as no_turn:
        sdk.responses.create(model=instance, input=[{"role": "assistant", "content": "Hola"}])
    assert no_turn.value.param == "input"
    with pytest.raises(openai.UnprocessableEntityError) as too_long:
        sdk.responses.create(model=instance, input="Hola", max_output_tokens=16385)
    assert too_long.value.param == "max_output_tokens"
    assert "max_output_tokens must be below the model's context" in too_long.value.message
    assert (chat_api.written(), openai_stub.requests) == (before, [])


def test_function_tools_round_trip_as_function_call_items(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    sdk = _sdk(chat_api, chat_api.acme)
    function: Any = WEATHER["function"]
    tool: Any = {"type": "function", **function}
    call = Reply("", "tool_calls", tool_calls=(("weather", '{"city": "Lisboa"}'),))
    openai_stub.script(call, Reply("Hace sol en Lisboa, mi niña."))
    question: Any = _user("¿Qué tiempo hace en Lisboa?")
    asked = sdk.responses.create(model=instance, input=[question], tools=[tool])
    [called] = asked.output
    assert called.type == "function_call"
    assert (called.call_id, called.name, called.arguments) == (
        "call_0",
        "weather",
        '{"city": "Lisboa"}',
    )
    sent = openai_stub.requests[-1]
    assert sent["tools"] == [WEATHER]

    result: Any = {"type": "function_call_output", "call_id": called.call_id, "output": "sunny"}
    before, asked_model = chat_api.written(), len(openai_stub.requests)
    with pytest.raises(openai.UnprocessableEntityError) as alone:  # the call is not recorded
        sdk.responses.create(
            model=instance, input=[result], previous_response_id=asked.id, tools=[tool]
        )
    assert alone.value.param == "input[0]"
    assert "send the call before its output" in alone.value.message
    assert (chat_api.written(), len(openai_stub.requests)) == (before, asked_model)
    exchange = [question, called.model_dump(exclude_none=True), result]
    answered = sdk.responses.create(model=instance, input=exchange, tools=[tool])
    assert answered.output_text == "Hace sol en Lisboa, mi niña."
    assert openai_stub.requests[-1]["messages"][-3:] == [
        question,
        {"role": "assistant", "content": None, "tool_calls": call.calls()},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_0"},
    ]
    messages = _events(chat_api, instance, "MessageRecorded")
    assert [m["data"]["content"] for m in messages] == [question["content"]]

    openai_stub.script(Reply("Miro el cielo.", "tool_calls", tool_calls=call.tool_calls))
    with sdk.responses.stream(model=instance, input="¿Y mañana?", tools=[tool]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.done" in kinds
    said, streamed = final.output
    assert (final.output_text, said.type, streamed.type) == (
        "Miro el cielo.",
        "message",
        "function_call",
    )
    assert (streamed.name, streamed.arguments) == ("weather", '{"city": "Lisboa"}')  # type: ignore[union-attr]


class Mood(BaseModel):
    mood: str
    intensity: int


def test_a_text_format_goes_to_the_model_and_the_sdk_parses_it(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    _, instance = _world(chat_api)
    openai_stub.script(Reply('{"mood": "alegre", "intensity": 7}'))
    parsed = _sdk(chat_api, chat_api.acme).responses.parse(
        model=instance, input="¿Cómo te sientes hoy?", text_format=Mood
    )
    assert parsed.output_parsed == Mood(mood="alegre", intensity=7)
    sent = openai_stub.requests[-1]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "Mood"
