"""`Idempotency-Key` on the routes that write (the IETF httpapi draft's header, as Stripe uses it):
the first request with a key is carried out; a repeat with the same key from the same tenant is
given the first answer (status, headers, body) and carried out no more, for ALMA_IDEMPOTENCY_TTL_S.
The same key with another request is refused (422), a repeat while the first is still under way
too (409). Where the keys live and how a write marks its key: `alma.stores.idempotency`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import Depends, FastAPI, Header, Request, Response
from pydantic.json_schema import SkipJsonSchema
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alma.api.deps import CurrentCaller
from alma.api.errors import ApiError
from alma.api.services import Services
from alma.stores.idempotency import CLAIM, Answer, Claim, Found, IdempotencyKeys

log = logging.getLogger(__name__)

HEADER = b"idempotency-key"
# Printable ASCII, at most 255 characters, no blank at either end (HTTP drops those).
KEY_PATTERN = "^[!-~]([ -~]*[!-~])?$"
REPLAYED = "Idempotent-Replayed"
_HELD = "idempotency"  # where in the request's state the key it holds is kept
# Headers of the first answer that a repeat is not given again: its own are made for it.
_NOT_KEPT = {"content-length", "x-request-id", "date", "server"}
# Answers that do not tell what happened (an unexpected error, a database out of reach): never
# given again; a request that wrote before one is told to a repeat as unanswered.
_UNKNOWN_OUTCOME = {500, 503}


class Replay(Exception):
    """A repeat: the first answer is given instead of carrying the request out."""

    def __init__(self, answer: Answer) -> None:
        super().__init__("a repeat of an answered request")
        self.answer = answer


@dataclass(frozen=True)
class Held:
    keys: IdempotencyKeys
    claim: Claim

    def settle(self, answer: Answer | None) -> None:
        try:
            self.keys.settle(self.claim, answer)
        except Exception:  # the client has its answer; a repeat then finds the key held
            log.warning("the answer to an Idempotency-Key could not be kept", exc_info=True)


async def _retry_safe(
    request: Request,
    caller: CurrentCaller,
    key: Annotated[
        str | SkipJsonSchema[None],
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            pattern=KEY_PATTERN,
            json_schema_extra={"pattern": KEY_PATTERN},
            description="Makes the request safe to retry: a repeat with the same key (and the "
            "same body) gets the first answer, with `Idempotent-Replayed: true`, and is not "
            "carried out again (docs/api.md, Idempotency-Key)",
        ),
    ] = None,
) -> None:
    """Takes the request's key, or answers for it: the first answer, or why not."""
    if key is None:
        return
    services: Services = request.app.state.services
    fingerprint = await _fingerprint(request)
    lookup = await run_in_threadpool(services.idempotency.claim, caller.tenant, key, fingerprint)
    if lookup.found is Found.ANSWERED:
        assert lookup.answer is not None
        raise Replay(lookup.answer)
    if lookup.found is Found.OTHER_REQUEST:
        raise ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was sent with another request (another body or route); "
            "a new request needs a new key",
        )
    if lookup.found is Found.RUNNING:
        raise ApiError(
            409,
            "idempotency_key_in_use",
            "the first request with this Idempotency-Key has not answered yet; "
            "try again shortly for its answer",
            headers={"Retry-After": "1"},
        )
    if lookup.found is Found.UNANSWERED:
        raise ApiError(
            409,
            "idempotency_key_unanswered",
            "the first request with this Idempotency-Key wrote, and its answer was lost (or has "
            "not come within ALMA_IDEMPOTENCY_LEASE_S); it is not carried out again: read back "
            "what it made",
        )
    assert lookup.claim is not None
    CLAIM.set(lookup.claim)  # seen by the writes the route makes (the context is copied)
    request.scope.setdefault("state", {})[_HELD] = Held(services.idempotency, lookup.claim)


RetrySafe = Depends(_retry_safe)
"""For `dependencies=[...]` of every route that writes."""


def fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    """What a repeat must match: the method, path, query and body, hashed."""
    digest = hashlib.sha256()
    for part in (method, path, query):
        digest.update(part.encode() + b"\0")
    digest.update(body)
    return digest.hexdigest()


async def _fingerprint(request: Request) -> str:
    """An upload's by its fields and files: a client sends its retry with a new multipart
    boundary, so the same form is other bytes."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        body = await request.body()
    except RuntimeError:  # the form was read already, for the route's own parameters
        body = await _form_digest(await request.form())
    else:
        if media == "multipart/form-data":
            with contextlib.suppress(MultiPartException):  # malformed: its bytes, then
                body = await _parsed_digest(request, body)
    return fingerprint(request.method, request.url.path, request.url.query, body)


async def _parsed_digest(request: Request, body: bytes) -> bytes:
    """The form parsed apart from the request's own, which the route parses with its limits."""

    async def chunks() -> AsyncGenerator[bytes, None]:
        yield body

    form = await MultiPartParser(request.headers, chunks()).parse()
    try:
        return await _form_digest(form)
    finally:
        await form.close()


async def _form_digest(form: FormData) -> bytes:
    digest = hashlib.sha256()
    for name, value in form.multi_items():
        digest.update(name.encode() + b"\0")
        if isinstance(value, UploadFile):
            await value.seek(0)
            digest.update((value.filename or "").encode() + b"\0" + await value.read())
            await value.seek(0)
        else:
            digest.update(value.encode())
        digest.update(b"\0")
    return digest.digest()


def install_idempotency(app: FastAPI) -> None:
    """The answer to a repeat; and the middleware that keeps first answers (add it outside the
    one that turns unexpected errors into 500s, so that it sees every answer)."""

    @app.exception_handler(Replay)
    async def replay(_: Request, repeat: Replay) -> Response:
        answer = repeat.answer
        response = Response(answer.body, status_code=answer.status)
        response.raw_headers = [
            *((name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers),
            (b"content-length", str(len(answer.body)).encode()),
            (REPLAYED.lower().encode(), b"true"),
        ]
        return response


class KeepAnswers:
    """ASGI middleware: the answer of a request that holds an Idempotency-Key is kept for its
    repeats once it is sent (a stream, once it has ended; one cut short is no answer). Any
    other request passes with one look at its method and headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not any(name == HEADER for name, _ in scope["headers"])
        ):
            await self.app(scope, receive, send)
            return
        status = 0
        headers: list[tuple[str, str]] = []
        body: list[bytes] = []
        ended = False

        async def keep(message: Message) -> None:
            nonlocal status, ended
            if message["type"] == "http.response.start":
                status = message["status"]
                headers.extend(
                    (name.decode("latin-1"), value.decode("latin-1"))
                    for name, value in message.get("headers", [])
                    if name.decode("latin-1").lower() not in _NOT_KEPT
                )
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))
                ended = not message.get("more_body", False)
            await send(message)

        try:
            await self.app(scope, receive, keep)
        finally:
            held = scope.get("state", {}).get(_HELD)
            if isinstance(held, Held):
                known = ended and status not in _UNKNOWN_OUTCOME
                answer = Answer(status, headers, b"".join(body)) if known else None
                with anyio.CancelScope(shield=True):
                    await run_in_threadpool(held.settle, answer)
