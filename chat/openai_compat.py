"""The OpenAI-compatible turn: OpenAI's chat messages in, one chat turn, OpenAI's answer out.

The model is an instance, named by id or as '<character>/<instance>'. The request's last message
is the user's new turn: it is recorded and answered like any other chat turn. The client's
earlier user/assistant messages stand in for the recent conversation (they are what the client
shows), each matched to the turn the instance recorded, so none is recorded again or comes back
as a recollection; alma's memory supplies everything else. Client system messages are not used: the
character's persona is the system prompt.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

from alma.chat.prompt import Turn
from alma.chat.turns import Chat, TurnResult
from alma.domain import Actor, Alma, InvalidInput, NotFound
from alma.domain.rules import valid_speaker
from alma.projections import ListingView


class Message(Protocol):
    """One of the client's messages."""

    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str | None: ...

    @property
    def name(self) -> str | None: ...


class NoUserTurn(InvalidInput):
    """The request's last message is not the user's, with text: there is nothing to answer."""


@dataclass(frozen=True)
class Answer:
    """A `chat.completion`, or while it streams its `chat.completion.chunk`s, which end with the
    usage and alma's part of the answer (a model that fails midway raises `ModelError`)."""

    body: dict[str, Any] | Iterator[dict[str, Any]]
    memories_unavailable: bool  # the vector store was down: answered without long-term memory
    memories_behind: bool  # the index lacked the instance's latest writes: answered without


def answer(
    chat: Chat,
    tenant: str,
    model: str,
    messages: Sequence[Message],
    max_tokens: int,
    temperature: float,
    stream: bool,
    actor: Actor,
) -> Answer:
    """The instance named by `model` answers the last of `messages`, streaming or not."""
    instance_id = _instance_of(chat.app, tenant, model)
    last = messages[-1] if messages else None
    if last is None or last.role != "user" or not last.content:
        raise NoUserTurn("the last message must be the user's, with text content", "messages")
    for message in messages:  # the last one's is recorded; every one is held to the same rule
        valid_speaker(message.name, "name")
    history = [
        Turn(m.role, m.content)
        for m in messages[:-1]
        if m.role in ("user", "assistant") and m.content
    ]
    turn = chat.prepare(
        tenant,
        instance_id,
        last.content,
        max_tokens,
        temperature,
        history=history or None,
        name=last.name,
    )
    created = int(time.time())
    if stream:
        chunks = _chunks(chat.stream(turn, actor), model, created)
        return Answer(chunks, turn.memories_unavailable, turn.memories_behind)
    result = chat.complete(turn, actor)
    completion = {
        "id": f"chatcmpl-{result.reply_id.hex}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.reply},
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(result),
        "alma": _alma(result),
    }
    return Answer(completion, turn.memories_unavailable, turn.memories_behind)


def models(app: Alma, listings: ListingView, tenant: str) -> dict[str, Any]:
    """Every instance of the tenant, as OpenAI lists models: its id is the `model` to send."""
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
            instance = app.instance(tenant, entry.id)
        except NotFound:
            continue
        data.append(
            {
                "id": str(instance.id),
                "object": "model",
                "created": int(instance.created_on.timestamp()),
                "owned_by": tenant,
                "name": instance.name,
            }
        )
    return {"object": "list", "data": data}


def _instance_of(app: Alma, tenant: str, model: str) -> UUID:
    try:
        instance_id = UUID(model)
    except ValueError:
        character_name, _, instance_name = model.rpartition("/")
        instance_id = app.instance_id_by_name(tenant, instance_name)
        character = app.character(tenant, app.instance(tenant, instance_id).character_id)
        if character_name and character_name.casefold() != character.name.casefold():
            raise NotFound(f"no instance is named {model!r}") from None
    app.instance(tenant, instance_id)
    return instance_id


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
    def chunk(delta: dict[str, str], finish: str | None, **extra: Any) -> dict[str, Any]:
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
            yield chunk({}, "stop", usage=_usage(piece), alma=_alma(piece))
        else:
            yield chunk({"content": piece}, None)
