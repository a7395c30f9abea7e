"""Text no store can hold is refused at the door, an unexpected error answers in the error shape,
and a body that is not JSON says what is wrong and where: always against a real `alma serve`, on
one keep-alive connection that must keep serving (a server that drops it after a 500 makes the
client's next request fail or reconnect).

The refusals are driven by the server's own /openapi.json: every route, every string of every
body (object keys too), every query and path parameter."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from eventsourcing.persistence import StoredEvent

from alma.api.event_store import open_app
from alma.domain.application import Alma
from alma.settings import Settings
from tests.cli import bearer, create_key, free_port, running, wait_for_health

# A real `alma serve` per store takes a while to start: the fast loop leaves them out.
pytestmark = pytest.mark.slow

# Text no store can hold, and how the refusal names it.
BAD = [
    pytest.param("\ud800", "a lone surrogate (U+D800)", id="lone surrogate"),
    pytest.param("\x00", "the NUL character (U+0000)", id="NUL"),
    pytest.param("\ufffe", "a noncharacter (U+FFFE)", id="noncharacter"),
]


@dataclass
class Server:
    """A real `alma serve` for tenant acme, a client that holds one connection, the server's log
    and the event store it writes."""

    http: httpx.Client
    log: Path
    store: Alma
    character_id: str
    instance_id: str
    memory_id: str
    lorebook_id: str
    entry_id: int

    def written(self) -> int:
        return self.store.recorder.max_notification_id() or 0

    def ids(self, path: str) -> str:
        return path.format(
            character_id=self.character_id,
            instance_id=self.instance_id,
            memory_id=self.memory_id,
            message_id=uuid.uuid4(),
            lorebook_id=self.lorebook_id,
            entry_id=self.entry_id,
            model=self.instance_id,  # the OpenAI-compatible name of an instance
            response_id=f"resp_{uuid.UUID(self.instance_id).hex}{uuid.uuid4().hex}",
        )


@pytest.fixture(scope="module")
def server(module_settings: Settings) -> Iterator[Server]:
    """One server for the module, on each store: its tests are refused and write nothing, but
    for the one that breaks an instance of its own."""
    settings = module_settings
    _, key = create_key(settings, "acme")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = settings.data_dir.parent / "serve.log"
    with running(settings, ["serve", "--port", str(port)], log) as process:
        wait_for_health(base, process, log)
        one_connection = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        with httpx.Client(
            base_url=base, headers=bearer(key), timeout=60, limits=one_connection
        ) as http:
            character = http.post("/v1/characters", json={"name": "Doña Rosa", "description": ""})
            assert character.status_code == 201, character.text
            instance = http.post(
                f"/v1/characters/{character.json()['id']}/instances",
                json={"name": "Rosa", "memory": "Vive en Oaxaca."},
            )
            assert instance.status_code == 201, instance.text
            memory = http.post(
                f"/v1/instances/{instance.json()['id']}/memories",
                json={"text": "Su hermana Lucía es enfermera."},
            )
            assert memory.status_code == 201, memory.text
            entry = {"keys": ["Oaxaca"], "content": "Hace frío."}
            lorebook = http.post("/v1/lorebooks", json={"name": "La sierra", "entries": [entry]})
            assert lorebook.status_code == 201, lorebook.text
            store = open_app(settings)
            try:
                yield Server(
                    http,
                    log,
                    store,
                    character.json()["id"],
                    instance.json()["id"],
                    memory.json()["id"],
                    lorebook.json()["id"],
                    lorebook.json()["entries"][0]["id"],
                )
            finally:
                store.close()


def connection_of(response: httpx.Response) -> object:
    """The client end of the TCP connection the response came over."""
    return response.extensions["network_stream"].get_extra_info("client_addr")


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert {"code", "message", "details"} <= set(error), error
    assert error["code"] == code, error
    return error


# Requests from the schema ------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One request with one bad string in it, and the field and message it must be refused
    with (`field` None: an upload, whose form fields are the route's to refuse)."""

    method: str
    path: str
    query: str = ""
    body: bytes | None = None
    form: dict[str, bytes] | None = None
    field: str | None = None
    message: str = ""


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _alternatives(schema: dict[str, Any], spec: dict[str, Any]) -> list[dict[str, Any]]:
    schema = _resolve(schema, spec)
    options = schema.get("anyOf") or schema.get("oneOf") or [schema]
    return [_resolve(o, spec) for o in options if o.get("type") != "null"]


def example(schema: dict[str, Any], spec: dict[str, Any]) -> Any:
    """A plausible value of the schema: every property filled, the first alternative taken."""
    schema = _alternatives(schema, spec)[0]
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {name: example(s, spec) for name, s in schema.get("properties", {}).items()}
    if kind == "array":
        return [example(schema["items"], spec)]
    return {"string": "Rosa", "integer": 1, "number": 0.5, "boolean": False}.get(kind)


def with_bad(
    schema: dict[str, Any], spec: dict[str, Any], text: str
) -> Iterator[tuple[list[str], bool, Any]]:
    """Every value of the schema with `text` as exactly one of its strings: (where, whether it is
    an object key, the value)."""
    for option in _alternatives(schema, spec):
        kind = option.get("type")
        if kind == "string" and option.get("contentMediaType") is None:
            yield [], False, text
        elif kind == "array":
            for where, is_key, item in with_bad(option["items"], spec, text):
                yield ["0", *where], is_key, [item]
        elif kind == "object":
            filled = example(option, spec)
            for name, child in option.get("properties", {}).items():
                for where, is_key, value in with_bad(child, spec, text):
                    yield [name, *where], is_key, {**filled, name: value}
            if option.get("additionalProperties"):
                yield [], True, {**filled, text: "x"}


def encoded(text: str) -> str:
    """Percent-encoded UTF-8, with a surrogate encoded as such (a client that lets one through)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def cases(spec: dict[str, Any], bad: str, named: str) -> Iterator[Case]:
    text = f"Ro{bad}sa"
    refused = f"must not contain {named} at character 3"
    for template, operations in spec["paths"].items():
        for method, operation in operations.items():
            method = method.upper()
            parameters = operation.get("parameters", [])
            yield Case(
                method,
                template,
                f"note={encoded(text)}",
                field="query.note",
                message=f"query.note {refused}",
            )
            for parameter in parameters:
                name = parameter["name"]
                if parameter["in"] == "query":
                    yield Case(
                        method,
                        template,
                        f"{name}={encoded(text)}",
                        field=f"query.{name}",
                        message=f"query.{name} {refused}",
                    )
                elif parameter["in"] == "path":
                    path = template.replace(f"{{{name}}}", encoded(text))
                    yield Case(method, path, field="path", message=f"path must not contain {named}")
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                schema = content["application/json"]["schema"]
                for where, is_key, body in with_bad(schema, spec, text):
                    field = ".".join(["body", *where])
                    what = f"a key of {field}" if is_key else field
                    raw = json.dumps(body).encode()  # "\ud800" as JSON writes it: an escape
                    yield Case(method, template, body=raw, field=field, message=f"{what} {refused}")
            if "multipart/form-data" in content:
                form = _resolve(content["multipart/form-data"]["schema"], spec)
                for name, child in form["properties"].items():
                    if any(where == [] for where, _, _ in with_bad(child, spec, text)):
                        value = text.encode("utf-8", "surrogatepass")
                        yield Case(method, template, form={name: value})


def send(server: Server, case: Case) -> httpx.Response:
    url = server.ids(case.path) + (f"?{case.query}" if case.query else "")
    if case.form is not None:
        files = {"file": ("voz.wav", b"RIFF....WAVE", "audio/wav")}
        return server.http.request(case.method, url, data=case.form, files=files)
    headers = {"Content-Type": "application/json"} if case.body is not None else {}
    return server.http.request(case.method, url, content=case.body, headers=headers)


@pytest.mark.parametrize(("bad", "named"), BAD)
def test_text_no_store_can_hold_is_refused_on_every_route_and_field(
    server: Server, bad: str, named: str
) -> None:
    spec = server.http.get("/openapi.json").json()
    first = server.http.get(server.ids("/v1/instances/{instance_id}"))
    assert first.status_code == 200, first.text
    connection = connection_of(first)
    answered: list[str] = []  # not a 4xx
    wrote: list[str] = []
    dropped: list[str] = []
    misnamed: list[str] = []
    before = server.written()
    previous = "the first request"
    tried = 0
    for case in cases(spec, bad, named):
        tried += 1
        where = f"{case.method} {case.path}?{case.query} {case.field}"
        try:
            response = send(server, case)
        except httpx.TransportError as error:  # the server dropped the connection mid-answer
            answered.append(f"{where}: {error!r}")
            continue
        where += f": {response.status_code}"
        if not 400 <= response.status_code < 500:
            answered.append(f"{where} {response.text[:200]}")
        elif case.field is not None:
            error = response.json()["error"]
            field = error["code"] == "invalid_input" and error["details"] == {"field": case.field}
            if not (field and error["message"].startswith(case.message)):
                misnamed.append(f"{where} {error}")
        if server.written() != before:
            wrote.append(where)
            before = server.written()
        if connection_of(response) != connection:
            dropped.append(previous)
            connection = connection_of(response)
        previous = where
    # The worst first: what a client cannot recover from, then what it cannot read.
    assert not answered, "\n".join(answered)
    assert not wrote, "\n".join(wrote)
    assert not dropped, f"the connection was dropped after: {dropped}"
    assert not misnamed, "\n".join(misnamed)
    assert tried > 100, tried  # every route: the schema was read
    after = server.http.get(server.ids("/v1/instances/{instance_id}"))
    assert after.status_code == 200, after.text
    assert after.json()["memory"] == "Vive en Oaxaca."
    assert connection_of(after) == connection


# An unexpected error -----------------------------------------------------------------------


def test_an_unexpected_error_answers_500_in_the_error_shape_and_keeps_the_connection(
    server: Server,
) -> None:
    """An event alma cannot read (its state is not JSON), written straight into the store: reading
    its instance fails in a way no handler expects. The instance is the test's own: the
    others share the server."""
    made = server.http.post(
        f"/v1/characters/{server.character_id}/instances", json={"name": "Rota", "memory": ""}
    )
    assert made.status_code == 201, made.text
    instance_id = made.json()["id"]
    first = server.http.get(f"/v1/instances/{instance_id}")
    assert first.status_code == 200, first.text
    recorder = server.store.recorder
    (last,) = recorder.select_events(uuid.UUID(instance_id), desc=True, limit=1)
    recorder.insert_events(
        [
            StoredEvent(
                originator_id=last.originator_id,
                originator_version=last.originator_version + 1,
                topic=last.topic,
                state=b'{"memory": ',
            )
        ]
    )

    response = server.http.get(f"/v1/instances/{instance_id}", headers={"X-Request-ID": "rompe-1"})

    error = assert_error(response, 500, "internal_error")
    assert error["details"] == {"request_id": "rompe-1"}, error
    assert "rompe-1" in error["message"], error
    assert response.headers["x-request-id"] == "rompe-1"
    log = server.log.read_text(encoding="utf-8")
    logged = re.search(r"\[rompe-1\] unexpected error\nTraceback \(most recent call last\):", log)
    assert logged, log
    assert "JSONDecodeError" in log[logged.end() :], log
    after = server.http.get(f"/v1/characters/{server.character_id}")
    assert after.status_code == 200, after.text
    assert connection_of(after) == connection_of(first), "the connection was dropped"


# Bodies that are not JSON, or not UTF-8 ---------------------------------------------------


def test_a_body_that_is_not_json_or_not_utf8_says_what_and_where(server: Server) -> None:
    first = server.http.get(f"/v1/characters/{server.character_id}")
    connection = connection_of(first)
    before = server.written()
    json_headers = {"Content-Type": "application/json"}

    broken = b'{"name": "Rosa",\n "description": "curandera" "de la sierra"}'
    response = server.http.post("/v1/characters", content=broken, headers=json_headers)
    error = assert_error(response, 422, "invalid_request")
    assert error["message"] == (
        "the body is not valid JSON: Expecting ',' delimiter at line 2, column 29"
    ), error

    latin1 = '{"name": "José", "description": ""}'.encode("latin-1")
    response = server.http.post("/v1/characters", content=latin1, headers=json_headers)
    error = assert_error(response, 400, "bad_request")
    assert error["message"] == "body is not UTF-8: byte 0xE9 at byte 13", error
    assert error["details"] == {"field": "body"}, error

    response = server.http.get("/v1/characters?q=Jos%E9")
    error = assert_error(response, 400, "bad_request")
    assert error["details"] == {"field": "query.q"}, error

    assert server.written() == before
    after = server.http.get(f"/v1/characters/{server.character_id}")
    assert after.status_code == 200, after.text
    assert connection_of(after) == connection
