"""The body of a message import, which is either alma's JSON (`MessagesImport`) or a SillyTavern
chat file uploaded as the form field `file`: read into turns, refused as FastAPI refuses a body
(so the API's error handlers answer both alike), and both declared in the OpenAPI schema."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from alma.api.schemas import MessagesImport
from alma.domain import InvalidInput, NewMessage
from alma.domain.chat_file import read_chat_file

FORM = "multipart/form-data"
BODIES: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/MessagesImport"}},
            FORM: {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "a SillyTavern chat file (.jsonl)",
                        }
                    },
                }
            },
        },
    }
}


async def messages_sent(request: Request) -> list[NewMessage]:
    """The turns a message import sends, by its content type."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == FORM:
        form = await request.form()
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidInput("send the chat file as the form field `file`", "file")
        return read_chat_file(await upload.read())
    body = await _json(request, kind)
    return [NewMessage(m.role, m.content, m.timestamp, m.metadata, m.name) for m in body.messages]


async def _json(request: Request, kind: str) -> MessagesImport:
    raw = await request.body()
    if not kind.endswith(("/json", "+json")) or not raw:
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        raise RequestValidationError([missing])
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        position = error.pos if isinstance(error, json.JSONDecodeError) else error.start
        reason = error.msg if isinstance(error, json.JSONDecodeError) else str(error)
        broken = {
            "type": "json_invalid",
            "loc": ("body", position),
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": reason},
        }
        raise RequestValidationError([broken], body=raw.decode("utf-8", "replace")) from None
    try:
        return MessagesImport.model_validate(data)
    except ValidationError as error:
        refused = [{**e, "loc": ("body", *e["loc"])} for e in error.errors()]
        raise RequestValidationError(refused, body=data) from None


def declare_bodies(schema: dict[str, Any]) -> None:
    """Puts `MessagesImport` (named by the route's two bodies) among the schema's components:
    FastAPI adds only the models a route reads itself."""
    declared = MessagesImport.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(declared.pop("$defs", {}))
    components["MessagesImport"] = declared
