"""OpenAI-compatible routes: point any OpenAI client at alma and name an instance as the model
(the turn itself is `chat.openai_compat`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from alma.api.deps import AlmaApp, AppSettings, ChatTurns, CurrentCaller, Index, Listing
from alma.api.errors import model_failure, openai_stream_error
from alma.api.idempotency import RetrySafe
from alma.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ResponsesRequest,
)
from alma.chat import openai_compat, openai_responses
from alma.chat.turns import DEFAULT_REPLY_TOKENS
from alma.llm.client import ModelError

router = APIRouter(tags=["openai-compatible"])
MEMORIES_UNAVAILABLE = "X-Alma-Memories-Unavailable"
MEMORIES_BEHIND = "X-Alma-Memories-Behind"
DEFAULT_TEMPERATURE = 0.8


@router.post("/v1/chat/completions", response_model=None, dependencies=[RetrySafe])
def chat_completions(
    body: ChatCompletionRequest,
    caller: CurrentCaller,
    chat: ChatTurns,
    settings: AppSettings,
) -> JSONResponse | StreamingResponse:
    answer = openai_compat.answer(
        chat,
        caller.tenant,
        body.model,
        body.messages,
        body.max_completion_tokens or body.max_tokens or DEFAULT_REPLY_TOKENS,
        DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
        body.stream,
        caller.actor,
        fields=body.fields(),
        client_instructions=settings.chat_client_instructions,
    )
    return _answered(answer)


@router.post("/v1/completions", response_model=None, dependencies=[RetrySafe])
def completions(
    body: CompletionRequest, caller: CurrentCaller, chat: ChatTurns
) -> JSONResponse | StreamingResponse:
    """OpenAI's legacy completions: the prompt is the user's turn, the reply the completion."""
    answer = openai_compat.answer(
        chat,
        caller.tenant,
        body.model,
        openai_compat.prompt_turn(body.prompt),
        body.max_tokens or DEFAULT_REPLY_TOKENS,
        DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
        body.stream,
        caller.actor,
        fields=body.fields(),
        legacy_completion=True,
    )
    return _answered(openai_compat.as_text_completion(answer))


@router.post("/v1/responses", response_model=None, dependencies=[RetrySafe])
def responses(
    body: ResponsesRequest,
    caller: CurrentCaller,
    chat: ChatTurns,
    settings: AppSettings,
) -> JSONResponse | StreamingResponse:
    """OpenAI's Responses API: the input's last user message is the turn; streaming, the
    Responses events (`event:` and `data:` lines)."""
    answer = openai_responses.answer(
        chat,
        caller.tenant,
        body.model,
        body.input_items(),
        body.instructions,
        body.previous_response_id,
        body.max_output_tokens or DEFAULT_REPLY_TOKENS,
        DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
        body.stream,
        caller.actor,
        fields=body.fields(),
        client_instructions=settings.chat_client_instructions,
    )
    if isinstance(answer.body, openai_responses.Events):
        return StreamingResponse(
            _response_events(answer.body), media_type="text/event-stream", headers=_headers(answer)
        )
    return JSONResponse(answer.body, headers=_headers(answer))


@router.get("/v1/responses/{response_id}")
def response(response_id: str, caller: CurrentCaller, app: AlmaApp) -> dict[str, Any]:
    """A response as its reply is recorded."""
    return openai_responses.stored(app, caller.tenant, response_id)


@router.get("/v1/models")
def models(caller: CurrentCaller, app: AlmaApp, listing: Listing) -> dict[str, Any]:
    """Every instance this key can talk to; its id is the `model` to send."""
    return openai_compat.models(app, listing.view, caller.tenant, listing.caught_up)


@router.get("/v1/models/{model:path}")
def model(model: str, caller: CurrentCaller, app: AlmaApp) -> dict[str, Any]:
    """One instance, by id or as '<character>/<instance>', as OpenAI shows a model."""
    return openai_compat.model(app, caller.tenant, model)


@router.post("/v1/embeddings")
def embeddings(body: EmbeddingRequest, caller: CurrentCaller, index: Index) -> dict[str, Any]:
    """Vectors from alma's own embedding model, the one its memory index uses."""
    embedder = index.embedder
    return openai_compat.embeddings(
        embedder.encode, embedder.model_name, body.input, body.encoding_format, body.dimensions
    )


def _answered(answer: openai_compat.Answer) -> JSONResponse | StreamingResponse:
    headers = _headers(answer)
    if isinstance(answer.body, dict):
        return JSONResponse(answer.body, headers=headers)
    return StreamingResponse(_events(answer.body), media_type="text/event-stream", headers=headers)


def _headers(answer: openai_compat.Answer) -> dict[str, str]:
    # OpenAI's shape has no room for it: a client that reads headers learns that the vector
    # store was down and the reply was made without long-term memory, or that the memory index
    # had not caught up with the instance's latest write.
    headers = {MEMORIES_UNAVAILABLE: "true"} if answer.memories_unavailable else {}
    if answer.memories_behind:
        headers[MEMORIES_BEHIND] = "true"
    return headers


def _events(chunks: Iterator[dict[str, Any]]) -> Iterator[str]:
    try:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    except ModelError as error:
        yield f"data: {json.dumps(openai_stream_error(error), ensure_ascii=False)}\n\n"
    yield "data: [DONE]\n\n"


def _response_events(events: openai_responses.Events) -> Iterator[str]:
    def sent(event: dict[str, Any]) -> str:
        return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"

    try:
        for event in events:
            yield sent(event)
    except ModelError as error:
        failure = model_failure(error)
        for event in events.failed(failure.code, failure.message):
            yield sent(event)
