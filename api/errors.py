"""The one place that turns errors into HTTP answers: {"error": {code, message, details}}."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import psycopg
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    PersistenceError,
)
from fastapi import FastAPI, Request, params
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alma import metrics
from alma.chat.openai_compat import NoUserTurn, Unsupported
from alma.chat.prompt import PromptTooLarge
from alma.chat.voice_turn import NothingSaid
from alma.domain import DomainError, InvalidInput, NameTaken, NotFound, VersionConflict
from alma.domain.errors import AlreadyStarted
from alma.llm.client import ModelError
from alma.stores.idempotency import ClaimLost
from alma.voice import (
    AudioError,
    AudioTooLarge,
    AudioTooLong,
    BadAudio,
    Busy,
    CannotTranslate,
    NoSpeech,
    NotAudio,
    UnknownLanguage,
    UnknownVoice,
)

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


OPENAI_PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/audio/",
    "/v1/responses",
)
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
    request: Request | None = None,
) -> JSONResponse:
    """On the OpenAI-compatible paths the error also carries OpenAI's `type` and `param`, so
    OpenAI clients read it as their own."""
    metrics.ERRORS.labels(code, str(status)).inc()
    error: dict[str, Any] = {"code": code, "message": message, "details": details}
    if request is not None and request.url.path.startswith(OPENAI_PATHS):
        error["type"] = _OPENAI_TYPES.get(status, "api_error")
        param = details.get("field") if isinstance(details, dict) else None
        if isinstance(details, list) and details:
            param = ".".join(str(p) for p in details[0].get("loc", [])[1:]) or None
        error["param"] = param
    return JSONResponse({"error": error}, status_code=status, headers=headers)


# Errors that mean "the database cannot be reached", from the event store or from our own SQL.
CONNECTION_ERRORS = (
    OperationalError,
    InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)


def lost_connection(error: BaseException) -> bool:
    """Whether the error means the server is gone (not a lock timeout or a cancelled query):
    psycopg gives no SQLSTATE for a refused connection or a pool timeout, class 08 for a broken
    one and 57P01-57P03 while the server shuts down or starts."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, psycopg.Error):
        cause = cause.__cause__
    if not isinstance(cause, psycopg.Error):
        return isinstance(error, InterfaceError)
    state = cause.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


def database_unavailable(request: Request) -> JSONResponse:
    return error_response(
        503,
        "database_unavailable",
        "the database is unreachable; try again shortly",
        headers={"Retry-After": "2"},
        request=request,
    )


def model_failure(error: ModelError) -> ApiError:
    """A model that did not answer: 504 when it was too slow, 503 when the local model is
    missing (`chat_model_unavailable`) or busy past its queue's wait (`chat_model_busy`, with
    Retry-After), 502 otherwise."""
    code = error.code or ("model_timeout" if error.status == 504 else "model_unavailable")
    details = {"upstream_status": error.upstream_status, "attempts": error.attempts}
    headers = None if error.retry_after_s is None else {"Retry-After": str(error.retry_after_s)}
    return ApiError(error.status, code, error.message, details, headers)


def stream_error(error: ModelError) -> dict[str, Any]:
    """The event that ends a stream the model broke off: its 200 went out when the stream began,
    so the event carries the code and message of `model_failure` (the details stay with the HTTP
    answer)."""
    failure = model_failure(error)
    return {"error": {"code": failure.code, "message": failure.message, "details": None}}


def openai_stream_error(error: ModelError) -> dict[str, Any]:
    """The same in the shape OpenAI's SDKs read from a stream (which has no room for alma's
    code)."""
    failure = model_failure(error)
    kind = _OPENAI_TYPES.get(failure.status, "api_error")
    return {"error": {"message": failure.message, "type": kind, "code": None}}


def _from_domain(error: DomainError) -> ApiError:
    if isinstance(error, NotFound):
        details = {"field": error.field} if error.field else None
        return ApiError(404, "not_found", str(error), details)
    if isinstance(error, Unsupported):  # OpenAI's answer to a parameter it does not take
        return ApiError(400, "unsupported_parameter", str(error), {"field": error.field})
    if isinstance(error, NoUserTurn):  # the request's shape, as for any malformed body
        return ApiError(422, "invalid_request", str(error), {"field": error.field})
    if isinstance(error, InvalidInput):
        return ApiError(422, "invalid_input", str(error), {"field": error.field})
    if isinstance(error, NameTaken):
        return ApiError(409, "name_taken", str(error))
    if isinstance(error, AlreadyStarted):
        return ApiError(409, "conversation_started", str(error))
    if isinstance(error, PromptTooLarge):
        return ApiError(
            413,
            "message_too_large",
            str(error),
            {"limit_tokens": error.limit, "message_tokens": error.tokens},
        )
    if isinstance(error, NothingSaid):
        return ApiError(422, "no_speech", str(error))
    if isinstance(error, VersionConflict):
        return ApiError(
            409, "version_conflict", str(error), {"current_version": error.current_version}
        )
    return ApiError(400, "bad_request", str(error))


_AUDIO: dict[type[AudioError], tuple[int, str]] = {
    NotAudio: (415, "not_audio"),
    BadAudio: (422, "bad_audio"),
    NoSpeech: (422, "no_speech"),
    UnknownVoice: (422, "unknown_voice"),
    UnknownLanguage: (422, "unknown_language"),
    CannotTranslate: (400, "cannot_translate"),
    AudioTooLarge: (413, "audio_too_large"),
    AudioTooLong: (413, "audio_too_long"),
    Busy: (503, "speech_busy"),
}


def _takes_form(request: Request) -> bool:
    """Whether the route reads a multipart form (an upload) rather than JSON."""
    body = getattr(request.scope.get("route"), "body_field", None)
    return isinstance(getattr(body, "field_info", None), params.Form)


def allowed_methods(request: Request) -> str:
    """Every method the request's path has (Starlette's 405 names only those of the first route
    that matched the path), and OPTIONS."""
    routes = request.app.router.routes
    methods = {"OPTIONS"} | {
        method
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    }
    return ", ".join(sorted(methods))


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def broken_json(error: json.JSONDecodeError) -> str:
    """What is wrong with a body that is not JSON, and where, in words."""
    return f"the body is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(
            error.status, error.code, error.message, error.details, error.headers, request
        )

    @app.exception_handler(AudioError)
    async def audio_refused(request: Request, error: AudioError) -> JSONResponse:
        status, code = _AUDIO[type(error)]
        headers = {"Retry-After": "1"} if status == 503 else None
        return error_response(status, code, error.message, error.details, headers, request)

    @app.exception_handler(DomainError)
    async def domain_error(request: Request, error: DomainError) -> JSONResponse:
        mapped = _from_domain(error)
        return error_response(
            mapped.status, mapped.code, mapped.message, mapped.details, request=request
        )

    @app.exception_handler(ModelError)
    async def model_failed(request: Request, error: ModelError) -> JSONResponse:
        return await api_error(request, model_failure(error))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "application/json").split(";")[0]
        content_type = content_type.strip().lower()
        body_refused = any(e["loc"][:1] == ("body",) for e in error.errors())
        wanted = "multipart/form-data" if _takes_form(request) else "JSON"
        if body_refused and not (
            content_type == "multipart/form-data"
            if wanted != "JSON"
            else content_type.endswith(("/json", "+json"))
        ):
            return error_response(
                415,
                "unsupported_media_type",
                f"send {wanted}, not {content_type or 'no type'}",
                request=request,
            )
        details = [
            {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in error.errors()
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(part) for part in first["loc"])
        message = f"{where}: {first['msg']}"
        if first.get("type") == "json_invalid" and isinstance(error.body, str):
            raw = error.errors()[0]
            message = broken_json(
                json.JSONDecodeError(raw["ctx"]["error"], error.body, raw["loc"][1])
            )
        return error_response(422, "invalid_request", message, details, request=request)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        code = _HTTP_CODES.get(error.status_code, "error")
        headers = getattr(error, "headers", None)
        if error.status_code == 405:
            headers = {"Allow": allowed_methods(request)}
            if request.method == "OPTIONS":
                return Response(status_code=204, headers=headers)
        return error_response(
            error.status_code, code, str(error.detail), headers=headers, request=request
        )

    @app.exception_handler(ClaimLost)
    async def key_taken_over(request: Request, error: ClaimLost) -> JSONResponse:
        return error_response(
            409,
            "idempotency_key_taken_over",
            "a repeat of this request took its Idempotency-Key over (this one had not written "
            "within ALMA_IDEMPOTENCY_LEASE_S); this one wrote nothing",
            request=request,
        )

    @app.exception_handler(IntegrityError)
    async def lost_race(_: Request, error: IntegrityError) -> JSONResponse:
        return error_response(409, "conflict", "too many concurrent changes; try again")

    async def unreachable(request: Request, error: Exception) -> JSONResponse:
        if not lost_connection(error):
            return await store_down(request, error)
        breaker = getattr(getattr(request.app.state, "services", None), "breaker", None)
        if breaker is not None:
            breaker.trip()
        log.warning("database unreachable: %s", type(error).__name__)
        return database_unavailable(request)

    for kind in CONNECTION_ERRORS:
        app.add_exception_handler(kind, unreachable)

    @app.exception_handler(httpx.TransportError)
    async def vector_store_down(request: Request, error: httpx.TransportError) -> JSONResponse:
        # The model client turns its own transport errors into ModelError: what reaches here is
        # the Chroma server's client.
        log.warning("vector store unreachable: %s", type(error).__name__)
        return error_response(
            503,
            "vector_store_unavailable",
            "the memory index is unreachable; try again shortly",
            headers={"Retry-After": "2"},
            request=request,
        )

    @app.exception_handler(PersistenceError)
    async def store_down(_: Request, error: Exception) -> JSONResponse:
        log.warning("event store unavailable: %s", type(error).__name__)
        return error_response(
            503,
            "event_store_unavailable",
            "the event store is unavailable; try again",
            headers={"Retry-After": "1"},
        )


class InternalErrors:
    """ASGI middleware: an exception no handler answered becomes 500 `internal_error` in the error
    shape with the request id (set by `RequestId`, which wraps this), and its traceback goes to
    the log. It is not raised on, so the server keeps the connection open for the next request.
    A response already under way cannot change its status: that one is raised on as before."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            if started:
                raise
            log.exception("unexpected error")
            request_id = scope.get("state", {}).get("request_id")
            message = f"an unexpected error; the log has it under request id {request_id}"
            response = error_response(
                500, "internal_error", message, {"request_id": request_id}, request=Request(scope)
            )
            await response(scope, receive, send)
