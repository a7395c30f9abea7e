"""Bad input always gets a clear 4xx and writes nothing; any Unicode text comes back unchanged.

Each refusal is checked three ways: the status, the error shape
`{"error": {"code", "message", "details"}}`, and that the event store holds no new event.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import struct
import uuid
import wave
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from alma.settings import Settings
from tests.conftest import Api, make_character, make_instance, running_api
from tests.speech_samples import say

MAX_NAME = 200
MAX_TEXT = 100_000
ONE_MIB = 1024 * 1024


@dataclass(frozen=True)
class Ids:
    """One character of acme with one instance, whose memory has changed once (version 2)."""

    character_id: str
    instance_id: str

    def fill(self, path: str) -> str:
        return path.format(character_id=self.character_id, instance_id=self.instance_id)


def make_ids(api: Api) -> Ids:
    character = make_character(api)
    instance = make_instance(api, character["id"], name="Rosa", memory="Nació en la sierra.")
    response = api.client.patch(
        f"/v1/instances/{instance['id']}", json={"memory": "Vive en Oaxaca."}, headers=api.acme
    )
    assert response.status_code == 200, response.text
    return Ids(str(character["id"]), str(instance["id"]))


@pytest.fixture(scope="module")
def api(shared_api: Api) -> Api:
    """Every test here is refused and checks that nothing was written, but the three that take
    `own_api`: the others share one running alma, and one character with its instance."""
    return shared_api


@pytest.fixture(scope="module")
def ids(api: Api) -> Ids:
    return make_ids(api)


@pytest.fixture
def own_api(settings: Settings) -> Iterator[Api]:
    """A running alma of the test's own, for a test that writes."""
    with running_api(settings) as running:
        yield running


def send(api: Api, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """A request as acme, to the running app; a crash comes back as the bare 500 a real server
    would send, rather than raising into the test."""
    client = TestClient(api.client.app, raise_server_exceptions=False)
    headers = {**api.acme, **kwargs.pop("headers", {})}
    return client.request(method, path, headers=headers, **kwargs)


def assert_refused(response: httpx.Response, status: int, code: str | None = None) -> None:
    """A clear refusal: this status, and the one error shape with a code and a message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str) and error["message"], error
    if code is not None:
        assert error["code"] == code, error


def cursor_of(value: object) -> str:
    """A cursor forged the way this API encodes its own, around any JSON value."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


# Bodies: blank and over-long names, over-long texts, unknown fields, wrong JSON types.

CHARACTERS = "/v1/characters"
CHARACTER = "/v1/characters/{character_id}"
INSTANCES = "/v1/characters/{character_id}/instances"
INSTANCE = "/v1/instances/{instance_id}"
FORK = "/v1/instances/{instance_id}/fork"

TOO_LONG_NAME = "n" * (MAX_NAME + 1)
TOO_LONG_TEXT = "t" * (MAX_TEXT + 1)
RULE = "invalid_input"  # a value of the right type breaks a domain rule
SCHEMA = "invalid_request"  # the request does not fit the schema at all

NEW = {"name": "Rosa", "description": "d"}  # a good new character, to spoil one field of

# (what, method, path, the code of the refusal): {case: body}
REFUSED: dict[tuple[str, str, str, str], dict[str, dict[str, Any]]] = {
    ("create character", "POST", CHARACTERS, RULE): {
        "empty name": {**NEW, "name": ""},
        "blank name": {**NEW, "name": " \t\n "},
        "name over 200": {**NEW, "name": TOO_LONG_NAME},
        "description over 100,000": {**NEW, "description": TOO_LONG_TEXT},
        "personality over 100,000": {**NEW, "personality": TOO_LONG_TEXT},
    },
    ("create character", "POST", CHARACTERS, SCHEMA): {
        "unknown field": {**NEW, "mood": "alegre"},
        "unknown voice field": {**NEW, "voice": {"language": "es", "pitch": 2}},
        "number for name": {**NEW, "name": 42},
        "boolean for name": {**NEW, "name": True},
        "list for description": {**NEW, "description": ["d"]},
        "null description": {**NEW, "description": None},
        "missing description": {"name": "Rosa"},
        "string for voice": {**NEW, "voice": "es"},
        "number for voice language": {**NEW, "voice": {"language": 34}},
        "string for voice speed": {**NEW, "voice": {"language": "es", "speed": "fast"}},
        "voice speed out of range": {**NEW, "voice": {"language": "es", "speed": 9}},
    },
    ("edit character", "PATCH", CHARACTER, RULE): {
        "empty name": {"name": ""},
        "blank name": {"name": "   "},
        "null name": {"name": None},
        "name over 200": {"name": TOO_LONG_NAME},
        "description over 100,000": {"description": TOO_LONG_TEXT},
        "system prompt over 100,000": {"system_prompt": TOO_LONG_TEXT},
        "good name, greeting over 100,000": {"name": "Rosa", "greeting": TOO_LONG_TEXT},
    },
    ("edit character", "PATCH", CHARACTER, SCHEMA): {
        "unknown field": {"mood": "alegre"},
        "number for name": {"name": 7},
        "list for voice": {"voice": ["es"]},
    },
    ("create instance", "POST", INSTANCES, RULE): {
        "empty name": {"name": ""},
        "blank name": {"name": "\u3000\u00a0 "},
        "name over 200": {"name": TOO_LONG_NAME},
        "memory over 100,000": {"name": "Nueva", "memory": TOO_LONG_TEXT},
    },
    ("create instance", "POST", INSTANCES, SCHEMA): {
        "unknown field": {"name": "Nueva", "colour": "red"},
        "null name": {"name": None},
        "missing name": {"memory": "m"},
        "number for memory": {"name": "Nueva", "memory": 3},
    },
    ("edit instance", "PATCH", INSTANCE, RULE): {
        "empty name": {"name": ""},
        "blank name": {"name": "\n\t"},
        "name over 200": {"name": TOO_LONG_NAME},
        "memory over 100,000": {"memory": TOO_LONG_TEXT},
        "good name, memory over 100,000": {"name": "Otra", "memory": TOO_LONG_TEXT},
    },
    ("edit instance", "PATCH", INSTANCE, SCHEMA): {
        "unknown field": {"memory": "m", "memories": []},
        "object for memory": {"memory": {"text": "m"}},
        "boolean for name": {"name": False},
    },
    ("fork", "POST", FORK, RULE): {
        "empty name": {"name": ""},
        "blank name": {"name": "  "},
        "name over 200": {"name": TOO_LONG_NAME},
        "at_version beyond the current": {"name": "Rama", "at_version": 3},
    },
    ("fork", "POST", FORK, SCHEMA): {
        "unknown field": {"name": "Rama", "when": 1},
        "number for name": {"name": 1},
        "string for at_version": {"name": "Rama", "at_version": "1"},
        "fraction for at_version": {"name": "Rama", "at_version": 1.5},
        "at_version 0": {"name": "Rama", "at_version": 0},
    },
}
BAD_BODIES = [
    pytest.param(method, path, body, code, id=f"{what}: {case}")
    for (what, method, path, code), bodies in REFUSED.items()
    for case, body in bodies.items()
]


@pytest.mark.parametrize(("method", "path", "body", "code"), BAD_BODIES)
def test_a_bad_body_answers_422_and_writes_nothing(
    api: Api, ids: Ids, method: str, path: str, body: dict[str, Any], code: str
) -> None:
    before = api.written()
    assert_refused(send(api, method, ids.fill(path), json=body), 422, code)
    assert api.written() == before


def test_names_and_texts_exactly_at_the_limits_are_accepted(own_api: Api) -> None:
    api, ids = own_api, make_ids(own_api)
    name, text = "n" * MAX_NAME, "t" * MAX_TEXT
    created = send(api, "POST", CHARACTERS, json={"name": name, "description": text})
    assert created.status_code == 201, created.text
    assert (created.json()["name"], created.json()["description"]) == (name, text)
    instance = send(api, "POST", ids.fill(INSTANCES), json={"name": name, "memory": text})
    assert instance.status_code == 201, instance.text
    edited = send(api, "PATCH", ids.fill(INSTANCE), json={"memory": text})
    assert edited.status_code == 200, edited.text
    assert edited.json()["memory"] == text
    forked = send(api, "POST", ids.fill(FORK), json={"name": "f" * MAX_NAME})
    assert forked.status_code == 201, forked.text


def test_the_limits_count_characters_not_bytes(own_api: Api) -> None:
    api = own_api
    name, text = "ñ" * MAX_NAME, "🌿" * 20_000 + "ñ" * (MAX_TEXT - 20_000)
    created = send(api, "POST", CHARACTERS, json={"name": name, "description": text})
    assert created.status_code == 201, created.text
    assert (created.json()["name"], created.json()["description"]) == (name, text)


# Bodies that are not JSON objects, or too large.

NOT_JSON = [
    pytest.param(b"{", 422, "invalid_request", id="truncated JSON"),
    pytest.param(b"{'name': 'Rosa'}", 422, "invalid_request", id="single quotes"),
    pytest.param(b'{"name": "Rosa",}', 422, "invalid_request", id="trailing comma"),
    pytest.param(b"", 422, "invalid_request", id="empty body"),
    pytest.param(b"null", 422, "invalid_request", id="null"),
    pytest.param(b"[]", 422, "invalid_request", id="an array"),
    pytest.param(b'"Rosa"', 422, "invalid_request", id="a string"),
    pytest.param(b'{"name": "\xff", "description": "d"}', 400, "bad_request", id="not UTF-8"),
]


@pytest.mark.parametrize(("content", "status", "code"), NOT_JSON)
def test_a_body_that_is_not_a_json_object_is_refused(
    api: Api, content: bytes, status: int, code: str
) -> None:
    before = api.written()
    headers = {"Content-Type": "application/json"}
    assert_refused(send(api, "POST", CHARACTERS, content=content, headers=headers), status, code)
    assert api.written() == before


def test_a_body_of_another_media_type_answers_415(api: Api) -> None:
    before = api.written()
    content = b'{"name": "Rosa", "description": "d"}'
    headers = {"Content-Type": "text/plain"}
    assert_refused(send(api, "POST", CHARACTERS, content=content, headers=headers), 415)
    assert api.written() == before


@pytest.mark.parametrize("declared", [True, False], ids=["with Content-Length", "chunked"])
@pytest.mark.parametrize(
    ("method", "path", "field"),
    [("POST", CHARACTERS, "description"), ("PATCH", INSTANCE, "memory")],
    ids=["create character", "edit instance"],
)
def test_a_body_over_one_mib_answers_413(
    api: Api, ids: Ids, method: str, path: str, field: str, declared: bool
) -> None:
    body = json.dumps({"name": "Rosa", field: "x" * ONE_MIB}).encode()
    content: Any = body if declared else iter([body[:1000], body[1000:]])
    before = api.written()
    headers = {"Content-Type": "application/json"}
    response = send(api, method, ids.fill(path), content=content, headers=headers)
    assert_refused(response, 413, "payload_too_large")
    assert api.written() == before


# Ids in paths: malformed, unknown, of the other kind.

ID_ENDPOINTS = [
    pytest.param("GET", CHARACTER, None, id="get character"),
    pytest.param("PATCH", CHARACTER, {"description": "d2"}, id="edit character"),
    pytest.param("DELETE", CHARACTER, None, id="delete character"),
    pytest.param("GET", "/v1/characters/{character_id}/events", None, id="character events"),
    pytest.param("POST", INSTANCES, {"name": "Nueva"}, id="create instance"),
    pytest.param("GET", INSTANCES, None, id="list instances"),
    pytest.param("GET", INSTANCE, None, id="get instance"),
    pytest.param("PATCH", INSTANCE, {"memory": "m2"}, id="edit instance"),
    pytest.param("DELETE", INSTANCE, None, id="delete instance"),
    pytest.param("POST", FORK, {"name": "Bifurcada"}, id="fork instance"),
    pytest.param("GET", "/v1/instances/{instance_id}/events", None, id="instance events"),
    pytest.param("GET", "/v1/instances/{instance_id}/memory/audit", None, id="memory audit"),
]
MALFORMED_IDS = [
    "not-a-uuid",
    "42",
    "6f1c2d9e-8b7a-4c3d-9e2f-1a2b3c4d5e6",  # one digit short
    "6f1c2d9e-8b7a-4c3d-9e2f-1a2b3c4d5e6g",  # not hexadecimal
    "6f1c2d9e-8b7a-4c3d-9e2f-1a2b3c4d5e6f0",  # one digit long
]


@pytest.mark.parametrize(("method", "path", "body"), ID_ENDPOINTS)
def test_a_malformed_uuid_in_the_path_answers_422(
    api: Api, ids: Ids, method: str, path: str, body: dict[str, Any] | None
) -> None:
    before = api.written()
    for malformed in MALFORMED_IDS:
        url = path.format(character_id=malformed, instance_id=malformed)
        assert_refused(send(api, method, url, json=body), 422, "invalid_request")
    assert api.written() == before


@pytest.mark.parametrize(("method", "path", "body"), ID_ENDPOINTS)
def test_an_unknown_id_or_one_of_the_other_kind_answers_404(
    api: Api, ids: Ids, method: str, path: str, body: dict[str, Any] | None
) -> None:
    before = api.written()
    unknown = str(uuid.uuid4())
    for url in (
        path.format(character_id=unknown, instance_id=unknown),
        path.format(character_id=ids.instance_id, instance_id=ids.character_id),
    ):
        assert_refused(send(api, method, url, json=body), 404, "not_found")
    assert api.written() == before


def test_another_tenants_id_answers_404_like_an_unknown_one(api: Api, ids: Ids) -> None:
    before = api.written()
    for path in (CHARACTER, INSTANCE):
        response = api.client.get(ids.fill(path), headers=api.rival)
        assert_refused(response, 404, "not_found")
    assert api.written() == before


# Query parameters: versions, points in time, paging.

BAD_READS = [
    pytest.param(CHARACTER, "version=0", 422, "invalid_request", id="character version=0"),
    pytest.param(CHARACTER, "version=-1", 422, "invalid_request", id="character version=-1"),
    pytest.param(CHARACTER, "version=abc", 422, "invalid_request", id="character version=abc"),
    pytest.param(CHARACTER, "version=2", 422, "invalid_input", id="character version beyond"),
    pytest.param(INSTANCE, "version=0", 422, "invalid_request", id="instance version=0"),
    pytest.param(INSTANCE, "version=1.5", 422, "invalid_request", id="instance version=1.5"),
    pytest.param(INSTANCE, "version=abc", 422, "invalid_request", id="instance version=abc"),
    pytest.param(INSTANCE, "version=3", 422, "invalid_input", id="instance version beyond"),
    pytest.param(
        INSTANCE, f"version={2**70}", 422, "invalid_input", id="instance version far beyond"
    ),
    pytest.param(
        CHARACTER, "version=1&at=2030-01-01T00:00:00Z", 400, "bad_request", id="character both"
    ),
    pytest.param(
        INSTANCE, "version=1&at=2030-01-01T00:00:00Z", 400, "bad_request", id="instance both"
    ),
    pytest.param(INSTANCE, "at=yesterday", 422, "invalid_request", id="instance at=yesterday"),
    pytest.param(CHARACTER, "at=2030-13-01", 422, "invalid_request", id="character at=month 13"),
    pytest.param(
        "/v1/instances/{instance_id}/events",
        "after_version=-1",
        422,
        "invalid_request",
        id="events after_version=-1",
    ),
    pytest.param(CHARACTERS, "q=" + "q" * 201, 422, "invalid_request", id="search over 200"),
]


@pytest.mark.parametrize(("path", "query", "status", "code"), BAD_READS)
def test_a_bad_query_parameter_is_refused(
    api: Api, ids: Ids, path: str, query: str, status: int, code: str
) -> None:
    before = api.written()
    assert_refused(send(api, "GET", f"{ids.fill(path)}?{query}"), status, code)
    assert api.written() == before


LISTS = [
    pytest.param(CHARACTERS, id="characters"),
    pytest.param(INSTANCES, id="instances of a character"),
    pytest.param("/v1/characters/{character_id}/events", id="character events"),
    pytest.param("/v1/instances/{instance_id}/events", id="instance events"),
    pytest.param("/v1/instances/{instance_id}/memory/audit", id="memory audit"),
]
BAD_LIMITS = ["0", "-1", "501", "ten", "2.5"]
BAD_CURSORS = [
    "not-a-cursor!",
    base64.urlsafe_b64encode(b"hello").decode(),
    cursor_of({"after": -1}),
    cursor_of({"after": "3"}),
    cursor_of({"after": 1.5}),
    cursor_of({"before": 3}),
    cursor_of([3]),
    cursor_of(3),
]


@pytest.mark.parametrize("path", LISTS)
def test_a_limit_outside_1_to_500_answers_422(api: Api, ids: Ids, path: str) -> None:
    before = api.written()
    for limit in BAD_LIMITS:
        response = send(api, "GET", ids.fill(path), params={"limit": limit})
        assert_refused(response, 422, "invalid_request")
    assert api.written() == before


@pytest.mark.parametrize("path", LISTS)
def test_a_cursor_this_api_did_not_return_answers_400(api: Api, ids: Ids, path: str) -> None:
    before = api.written()
    for cursor in BAD_CURSORS:
        response = send(api, "GET", ids.fill(path), params={"cursor": cursor})
        assert_refused(response, 400, "bad_cursor")
    assert api.written() == before


@pytest.mark.parametrize("path", LISTS)
def test_a_forged_cursor_out_of_range_answers_400(api: Api, ids: Ids, path: str) -> None:
    before = api.written()
    for cursor in (cursor_of({"after": 2**63}), cursor_of({"after": True})):
        response = send(api, "GET", ids.fill(path), params={"cursor": cursor})
        assert_refused(response, 400, "bad_cursor")
    assert api.written() == before


@pytest.mark.parametrize(
    "path",
    ["/v1/characters/{character_id}/events", "/v1/instances/{instance_id}/events"],
    ids=["character events", "instance events"],
)
def test_an_after_version_beyond_any_version_answers_422(api: Api, ids: Ids, path: str) -> None:
    response = send(api, "GET", ids.fill(path), params={"after_version": 2**63})
    assert_refused(response, 422, "invalid_request")


def test_a_search_with_a_nul_character_answers_422(api: Api, ids: Ids) -> None:
    assert_refused(send(api, "GET", CHARACTERS, params={"q": "Ro\x00sa"}), 422)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", CHARACTERS, {"name": "Ro\x00sa", "description": "d"}),
        ("POST", CHARACTERS, {"name": "Rosa", "description": "cura\x00ndera"}),
        ("PATCH", CHARACTER, {"name": "Ro\x00sa"}),
        ("POST", INSTANCES, {"name": "Ro\x00sa"}),
        ("PATCH", INSTANCE, {"memory": "m\x00"}),
    ],
    ids=[
        "character name",
        "character description",
        "rename character",
        "instance name",
        "instance memory",
    ],
)
def test_a_nul_character_in_a_name_or_text_answers_422(
    api: Api, ids: Ids, method: str, path: str, body: dict[str, Any]
) -> None:
    before = api.written()
    assert_refused(send(api, method, ids.fill(path), json=body), 422, "invalid_input")
    assert api.written() == before


# If-Match

MUTATIONS = [
    ("PATCH", CHARACTER, {"description": "d2"}),
    ("DELETE", CHARACTER, None),
    ("PATCH", INSTANCE, {"memory": "m3"}),
    ("DELETE", INSTANCE, None),
]


@pytest.mark.parametrize("if_match", ["abc", "0", "-1", "1.5", "", "v2", "W/", "2, 3"])
def test_a_bad_if_match_header_answers_400(api: Api, ids: Ids, if_match: str) -> None:
    before = api.written()
    for method, path, body in MUTATIONS:
        response = send(api, method, ids.fill(path), json=body, headers={"If-Match": if_match})
        assert_refused(response, 400, "bad_if_match")
    assert api.written() == before


def send_raw_header(api: Api, method: str, path: str, name: bytes, value: bytes) -> httpx.Response:
    """Sends a header's bytes as they are (TestClient re-encodes them as UTF-8, which a real
    server does not), straight to the running app."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=api.client.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://alma") as client:
            headers = [(k.encode(), v.encode()) for k, v in api.acme.items()] + [(name, value)]
            return await client.request(method, path, json={"memory": "m3"}, headers=headers)

    return asyncio.run(go())


def test_an_if_match_of_a_non_ascii_digit_answers_400(api: Api, ids: Ids) -> None:
    before = api.written()
    response = send_raw_header(api, "PATCH", ids.fill(INSTANCE), b"if-match", "²".encode("latin-1"))
    assert_refused(response, 400, "bad_if_match")
    assert api.written() == before


# Unicode comes back exactly as sent, everywhere.

UNICODE = [
    pytest.param("Begoña Núñez, pingüino de Ávila: ¿qué tal, señor?", id="spanish"),
    pytest.param("👩‍🔬 científica, 👨‍👩‍👧‍👦 familia, 🏳️‍🌈, 👍🏽, 🇲🇽", id="emoji ZWJ"),
    pytest.param("שָׁלוֹם עוֹלָם, מה שלומך?", id="hebrew"),
    pytest.param("مرحبا يا عالم، كيف الحال؟", id="arabic"),
    pytest.param("Rosa \u202bשלום\u202c y \u200fمرحبا\u200e fin", id="bidi marks"),  # noqa: RUF001
    pytest.param("Jose\u0301 man\u0303ana Z\u0324\u0308 a\u030a\u0301 Ω\u0342", id="combining"),
]


def assert_on_the_wire(response: httpx.Response, *texts: str) -> None:
    """Each text is in the raw body as UTF-8: not escaped, not normalized, not re-encoded."""
    for text in texts:
        raw = json.dumps(text, ensure_ascii=False)[1:-1].encode("utf-8")
        assert raw in response.content, (text, response.content[:500])


@pytest.mark.parametrize("text", UNICODE)
def test_unicode_comes_back_byte_identical_everywhere(own_api: Api, text: str) -> None:
    api = own_api
    name_1, name_2 = text, f"«{text}» 2ª"
    text_1, text_2 = f"{text}\n{text[::-1]}\n", f"{name_2}\n{text[::-1]}\n{text}"

    # a character: created, read, edited, read back then, replayed, listed
    created = send(api, "POST", CHARACTERS, json={"name": name_1, "description": text_1})
    assert created.status_code == 201, created.text
    assert (created.json()["name"], created.json()["description"]) == (name_1, text_1)
    character = f"/v1/characters/{created.json()['id']}"
    edited = send(api, "PATCH", character, json={"name": name_2, "description": text_2})
    assert (edited.json()["name"], edited.json()["description"]) == (name_2, text_2)
    now = send(api, "GET", character)
    assert (now.json()["name"], now.json()["description"]) == (name_2, text_2)
    assert_on_the_wire(now, name_2, text_2)
    then = send(api, "GET", character, params={"version": 1})
    assert (then.json()["name"], then.json()["description"]) == (name_1, text_1)
    assert_on_the_wire(then, name_1, text_1)
    replayed = send(api, "GET", f"{character}/events")
    assert_on_the_wire(replayed, name_1, text_1, name_2, text_2)
    events = replayed.json()["items"]
    assert [(e["data"].get("name"), e["data"].get("description")) for e in events] == [
        (name_1, text_1),
        (name_2, None),
        (None, text_2),
    ]
    listed = send(api, "GET", CHARACTERS).json()["items"]
    assert [c["name"] for c in listed] == [name_2]

    # an instance: created, read, edited, read back then, replayed, audited
    made = send(api, "POST", f"{character}/instances", json={"name": name_1, "memory": text_1})
    assert made.status_code == 201, made.text
    assert (made.json()["name"], made.json()["memory"]) == (name_1, text_1)
    instance = f"/v1/instances/{made.json()['id']}"
    edited = send(api, "PATCH", instance, json={"name": name_2, "memory": text_2})
    assert (edited.json()["name"], edited.json()["memory"]) == (name_2, text_2)
    now = send(api, "GET", instance)
    assert (now.json()["name"], now.json()["memory"]) == (name_2, text_2)
    assert_on_the_wire(now, name_2, text_2)
    then = send(api, "GET", instance, params={"version": 1})
    assert (then.json()["name"], then.json()["memory"]) == (name_1, text_1)
    replayed = send(api, "GET", f"{instance}/events")
    assert_on_the_wire(replayed, name_1, text_1, name_2, text_2)
    events = replayed.json()["items"]
    assert [(e["data"].get("name"), e["data"].get("memory")) for e in events] == [
        (name_1, text_1),
        (name_2, None),
        (None, text_2),
    ]
    audit = send(api, "GET", f"{instance}/memory/audit")
    assert [(c["before"], c["after"]) for c in audit.json()["items"]] == [
        ("", text_1),
        (text_1, text_2),
    ]
    assert f"+{name_2}\n" in audit.json()["items"][1]["diff"]
    assert_on_the_wire(audit, text_1, text_2)


# Audio: uploads that are not speech, and speech requests no voice can say.

SPEECH = "/v1/audio/speech"
TRANSCRIPTIONS = "/v1/audio/transcriptions"
TRANSLATIONS = "/v1/audio/translations"
VOICE = "/v1/instances/{instance_id}/voice"
TWENTY_FIVE_MB = 25 * 1024 * 1024


def _wav(seconds: float, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(2 * int(seconds * rate)))
    return buffer.getvalue()


def _png() -> bytes:
    row = b"\x00" + b"\xff\x00\x00" * 4
    raw = zlib.compress(row * 4)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


_SPOKEN = say("Where did you sail last summer?", "en", "mp3")
BAD_UPLOADS = [
    pytest.param(b"", 422, "bad_audio", id="empty file"),
    pytest.param("¿Qué tal?\n".encode() * 200, 415, "not_audio", id="a text file"),
    pytest.param(_png(), 415, "not_audio", id="a PNG image"),
    pytest.param(random.Random(7).randbytes(40_000), 415, "not_audio", id="random bytes"),
    pytest.param(_SPOKEN[: len(_SPOKEN) // 4], 422, "bad_audio", id="truncated mp3"),
    pytest.param(_wav(3)[:20_000], 422, "bad_audio", id="truncated wav"),
    pytest.param(_wav(601), 413, "audio_too_long", id="over 10 minutes"),
    pytest.param(_wav(3), 422, "no_speech", id="silence"),
    pytest.param(b"\x00" * (TWENTY_FIVE_MB + 1), 413, None, id="over 25 MB"),
]


def assert_audio_refused(response: httpx.Response, status: int, code: str | None) -> None:
    """The error shape; OpenAI-compatible paths add OpenAI's `type` and `param`."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) - {"type", "param"} == {"code", "message", "details"}, error
    assert error["message"], error
    if code is not None:
        assert error["code"] == code, error


@pytest.mark.parametrize(
    "path",
    [TRANSCRIPTIONS, TRANSLATIONS, VOICE],
    ids=["transcription", "translation", "voice turn"],
)
@pytest.mark.parametrize(("upload", "status", "code"), BAD_UPLOADS)
def test_an_upload_that_is_not_speech_is_refused_and_writes_nothing(
    api: Api, ids: Ids, path: str, upload: bytes, status: int, code: str | None
) -> None:
    before = api.written()
    files = {"file": ("speech.wav", upload, "audio/wav")}
    response = send(api, "POST", ids.fill(path), files=files)
    assert_audio_refused(response, status, code)
    assert api.written() == before


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ({"language": "klingon"}, "unknown_language"),
        ({"response_format": "docx"}, "invalid_request"),
    ],
    ids=["unknown language", "unknown format"],
)
@pytest.mark.parametrize(
    "path",
    [TRANSCRIPTIONS, TRANSLATIONS, VOICE],
    ids=["transcription", "translation", "voice turn"],
)
def test_an_upload_with_bad_options_is_refused(
    api: Api, ids: Ids, path: str, data: dict[str, str], code: str
) -> None:
    before = api.written()
    files = {"file": ("speech.mp3", _SPOKEN, "audio/mpeg")}
    assert_audio_refused(send(api, "POST", ids.fill(path), files=files, data=data), 422, code)
    assert api.written() == before


@pytest.mark.parametrize(
    "path",
    [TRANSCRIPTIONS, TRANSLATIONS, VOICE],
    ids=["transcription", "translation", "voice turn"],
)
def test_an_upload_sent_as_json_answers_415(api: Api, ids: Ids, path: str) -> None:
    response = send(api, "POST", ids.fill(path), json={"file": "aGVsbG8="})
    assert_audio_refused(response, 415, "unsupported_media_type")


BAD_SPEECH = {
    "input over 4,096": ({"input": "a" * 4097}, "invalid_request"),
    "empty input": ({"input": ""}, "invalid_request"),
    "blank input": ({"input": " \n "}, "invalid_request"),
    "no input": ({}, "invalid_request"),
    "unknown voice": ({"input": "hola", "voice": "darth"}, "unknown_voice"),
    "unknown format": ({"input": "hola", "response_format": "ogg"}, "invalid_request"),
    "speed 5": ({"input": "hola", "speed": 5}, "invalid_request"),
    "unknown language": ({"input": "hola", "language": "xx-klingon"}, "unknown_voice"),
    "unknown engine": ({"input": "hola", "engine": "polly"}, "invalid_request"),
}


@pytest.mark.parametrize(("body", "code"), list(BAD_SPEECH.values()), ids=list(BAD_SPEECH))
def test_speech_that_cannot_be_said_answers_422(api: Api, body: dict[str, Any], code: str) -> None:
    before = api.written()
    assert_audio_refused(send(api, "POST", SPEECH, json=body), 422, code)
    assert api.written() == before


def test_voice_settings_no_engine_can_speak_are_refused(api: Api, ids: Ids) -> None:
    before = api.written()
    for voice in ({"voice": "darth"}, {"language": "xx-klingon"}, {"engine": "polly"}):
        response = send(api, "PATCH", ids.fill(INSTANCE), json={"voice": voice})
        assert_refused(response, 422, "invalid_request")
    assert api.written() == before
