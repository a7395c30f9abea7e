"""Chat with an instance: a reply in its character's voice, remembered like everything else."""

from __future__ import annotations

import json
from collections.abc import Iterator
from uuid import UUID

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from alma.api.deps import ChatTurns, CurrentCaller
from alma.api.errors import stream_error
from alma.api.idempotency import RetrySafe
from alma.api.schemas import ChatRequest, ChatResponse
from alma.chat.turns import TurnResult
from alma.llm.client import ModelError

router = APIRouter(tags=["chat"])


@router.post(
    "/v1/instances/{instance_id}/chat",
    response_model=ChatResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
    dependencies=[RetrySafe],
)
def chat(
    instance_id: UUID, body: ChatRequest, caller: CurrentCaller, chat: ChatTurns
) -> ChatResponse | StreamingResponse:
    """With `stream: true`: Server-Sent Events, `data: {"token": "..."}` for each piece of
    the reply, then `event: turn` with the same fields as the plain answer (or `event: error`)."""
    turn = chat.prepare(
        caller.tenant,
        instance_id,
        body.message,
        body.max_tokens,
        body.temperature,
        name=body.user_name,
    )
    if not body.stream:
        return ChatResponse.of(chat.complete(turn, caller.actor))
    return StreamingResponse(
        _events(chat.stream(turn, caller.actor)), media_type="text/event-stream"
    )


def _events(pieces: Iterator[str | TurnResult]) -> Iterator[str]:
    try:
        for piece in pieces:
            if isinstance(piece, TurnResult):
                yield f"event: turn\ndata: {ChatResponse.of(piece).model_dump_json()}\n\n"
            else:
                yield f"data: {json.dumps({'token': piece}, ensure_ascii=False)}\n\n"
    except ModelError as error:
        body = json.dumps(stream_error(error), ensure_ascii=False)
        yield f"event: error\ndata: {body}\n\n"
