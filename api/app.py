"""The FastAPI application: middleware, error handlers, routes, and the lifespan that wires it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alma.api.breaker import BreakerGate
from alma.api.errors import InternalErrors, error_response, install_error_handlers
from alma.api.idempotency import KeepAnswers, install_idempotency
from alma.api.message_import import declare_bodies
from alma.api.observe import Observe
from alma.api.routes import (
    audio,
    characters,
    chat,
    events,
    health,
    instances,
    lorebooks,
    memories,
    messages,
    openai_compat,
    web,
)
from alma.api.schemas import ERROR_RESPONSES, declare_reply_limit
from alma.api.security import install_security
from alma.api.services import build_services, model_context
from alma.api.text_check import TextCheck
from alma.settings import Settings

DESCRIPTION = """\
alma gives role-play characters a long-term memory.

A **character** (*Personaje*) is a persona; an **instance** (*Instancia*) is one living
variation of it, with its own unique name and its own memory. Every change is an event:
read any past state with `?version=` or `?at=`, replay the stream, audit the memory.

Authenticate with `Authorization: Bearer <key>` (`alma keys create --tenant NAME`).
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings)
        if services.breaker is not None:
            services.breaker.start()
        if settings.run_projections:
            services.start_projections()
        services.start_model()
        app.state.services = services
        try:
            yield
        finally:
            services.close()

    # Swagger UI and ReDoc come from an installed package (fastapi-offline), not a CDN, so /docs
    # works with no internet; the validator badge would fetch from swagger.io, so it is off.
    app = FastAPIOffline(
        title="alma",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        static_url="/docs/static",
        swagger_ui_parameters={"validatorUrl": None},
    )
    install_error_handlers(app)
    install_idempotency(app)
    install_security(app, settings)
    for module in (
        characters,
        instances,
        lorebooks,
        events,
        memories,
        messages,
        chat,
        openai_compat,
        audio,
        health,
    ):
        app.include_router(module.router, responses=ERROR_RESPONSES)
    app.include_router(web.router)
    # Uploads may carry audio up to its own limit (checked exactly by the route), plus the form.
    declare_reply_limit(app.openapi(), model_context(settings))
    declare_bodies(app.openapi())
    upload_bytes = max(settings.max_body_bytes, settings.audio_max_bytes + 64 * 1024)
    import_bytes = max(settings.max_body_bytes, settings.import_max_bytes)
    app.add_middleware(BreakerGate)
    app.add_middleware(TextCheck)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        upload_bytes=upload_bytes,
        import_bytes=import_bytes,
    )
    app.add_middleware(InternalErrors)
    app.add_middleware(KeepAnswers)
    app.add_middleware(Observe)
    app.add_middleware(RequestId)
    return app


class RequestId:
    """Gives every request an id (the caller's X-Request-ID, or a new one), which the events it
    causes record and the response echoes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if 0 < len(given) <= 128 and given.isprintable() else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        await self.app(scope, receive, send_with_id)


def is_upload(path: str) -> bool:
    """The routes that take an audio file."""
    return path in ("/v1/audio/transcriptions", "/v1/audio/translations") or (
        path.startswith("/v1/instances/") and path.endswith("/voice")
    )


def is_import(method: str, path: str) -> bool:
    """The routes that take a whole document from elsewhere: a card, a lorebook, a conversation."""
    path = path.rstrip("/")
    if path in (characters.IMPORT_PATH, lorebooks.IMPORT_PATH):
        return True
    return method == "POST" and path.startswith("/v1/instances/") and path.endswith("/messages")


class BodyLimit:
    """Refuses bodies over the limit with 413 before any route reads them."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        upload_bytes: int | None = None,
        import_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_bytes = upload_bytes or max_bytes
        self.import_bytes = import_bytes or max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        if is_upload(scope["path"]):
            limit = self.upload_bytes
        elif is_import(scope["method"], scope["path"]):
            limit = self.import_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, limit)
            return
        chunks: list[Message] = []
        size = 0
        while True:
            message = await receive()
            chunks.append(message)
            size += len(message.get("body", b""))
            if size > limit:
                await self._refuse(scope, receive, send, limit)
                return
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay() -> Message:
            return chunks.pop(0) if chunks else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = error_response(
            413,
            "payload_too_large",
            f"the body is larger than {limit} bytes",
            request=Request(scope),
        )
        await response(scope, receive, send)
