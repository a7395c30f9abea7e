"""Refuses text no store can hold (`domain.rules.bad_character`) at the door, before any route,
key check or write: in the path, in the query string and in every string of a JSON body, object
keys included. A lone surrogate such as JSON's "\\ud800" would otherwise reach the event store,
which cannot encode it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alma.api.errors import ApiError, error_response
from alma.domain.rules import bad_character


class TextCheck:
    """ASGI middleware: 422 `invalid_input` naming the field for a character we refuse, 400
    `bad_request` for bytes that are not UTF-8. A body that passes reaches the app unchanged."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            check_url(scope)
        except ApiError as refused:
            await _refuse(refused, scope, receive, send)
            return
        if not _takes_json(scope):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        try:
            check_body(b"".join(m.get("body", b"") for m in messages))
        except ApiError as refused:
            await _refuse(refused, scope, receive, send)
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def check_url(scope: Scope) -> None:
    path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogatepass")
    _check(_decoded(unquote_to_bytes(path), "path"), "path")
    query: bytes = scope.get("query_string", b"")
    for pair in query.split(b"&"):
        name, _, value = pair.replace(b"+", b" ").partition(b"=")
        name_text = _decoded(unquote_to_bytes(name), "query")
        _check(name_text, "query", "a query parameter name")
        field = f"query.{name_text}"
        _check(_decoded(unquote_to_bytes(value), field), field)


def check_body(body: bytes) -> None:
    """Every string of a JSON body, an object's keys before its values; a body that is not JSON
    is the route's to refuse (as broken JSON or as the wrong media type)."""
    if not body:
        return
    text = _decoded(body, "body")
    # Only a \u escape can make a refused character out of characters we accept, so a body with
    # neither passes without being parsed (a second time: the route parses it too).
    if "\\u" not in text and bad_character(text) is None:
        return
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return
    for field, value, is_key in _strings(document):
        _check(value, field, f"a key of {field}" if is_key else field)


def _strings(document: Any) -> Iterator[tuple[str, str, bool]]:
    """(field, string, whether it is an object key) for every string, depth first without
    recursion (a deep document must not exhaust the stack)."""
    stack: list[tuple[str, Any]] = [("body", document)]
    while stack:
        field, value = stack.pop()
        if isinstance(value, str):
            yield field, value, False
        elif isinstance(value, dict):
            children = []
            for key, item in value.items():
                yield field, key, True
                children.append((f"{field}.{key}", item))
            stack.extend(reversed(children))
        elif isinstance(value, list):
            stack.extend(reversed([(f"{field}.{i}", item) for i, item in enumerate(value)]))


def _check(text: str, field: str, what: str | None = None) -> None:
    bad = bad_character(text)
    if bad is not None:
        message = f"{what or field} must not contain {bad}"
        raise ApiError(422, "invalid_input", message, {"field": field})


def _decoded(raw: bytes, field: str) -> str:
    """UTF-8, with encoded surrogates kept as such (so they are named, not replaced)."""
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as error:
        byte = raw[error.start]
        message = f"{field} is not UTF-8: byte 0x{byte:02X} at byte {error.start}"
        raise ApiError(400, "bad_request", message, {"field": field}) from None


def _takes_json(scope: Scope) -> bool:
    """A body FastAPI reads as JSON: no content type, application/json or any +json."""
    content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
    media = content_type.split(";")[0].strip().lower()
    return media in ("", "application/json") or (
        media.startswith("application/") and media.endswith("+json")
    )


async def _refuse(refused: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
    response = error_response(
        refused.status, refused.code, refused.message, refused.details, request=Request(scope)
    )
    await response(scope, receive, send)
