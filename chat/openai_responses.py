"""OpenAI's Responses API over the chat-completions layer (`openai_compat`): a request's
`instructions` and `input` become the messages of one chat turn, and the turn's answer a
`response` or, while it streams, the Responses events.

A response's id names the instance and the reply the turn is recorded as
(`resp_<instance><reply>`, both known before the model answers), so `previous_response_id` is
read back from alma's own record: the instance's turns up to that reply are the conversation the
input goes on from. Function tools and `text.format` become the chat request's `tools` and
`response_format`, and the model's tool calls come back as `function_call` items. Every turn is
recorded (alma's events are its store): `store: false` changes nothing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any
from uuid import UUID

from alma.chat import history as chat_history
from alma.chat import openai_compat
from alma.chat.openai_compat import TextMessage, Unsupported
from alma.chat.turns import Chat
from alma.domain import Actor, Alma, InvalidInput, NotFound

_ID = re.compile(r"resp_([0-9a-f]{32})([0-9a-f]{32})")
_TEXT = ("input_text", "output_text")
_ITEMS = "alma takes messages, function calls and their outputs"
# The Responses fields alma does not honour, and why; anything else not passed is refused too.
REFUSED = {
    "background": "alma answers while the request waits: leave it false",
    "conversation": "the conversation is the instance's own: name the instance as the model "
    "and go on from a response with previous_response_id",
    "include": "alma has nothing more to include",
    "max_tool_calls": "the model's tool calls are not counted here",
    "prompt": "stored prompts are not supported: send instructions and input",
    "reasoning": "the model's reasoning is not configurable here",
    "top_logprobs": "alma does not return log probabilities",
    "truncation": "alma always fits the prompt to the model's context, keeping the newest turns",
}
_HARMLESS: dict[str, tuple[Any, ...]] = {
    "background": (False,),
    "include": ([],),
    "top_logprobs": (0,),
    "truncation": ("auto",),
}
# A chat turn's field, as the Responses API names it.
_FIELDS = {"messages": "input", "max_tokens": "max_output_tokens"}


def answer(
    chat: Chat,
    tenant: str,
    model: str,
    given: str | Sequence[Mapping[str, Any]],
    instructions: str | None,
    previous_response_id: str | None,
    max_tokens: int,
    temperature: float,
    stream: bool,
    actor: Actor,
    *,
    fields: Mapping[str, Any],
    client_instructions: bool = True,
) -> openai_compat.Answer:
    """The instance named by `model` answers the last user message of `given` (the input),
    after the turns up to `previous_response_id`'s reply and the input's earlier items; the
    answer's body is a `response` or, streaming, its `Events`. `fields`: the request's others,
    passed to the model or refused by name."""
    instance_id = openai_compat.instance_of(chat.app, tenant, model).id
    passed = openai_compat.sampling(_chat_fields(fields), REFUSED, _HARMLESS)
    messages = [TextMessage(instructions, "system")] if instructions else []
    if previous_response_id is not None:
        messages += _conversation(chat, tenant, instance_id, previous_response_id)
    messages += _messages(given)
    try:
        answered = openai_compat.answer(
            chat,
            tenant,
            str(instance_id),
            messages,
            max_tokens,
            temperature,
            stream,
            actor,
            fields=passed,
            client_instructions=client_instructions,
        )
    except InvalidInput as error:
        named = _FIELDS.get((error.field or "").partition("[")[0])
        if named is None:
            raise
        message = str(error).replace(error.field or "", named, 1)
        raise type(error)(message, named) from None
    assert answered.reply_id is not None  # every chat turn's is chosen before it is recorded
    reply = answered.reply_id
    shown = _shown(
        f"resp_{instance_id.hex}{reply.hex}",
        int(time.time()),
        model,
        _asked(fields, instructions, previous_response_id, max_tokens, temperature),
    )
    if isinstance(answered.body, dict):
        completion = answered.body
        choice = completion["choices"][0]
        status = "incomplete" if choice["finish_reason"] == "length" else "completed"
        message = choice["message"]
        output = _output(reply, message["content"], message.get("tool_calls") or (), status)
        body = _response(shown, status, output, completion["usage"], completion["alma"])
        return replace(answered, body=body)
    return replace(answered, body=Events(shown, reply, answered.body))


def stored(app: Alma, tenant: str, response_id: str) -> dict[str, Any]:
    """A response as its reply is recorded: the reply's text, model and usage (the request's
    own fields are not recorded, so they show OpenAI's defaults)."""
    instance_id, reply = _recorded(app, tenant, response_id, None)
    status = "incomplete" if reply.interrupted else "completed"
    reply_id = UUID(str(reply.message_id))
    usage = {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }
    alma = {
        "turn": {"version": reply.originator_version, "reply_id": str(reply_id)},
        "answered_by": reply.model,
        "memory_ids": list(reply.memory_ids),
        "lore_used": list(getattr(reply, "lore_used", None) or []),
    }
    created = int(reply.timestamp.timestamp())
    shown = _shown(response_id, created, str(instance_id), _asked({}, None, None, None, None))
    output = _output(reply_id, reply.content, (), status)
    return _response(shown, status, output, usage, alma, "interrupted")


class Events(Iterator[dict[str, Any]]):
    """A streamed response's events, each with its `type` and `sequence_number`: created, in
    progress, each output item with its parts and text deltas, completed. A model that fails
    midway raises `ModelError`; `failed` gives the events that end the stream then."""

    def __init__(
        self, shown: dict[str, Any], reply_id: UUID, chunks: Iterator[dict[str, Any]]
    ) -> None:
        self._shown = shown
        self._sequence = 0
        self._events = self._all(reply_id, chunks)

    def __next__(self) -> dict[str, Any]:
        return next(self._events)

    def failed(self, code: str, message: str) -> list[dict[str, Any]]:
        failure = {"code": "server_error", "message": message}
        return [
            self._event("error", code=code, message=message, param=None),
            self._event(
                "response.failed", response=_response(self._shown, "failed", error=failure)
            ),
        ]

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def _all(self, reply_id: UUID, chunks: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        started = _response(self._shown, "in_progress")
        yield self._event("response.created", response=started)
        yield self._event("response.in_progress", response=started)
        message_id = f"msg_{reply_id.hex}"
        text, last = "", None
        calls: list[dict[str, Any]] = []
        for chunk in chunks:
            delta = chunk["choices"][0]["delta"]
            if delta.get("content"):
                if not text:
                    yield from self._message_opened(message_id)
                text += delta["content"]
                yield self._event(
                    "response.output_text.delta",
                    item_id=message_id,
                    output_index=0,
                    content_index=0,
                    delta=delta["content"],
                    logprobs=[],
                )
            calls += delta.get("tool_calls") or []
            last = chunk
        assert last is not None and "usage" in last  # the chat turn's last chunk
        status = "incomplete" if last["choices"][0]["finish_reason"] == "length" else "completed"
        output = _output(reply_id, text, calls, status)
        for index, item in enumerate(output):
            if item["type"] == "message":
                if not text:
                    yield from self._message_opened(message_id)
                part = item["content"][0]
                where = {"item_id": message_id, "output_index": index, "content_index": 0}
                yield self._event(
                    "response.output_text.done", **where, text=part["text"], logprobs=[]
                )
                yield self._event("response.content_part.done", **where, part=part)
            else:
                where = {"item_id": item["id"], "output_index": index}
                added = {**item, "arguments": "", "status": "in_progress"}
                yield self._event("response.output_item.added", output_index=index, item=added)
                yield self._event(
                    "response.function_call_arguments.delta", **where, delta=item["arguments"]
                )
                yield self._event(
                    "response.function_call_arguments.done",
                    **where,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            yield self._event("response.output_item.done", output_index=index, item=item)
        completed = _response(self._shown, status, output, last["usage"], last["alma"])
        yield self._event("response.completed", response=completed)

    def _message_opened(self, message_id: str) -> Iterator[dict[str, Any]]:
        opened = _message(message_id, None, "in_progress")
        yield self._event("response.output_item.added", output_index=0, item=opened)
        yield self._event(
            "response.content_part.added",
            item_id=message_id,
            output_index=0,
            content_index=0,
            part=_text_part(""),
        )


def _chat_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The request's other fields as a chat request names them: function tools, the tool
    choice and the text format in the chat request's shape."""
    chat = {name: value for name, value in fields.items() if name != "text"}
    if fields.get("tools") is not None:
        chat["tools"] = [_tool(tool, i) for i, tool in enumerate(fields["tools"])]
    choice = fields.get("tool_choice")
    if isinstance(choice, Mapping):
        if choice.get("type") != "function":
            raise Unsupported(
                f"a tool choice of type {choice.get('type')} is not supported: alma's model "
                "calls function tools",
                "tool_choice",
            )
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    if fields.get("text") is not None:
        response_format = _response_format(fields["text"])
        if response_format is not None:
            chat["response_format"] = response_format
    return chat


def _tool(tool: Mapping[str, Any], index: int) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise Unsupported(
            f"{tool.get('type')} tools are not supported: alma's model calls function tools, "
            "which the client runs",
            f"tools[{index}]",
        )
    return {"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}}


def _response_format(text: Mapping[str, Any]) -> dict[str, Any] | None:
    for name, value in text.items():
        if name != "format" and value is not None:
            raise Unsupported(f"text.{name} is not supported: only text.format is", f"text.{name}")
    shape = text.get("format") or {"type": "text"}
    kind = shape.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {k: v for k, v in shape.items() if k != "type"},
        }
    raise Unsupported(
        f"text.format {kind} is not supported: text, json_object or json_schema", "text.format"
    )


def _conversation(
    chat: Chat, tenant: str, instance_id: UUID, response_id: str
) -> list[TextMessage]:
    """The instance's recorded turns up to the reply `response_id` names, as messages."""
    named, reply = _recorded(chat.app, tenant, response_id, "previous_response_id")
    if named != instance_id:
        raise NotFound(
            f"no response {response_id!r} of this model: previous_response_id names an earlier "
            "response of the same instance",
            "previous_response_id",
        )
    said = chat.app.last_messages(instance_id, chat.history_turns, reply.originator_version)
    turns = map(chat_history.as_turn, said)
    return [TextMessage(t.content, t.role) for t in turns if t.role in ("user", "assistant")]


def _recorded(app: Alma, tenant: str, response_id: str, field: str | None) -> tuple[UUID, Any]:
    """The instance and the recorded reply (its event) a response id names."""
    found = _ID.fullmatch(response_id)
    try:
        if found is None:
            raise NotFound
        instance_id = UUID(found[1])
        return instance_id, app.reply(tenant, instance_id, UUID(found[2]))
    except NotFound:
        raise NotFound(
            f"no response {response_id!r}: a response's id is the one alma answered", field
        ) from None


def _messages(given: str | Sequence[Mapping[str, Any]]) -> list[TextMessage]:
    """The input as chat messages: a text is the user's; a function call joins the assistant
    message before it (or makes one), and its output is the tool's message."""
    if isinstance(given, str):
        return [TextMessage(given)]
    messages: list[TextMessage] = []
    called: set[str] = set()
    for i, item in enumerate(given):
        kind = item.get("type") or "message"
        if kind == "message":
            messages.append(TextMessage(_text(item["content"], i), item["role"]))
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            called.add(item["call_id"])
            before = messages[-1] if messages else None
            if before is not None and before.role == "assistant":
                calls = [*(before.model_extra or {}).get("tool_calls", []), call]
                messages[-1] = replace(before, model_extra={"tool_calls": calls})
            else:
                messages.append(TextMessage(None, "assistant", model_extra={"tool_calls": [call]}))
        elif kind == "function_call_output":
            if item["call_id"] not in called:
                raise InvalidInput(
                    f"function_call_output {item['call_id']} answers no function_call of the "
                    "input: send the call before its output (alma records what the character "
                    "did as text, not the call)",
                    f"input[{i}]",
                )
            output = _text(item["output"], i, "output")
            messages.append(
                TextMessage(output, "tool", model_extra={"tool_call_id": item["call_id"]})
            )
        else:
            raise Unsupported(f"{kind} items are not supported: {_ITEMS}", f"input[{i}]")
    return messages


def _text(content: str | Sequence[Mapping[str, Any]], index: int, field: str = "content") -> str:
    """An item's text: as given, or its text parts joined by line breaks."""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.get("type") not in _TEXT:
            raise Unsupported(
                f"{part.get('type')} content is not supported: the model alma talks to is given "
                "text only; send input_text parts",
                f"input[{index}].{field}[{j}]",
            )
        texts.append(part.get("text") or "")
    return "\n".join(texts)


def _asked(
    fields: Mapping[str, Any],
    instructions: str | None,
    previous_response_id: str | None,
    max_tokens: int | None,
    temperature: float | None,
) -> dict[str, Any]:
    """What a response shows of its request (OpenAI's defaults for what it did not say)."""
    return {
        "instructions": instructions,
        "max_output_tokens": max_tokens,
        "metadata": fields.get("metadata") or {},
        "parallel_tool_calls": fields.get("parallel_tool_calls", True),
        "previous_response_id": previous_response_id,
        "store": True,
        "temperature": temperature,
        "text": fields.get("text") or {"format": {"type": "text"}},
        "tool_choice": fields.get("tool_choice", "auto"),
        "tools": fields.get("tools") or [],
        "top_p": fields.get("top_p"),
    }


def _shown(response_id: str, created: int, model: str, asked: dict[str, Any]) -> dict[str, Any]:
    return {"id": response_id, "created_at": created, "model": model, "asked": asked}


def _response(
    shown: dict[str, Any],
    status: str,
    output: list[dict[str, Any]] | None = None,
    usage: Mapping[str, int] | None = None,
    alma: dict[str, Any] | None = None,
    incomplete: str = "max_output_tokens",
    error: dict[str, str] | None = None,
) -> dict[str, Any]:
    """OpenAI's `response` object, with alma's part when the turn is done."""
    response = {
        "id": shown["id"],
        "object": "response",
        "created_at": shown["created_at"],
        "status": status,
        "error": error,
        "incomplete_details": {"reason": incomplete} if status == "incomplete" else None,
        "model": shown["model"],
        "output": output or [],
        **shown["asked"],
        "usage": None if usage is None else _usage(usage),
    }
    if alma is not None:
        response["alma"] = alma
    return response


def _output(
    reply_id: UUID, text: str | None, calls: Sequence[Mapping[str, Any]], status: str
) -> list[dict[str, Any]]:
    """The output items: the message (when the model wrote, or called nothing), then a
    `function_call` for each tool it called."""
    items = [_message(f"msg_{reply_id.hex}", text or "", status)] if text or not calls else []
    for i, call in enumerate(calls):
        function = call["function"]
        items.append(
            {
                "type": "function_call",
                "id": f"fc_{reply_id.hex}_{i}",
                "call_id": call["id"],
                "name": function["name"],
                "arguments": function["arguments"],
                "status": status,
            }
        )
    return items


def _message(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [_text_part(text)]
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _usage(usage: Mapping[str, int]) -> dict[str, Any]:
    return {
        "input_tokens": usage["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": usage["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage["total_tokens"],
    }
