"""OpenAI-compatible chat: point any OpenAI client at alma and name an instance as the model.

The request's last message is the user's new turn: it is recorded and answered like any other
chat turn. The client's earlier user/assistant messages stand in for the recent conversation
(they are what the client shows); alma's memory supplies everything else. Client system
messages are not used: the character's persona is the system prompt.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, Literal
from uuid import UUID

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from alma.api.deps import Caller, CurrentCaller, Svc
from alma.api.errors import ApiError
from alma.api.services import Services
from alma.chat.prompt import Turn
from alma.chat.turns import TurnResult
from alma.domain import NotFound
from alma.llm.client import ModelError

router = APIRouter(tags=["openai-compatible"])
MEMORIES_UNAVAILABLE = "X-Alma-Memories-Unavailable"


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | None = None


class ChatCompletionRequest(BaseModel):
    """OpenAI's request; fields alma does not use (top_p, n, user, ...) are accepted."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="an instance id, or '<character>/<instance>' by name")
    messages: list[OpenAIMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)


@router.post("/v1/chat/completions", response_model=None)
def chat_completions(
    body: ChatCompletionRequest, caller: CurrentCaller, svc: Svc
) -> JSONResponse | StreamingResponse:
    instance_id = _instance_of(svc, caller, body.model)
    last = body.messages[-1]
    if last.role != "user" or not last.content:
        raise ApiError(
            422,
            "invalid_request",
            "the last message must be the user's, with text content",
            {"field": "messages"},
        )
    history = [
        Turn(m.role, m.content)
        for m in body.messages[:-1]
        if m.role in ("user", "assistant") and m.content
    ]
    turn = svc.chat.prepare(
        caller.tenant,
        instance_id,
        last.content,
        body.max_completion_tokens or body.max_tokens or 512,
        0.8 if body.temperature is None else body.temperature,
        history=history or None,
    )
    created = int(time.time())
    # OpenAI's shape has no room for it: a client that reads headers learns that the vector
    # store was down and the reply was made without long-term memory.
    headers = {MEMORIES_UNAVAILABLE: "true"} if turn.memories_unavailable else None
    if not body.stream:
        result = svc.chat.complete(turn, caller.actor)
        reply = {
            "id": f"chatcmpl-{result.reply_id.hex}",
            "object": "chat.completion",
            "created": created,
            "model": body.model,
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
        return JSONResponse(reply, headers=headers)
    chunks = _chunks(svc.chat.stream(turn, caller.actor), body.model, created)
    return StreamingResponse(chunks, media_type="text/event-stream", headers=headers)


@router.get("/v1/models")
def models(caller: CurrentCaller, svc: Svc) -> dict[str, Any]:
    """Every instance this key can talk to; its id is the `model` to send."""
    listed, after = [], 0
    while True:
        page = svc.listings_view.select("instance", caller.tenant, after, 500)
        listed += page
        if len(page) < 500:
            break
        after = page[-1].position
    data = []
    for entry in listed:
        try:
            instance = svc.app.instance(caller.tenant, entry.id)
        except NotFound:
            continue
        data.append(
            {
                "id": str(instance.id),
                "object": "model",
                "created": int(instance.created_on.timestamp()),
                "owned_by": caller.tenant,
                "name": instance.name,
            }
        )
    return {"object": "list", "data": data}


def _instance_of(svc: Services, caller: Caller, model: str) -> UUID:
    try:
        instance_id = UUID(model)
    except ValueError:
        character_name, _, instance_name = model.rpartition("/")
        instance_id = svc.app.instance_id_by_name(caller.tenant, instance_name)
        character = svc.app.character(
            caller.tenant, svc.app.instance(caller.tenant, instance_id).character_id
        )
        if character_name and character_name.casefold() != character.name.casefold():
            raise NotFound(f"no instance is named {model!r}") from None
    svc.app.instance(caller.tenant, instance_id)
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
        "memories_used": [
            {"id": h.doc.doc_id, "text": h.doc.text, "score": round(h.score, 6)}
            for h in result.memories_used
        ],
    }


def _chunks(pieces: Iterator[str | TurnResult], model: str, created: int) -> Iterator[str]:
    def chunk(delta: dict[str, str], finish: str | None, **extra: Any) -> str:
        body = {
            "id": f"chatcmpl-{created}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    try:
        yield chunk({"role": "assistant"}, None)
        for piece in pieces:
            if isinstance(piece, TurnResult):
                yield chunk({}, "stop", usage=_usage(piece), alma=_alma(piece))
            else:
                yield chunk({"content": piece}, None)
    except ModelError as error:
        failure = {"error": {"message": error.message, "type": "api_error", "code": None}}
        yield f"data: {json.dumps(failure, ensure_ascii=False)}\n\n"
    yield "data: [DONE]\n\n"
