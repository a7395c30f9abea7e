"""The OpenAI-compatible layer: OpenAI's requests in, one chat turn (or alma's embeddings) out.

The model is an instance, named by id or as '<character>/<instance>'. The request's last user
message is the new turn: it is recorded and answered like any other chat turn. The client's
earlier user/assistant messages stand in for the recent conversation (they are what the client
shows), each matched to the turn the instance recorded, so none is recorded again or comes back
as a recollection; alma's memory supplies everything else. The client's system messages follow
the character's persona (unless the setting turns them off); a last assistant message is the
start of the reply, which the model continues; the model's tool calls after the user's message
and their results are what it goes on from. Sampling fields, tools and `response_format` go to
the model as they are; a field alma cannot honour is refused by name (`Unsupported`), never
dropped.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import numpy as np

from alma.chat.prompt import Turn
from alma.chat.turns import Chat, TurnResult
from alma.domain import Actor, Alma, Instance, InvalidInput, NotFound, ToolResult
from alma.domain.rules import blank, valid_speaker, valid_text
from alma.llm import tokens
from alma.projections import Listings

# Passed to the model as they are (llama.cpp takes the sampling fields; tools need a model that
# calls them).
SAMPLING = ("stop", "seed", "top_p", "presence_penalty", "frequency_penalty", "user", "logit_bias")
TOOLS = ("tools", "tool_choice", "parallel_tool_calls", "functions", "function_call")
PASSED = (*SAMPLING, *TOOLS, "response_format")
# Change nothing here: usage always ends a stream; nothing is stored at OpenAI.
IGNORED = ("stream_options", "store", "metadata", "service_tier")
_SPEECH = "alma answers chat in text; /v1/audio/speech speaks it"
NOT_HONOURED = {
    "n": "alma records one reply per turn: ask for one",
    "logprobs": "alma does not return log probabilities",
    "top_logprobs": "alma does not return log probabilities",
    "modalities": _SPEECH,
    "audio": _SPEECH,
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "reasoning_effort": "the model's reasoning is not configurable here",
}
# What each of those may say and still ask for nothing alma does not do.
_HARMLESS: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "modalities": (["text"],),
}
_NOT_A_CHAT = "a legacy completion answers text; use /v1/chat/completions"
TEXT_COMPLETION_REFUSED = {
    "echo": "the prompt is a turn of the conversation, not text to echo",
    "suffix": "alma answers the prompt; it does not insert text",
    "best_of": "alma records one reply per turn: ask for one",
    **{name: _NOT_A_CHAT for name in (*TOOLS, "response_format")},
}
_TEXT_COMPLETION_HARMLESS: dict[str, tuple[Any, ...]] = {
    "echo": (False,),
    "best_of": (1,),
    "suffix": ("",),
}
MAX_EMBEDDING_INPUTS = 2048  # as OpenAI's


class Part(Protocol):
    """One part of a message's content."""

    @property
    def type(self) -> str: ...

    @property
    def text(self) -> str | None: ...


class Message(Protocol):
    """One of the client's messages."""

    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str | Sequence[Part] | None: ...

    @property
    def name(self) -> str | None: ...

    @property
    def model_extra(self) -> dict[str, Any] | None:
        """OpenAI's other fields: an assistant's `tool_calls`, a tool's `tool_call_id`."""


@dataclass(frozen=True)
class TextMessage:
    """A message made here from another request's shape: a legacy completion's prompt (the
    user's), or a Responses input item."""

    content: str | None
    role: str = "user"
    name: str | None = None
    model_extra: dict[str, Any] | None = None


class NoUserTurn(InvalidInput):
    """The request has no user message with text to answer."""


class Unsupported(InvalidInput):
    """A request field alma cannot honour, refused rather than dropped (`field` names it)."""


@dataclass(frozen=True)
class Answer:
    """A `chat.completion`, or while it streams its `chat.completion.chunk`s, which end with the
    usage and alma's part of the answer (a model that fails midway raises `ModelError`)."""

    body: dict[str, Any] | Iterator[dict[str, Any]]
    memories_unavailable: bool  # the vector store was down: answered without long-term memory
    memories_behind: bool  # the index lacked the instance's latest writes: answered without
    reply_id: UUID | None = None  # the reply's, known before it is recorded


def sampling(
    fields: Mapping[str, Any],
    refused: Mapping[str, str] = NOT_HONOURED,
    harmless: Mapping[str, tuple[Any, ...]] = _HARMLESS,
) -> dict[str, Any]:
    """The request's sampling fields for the model; any other field that asks for something
    raises `Unsupported` naming it and why."""
    passed: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None or name in IGNORED or value in harmless.get(name, ()):
            continue
        if name in PASSED and name not in refused:
            passed[name] = value
            continue
        reason = refused.get(name) or (
            "alma does not take it; the fields it passes to the model: " + ", ".join(PASSED)
        )
        raise Unsupported(f"{name} is not supported: {reason}", name)
    return passed


def text_completion_sampling(fields: Mapping[str, Any]) -> dict[str, Any]:
    """`sampling` for a legacy completion, which has fields of its own."""
    return sampling(
        fields,
        {**NOT_HONOURED, **TEXT_COMPLETION_REFUSED},
        {**_HARMLESS, **_TEXT_COMPLETION_HARMLESS},
    )


def prompt_turn(prompt: str | Sequence[str]) -> list[TextMessage]:
    """A legacy completion's prompt (a text, or a list of one) as the conversation: one user
    message."""
    return [TextMessage(prompt if isinstance(prompt, str) else prompt[0])]


def answer(
    chat: Chat,
    tenant: str,
    model: str,
    messages: Sequence[Message],
    max_tokens: int,
    temperature: float,
    stream: bool,
    actor: Actor,
    *,
    fields: Mapping[str, Any] | None = None,
    legacy_completion: bool = False,
    client_instructions: bool = True,
) -> Answer:
    """The instance named by `model` answers the last user message of `messages` (continuing
    a last assistant message, or going on from the tool results after it), streaming or not.
    `fields`: the request's others, passed to the model or refused (as a legacy completion's
    when `legacy_completion`), once the model is known to be an instance."""
    instance = instance_of(chat.app, tenant, model)
    options = (text_completion_sampling if legacy_completion else sampling)(fields or {})
    texts = [_text(message, i) for i, message in enumerate(messages)]
    last = len(messages) - 1
    prefill = ""
    exchange: list[dict[str, Any]] = []
    if last >= 1 and messages[last].role in ("tool", "function"):
        while last >= 0 and messages[last].role != "user":
            exchange.insert(0, _exchanged(messages[last], texts[last], last))
            last -= 1
    elif last >= 1 and messages[last].role == "assistant" and texts[last]:
        prefill, last = texts[last], last - 1
    if last < 0 or messages[last].role != "user" or not texts[last]:
        raise NoUserTurn(
            "the last message must be the user's, with text content (or, after it, the start "
            "of the reply, or tool results)",
            "messages",
        )
    for message in messages:  # the user's is recorded; every one is held to the same rule
        valid_speaker(message.name, "name")
    results = _tool_results(exchange, last + 1)
    history = [
        Turn(m.role, text)
        for m, text in zip(messages[:last], texts, strict=False)
        if m.role in ("user", "assistant") and text
    ]
    instructions = [
        text
        for m, text in zip(messages, texts, strict=True)
        if m.role in ("system", "developer") and text.strip()
    ]
    turn = chat.prepare(
        tenant,
        instance.id,
        texts[last],
        max_tokens,
        temperature,
        history=history or None,
        name=messages[last].name,
        instructions="\n\n".join(instructions) if client_instructions else "",
        prefill=prefill,
        exchange=exchange,
        tool_results=results,
        sampling=options,
        instance=instance,
    )
    created = int(time.time())
    if stream:
        chunks = _chunks(chat.stream(turn, actor), model, created)
        return Answer(chunks, turn.memories_unavailable, turn.memories_behind, turn.reply_id)
    result = chat.complete(turn, actor)
    completion = {
        "id": f"chatcmpl-{result.reply_id.hex}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": _message(result),
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": _usage(result),
        "alma": _alma(result),
    }
    return Answer(completion, turn.memories_unavailable, turn.memories_behind, turn.reply_id)


def as_text_completion(chat_answer: Answer) -> Answer:
    """The same answer as a legacy `text_completion` (or its chunks): the reply is the text."""
    body = chat_answer.body
    if isinstance(body, dict):
        choice = body["choices"][0]
        text = {
            **body,
            "id": body["id"].replace("chatcmpl-", "cmpl-", 1),
            "object": "text_completion",
            "choices": [
                {
                    "index": 0,
                    "text": choice["message"]["content"],
                    "logprobs": None,
                    "finish_reason": choice["finish_reason"],
                }
            ],
        }
        return Answer(text, chat_answer.memories_unavailable, chat_answer.memories_behind)
    return Answer(_text_chunks(body), chat_answer.memories_unavailable, chat_answer.memories_behind)


def models(
    app: Alma, listings: Listings, tenant: str, caught_up: Callable[[], None]
) -> dict[str, Any]:
    """Every instance of the tenant, as OpenAI lists models: its id is the `model` to send.
    `caught_up` returns once the listings hold every write so far (read-your-writes)."""
    caught_up()
    listed, after = [], 0
    while True:
        page = listings.select("instance", tenant, after, 500)
        listed += page
        if len(page) < 500:
            break
        after = page[-1].position
    data = []
    for entry in listed:
        try:
            data.append(_model(tenant, app.instance(tenant, entry.id)))
        except NotFound:
            continue
    return {"object": "list", "data": data}


def model(app: Alma, tenant: str, name: str) -> dict[str, Any]:
    """One instance as OpenAI shows a model, named by id or as '<character>/<instance>'."""
    return _model(tenant, instance_of(app, tenant, name))


def embeddings(
    encode: Callable[[Sequence[str]], list[list[float]]],
    model_name: str,
    inputs: str | Sequence[str],
    encoding_format: str = "float",
    dimensions: int | None = None,
) -> dict[str, Any]:
    """OpenAI's embeddings answer, made with alma's own embedding model (`encode`, named
    `model_name`: unit vectors)."""
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    if not texts or len(texts) > MAX_EMBEDDING_INPUTS:
        raise InvalidInput(f"input must hold 1 to {MAX_EMBEDDING_INPUTS} texts", "input")
    for i, text in enumerate(texts):
        if blank(text):
            raise InvalidInput(f"input[{i}] has no visible character", "input")
        valid_text(text, "input")
    vectors = encode(texts)
    size = len(vectors[0])
    if dimensions is not None and dimensions != size:
        raise Unsupported(
            f"dimensions is not supported: {model_name} makes vectors of {size}",
            "dimensions",
        )
    used = sum(tokens.count(text) for text in texts)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encoded(vector, encoding_format)}
            for i, vector in enumerate(vectors)
        ],
        "model": model_name,
        "usage": {"prompt_tokens": used, "total_tokens": used},
    }


def _encoded(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # what the openai SDK asks for: little-endian float32
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector


def _text(message: Message, index: int) -> str:
    """A message's text: its content, or its text parts joined by line breaks."""
    content = message.content
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(content):
        if part.type != "text":
            raise Unsupported(
                f"{part.type} content is not supported: the model alma talks to is given text "
                "only; send text parts",
                f"messages[{index}].content[{j}]",
            )
        texts.append(part.text or "")
    return "\n".join(texts)


def _exchanged(message: Message, text: str, index: int) -> dict[str, Any]:
    """A message of a tool exchange, as the model reads it: an assistant's tool calls, or a
    tool's (or a legacy function's) result."""
    if message.role not in ("assistant", "tool", "function"):
        raise NoUserTurn(
            f"after the user's last message only tool calls and results may come, not a "
            f"{message.role} message",
            f"messages[{index}]",
        )
    extra = message.model_extra or {}
    exchanged: dict[str, Any] = {"role": message.role, "content": text or None}
    for field in ("tool_calls", "tool_call_id", "function_call"):
        if extra.get(field) is not None:
            exchanged[field] = extra[field]
    if message.name is not None:
        exchanged["name"] = message.name
    return exchanged


def _tool_results(exchange: Sequence[Mapping[str, Any]], first: int) -> list[ToolResult]:
    """The tool (and legacy function) results of an exchange that starts at `messages[first]`,
    checked before anything is recorded. A tool's names the call it answers (`tool_call_id`,
    required) and, unless it says its own `name`, that call's function."""
    called = _called_functions(exchange)
    results = []
    for i, message in enumerate(exchange, first):
        role, where = message["role"], f"messages[{i}]."
        if role == "assistant":
            continue
        call_id = message.get("tool_call_id") if role == "tool" else None
        if role == "tool" and not isinstance(call_id, str):
            raise InvalidInput(
                "a tool message needs the tool_call_id of the call it answers",
                where + "tool_call_id",
            )
        name = message.get("name") or (called.get(call_id) if call_id else None)
        results.append(ToolResult.checked(call_id, name, message["content"] or "", where))
    return results


def _called_functions(exchange: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The function each of the exchange's tool calls names, by the call's id (what a client
    sends is taken as it comes: a call not in OpenAI's shape names none)."""
    called = {}
    for message in exchange:
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(function, Mapping):
                call_id, name = call.get("id"), function.get("name")
                if isinstance(call_id, str) and isinstance(name, str):
                    called[call_id] = name
    return called


def _message(result: TurnResult) -> dict[str, Any]:
    """The assistant's message in the answer: what the model wrote in this turn, and the tools
    it called."""
    if not result.tool_calls:
        return {"role": "assistant", "content": result.text}
    return {"role": "assistant", "content": result.text or None, "tool_calls": result.tool_calls}


def _model(tenant: str, instance: Instance) -> dict[str, Any]:
    return {
        "id": str(instance.id),
        "object": "model",
        "created": int(instance.created_on.timestamp()),
        "owned_by": tenant,
        "name": instance.name,
    }


def instance_of(app: Alma, tenant: str, model: str) -> Instance:
    """The instance a request's `model` names, by id or as '<character>/<instance>', loaded
    once (a turn goes on with it)."""
    try:
        instance_id: UUID | None = UUID(model)
    except ValueError:
        instance_id = None
    try:
        if instance_id is not None:
            return app.instance(tenant, instance_id)
        character_name, _, instance_name = model.rpartition("/")
        instance = app.instance(tenant, app.instance_id_by_name(tenant, instance_name))
        if character_name:
            character = app.character(tenant, instance.character_id)
            if character_name.casefold() != character.name.casefold():
                raise NotFound(f"no instance is named {model!r}")
        return instance
    except NotFound as error:
        raise NotFound(
            f"{error}: the model is one of your instances, by id or as "
            "'<character>/<instance>'; GET /v1/models lists them"
        ) from None


def _usage(result: TurnResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def _alma(result: TurnResult) -> dict[str, Any]:
    return {
        "turn": {"version": result.version, "reply_id": str(result.reply_id)},
        "answered_by": result.model,
        "memories_unavailable": result.memories_unavailable,
        "memories_behind": result.memories_behind,
        "memories_used": [
            {"id": h.doc.doc_id, "text": h.doc.text, "score": round(h.score, 6)}
            for h in result.memories_used
        ],
        "lore_used": [e.id for e in result.lore_used],
    }


def _chunks(
    pieces: Iterator[str | TurnResult], model: str, created: int
) -> Iterator[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{created}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }

    yield chunk({"role": "assistant"}, None)
    for piece in pieces:
        if isinstance(piece, TurnResult):
            if piece.tool_calls:  # each whole, in one delta: a client joins pieces, even one
                calls = [{"index": i, **call} for i, call in enumerate(piece.tool_calls)]
                yield chunk({"tool_calls": calls}, None)
            yield chunk({}, piece.finish_reason, usage=_usage(piece), alma=_alma(piece))
        else:
            yield chunk({"content": piece}, None)


def _text_chunks(chunks: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for chunk in chunks:
        choice = chunk["choices"][0]
        if choice["delta"].get("role"):
            continue  # a text completion has no role to announce
        yield {
            **chunk,
            "id": chunk["id"].replace("chatcmpl-", "cmpl-", 1),
            "object": "text_completion",
            "choices": [
                {
                    "index": 0,
                    "text": choice["delta"].get("content", ""),
                    "logprobs": None,
                    "finish_reason": choice["finish_reason"],
                }
            ],
        }
