"""The OpenAPI schema declares what the server checks: a request the schema calls valid is
accepted, and one it calls invalid is refused, for the rules a generated client can read
(lengths, bounds, enums, patterns). Patterns are read as Python reads them, and the schema's
class of white space is spelled out, so U+0085 means the same to both."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from pydantic import TypeAdapter
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from alma.api.message_import import FORM
from alma.api.schemas import UtcTime
from alma.domain.lore_keys import is_regex
from alma.domain.rules import bad_character
from alma.settings import Settings
from tests.conftest import Api, make_character, make_instance
from tests.openai_stub import OpenAIStub
from tests.test_faults import _health, _until, _world, serving


def _schema(api: Api) -> dict[str, Any]:
    schema: dict[str, Any] = api.client.get("/openapi.json").json()
    return schema


def _holds_refused_text(value: Any) -> bool:
    """Text no store can hold, anywhere: refused at the door wherever it is (docs/api.md),
    which a schema can say of the fields it declares but not of free-form keys."""
    if isinstance(value, str):
        return bad_character(value) is not None
    if isinstance(value, dict):
        return any(_holds_refused_text([k, v]) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_refused_text(v) for v in value)
    return False


def _since_after_until(query: dict[str, Any]) -> bool:
    if not {"since", "until"} <= set(query):
        return False
    when = TypeAdapter(UtcTime)
    try:
        return bool(when.validate_python(query["since"]) > when.validate_python(query["until"]))
    except ValueError:
        return False  # not a time: refused as the schema says


def _property(api: Api, model: str, field: str) -> dict[str, Any]:
    spec: dict[str, Any] = _schema(api)["components"]["schemas"][model]["properties"][field]
    return spec


def _allows(spec: dict[str, Any], text: str) -> bool:
    return (
        spec.get("minLength", 0) <= len(text) <= spec.get("maxLength", len(text))
        and re.search(spec["pattern"], text) is not None
    )


def test_names_and_texts_agree_with_the_server_on_what_is_blank(api: Api) -> None:
    name = _property(api, "CharacterCreate", "name")
    character = make_character(api)
    for text in ("\u0085", " \u0085\u3000", "\x1c", "a\x00", ""):
        assert not _allows(name, text), repr(text)
        response = api.client.post(
            f"/v1/characters/{character['id']}/instances", json={"name": text}, headers=api.acme
        )
        assert response.status_code == 422, (repr(text), response.text)
    for text in ("\ufeff", "Rosa\u0085", "\u200b"):
        assert _allows(name, text), repr(text)
        response = api.client.post(
            f"/v1/characters/{character['id']}/instances", json={"name": text}, headers=api.acme
        )
        assert response.status_code == 201, (repr(text), response.text)


def test_snippets_messages_and_chat_declare_a_visible_character(api: Api) -> None:
    for model, field in (("MemoryCreate", "text"), ("MessageIn", "content")):
        spec = _property(api, model, field)
        assert spec["minLength"] == 1
        assert not _allows(spec, "\u0085 \t")
    assert not _allows(_property(api, "ChatRequest", "message"), "\u2028")
    assert not _allows(_property(api, "SpeechRequest", "input"), "\u0085")
    text = _property(api, "CharacterCreate", "description")
    assert text["maxLength"] == 100_000 and not _allows(text, "a\x00b") and _allows(text, "")


def test_importance_and_role_are_bounded_as_the_server_bounds_them(api: Api) -> None:
    for model in ("MemoryCreate", "MemoryEdit"):
        importance = _property(api, model, "importance")
        assert (importance["minimum"], importance["maximum"]) == (0, 1)
    assert _property(api, "MessageIn", "role")["enum"] == ["user", "assistant", "system"]
    instance = make_instance(api, make_character(api)["id"])
    response = api.client.post(
        f"/v1/instances/{instance['id']}/messages",
        json={"messages": [{"role": "tool", "content": "hola"}]},
        headers=api.acme,
    )
    assert response.status_code == 422, response.text


def test_if_match_declares_the_versions_the_server_reads(api: Api) -> None:
    operation = _schema(api)["paths"]["/v1/instances/{instance_id}"]["patch"]
    (header,) = [p for p in operation["parameters"] if p["name"].lower() == "if-match"]
    pattern = header["schema"]["pattern"]
    instance = make_instance(api, make_character(api)["id"])
    path = f"/v1/instances/{instance['id']}"
    for value in ("1", '"1"', 'W/"1"', " 01 "):
        assert re.search(pattern, value), value
        response = api.client.patch(
            path, json={"memory": "m"}, headers={**api.acme, "If-Match": value}
        )
        assert response.status_code in (200, 409), (value, response.text)
    for value in ("0", "abc", "W/W/1", "1.5", "-1", "²"):
        assert not re.search(pattern, value), value


def test_cursors_declare_exactly_what_the_server_reads(api: Api) -> None:
    schema = _schema(api)
    cursors = [
        parameter["schema"]
        for operations in schema["paths"].values()
        for operation in operations.values()
        for parameter in operation.get("parameters", [])
        if parameter["name"] == "cursor"
    ]
    assert len(cursors) == 9
    pattern = cursors[0]["pattern"]
    assert all(cursor["pattern"] == pattern for cursor in cursors)
    for n in range(3):
        make_character(api, name=f"Rosa {n}")
    page = api.client.get("/v1/characters", params={"limit": 1}, headers=api.acme).json()
    assert re.search(pattern, page["next_cursor"])
    following = api.client.get(
        "/v1/characters", params={"limit": 1, "cursor": page["next_cursor"]}, headers=api.acme
    )
    assert following.status_code == 200, following.text
    for forged in ("", "eyJhZnRlciI6IDF9", "AAAAAAAAAAB", "gAAAAAAAAAA"):
        assert not re.search(pattern, forged), forged
        response = api.client.get("/v1/characters", params={"cursor": forged}, headers=api.acme)
        assert response.status_code == 400, (forged, response.text)


def test_events_say_they_keep_answering_after_delete(api: Api) -> None:
    paths = _schema(api)["paths"]
    for path in (
        "/v1/instances/{instance_id}/events",
        "/v1/characters/{character_id}/events",
        "/v1/lorebooks/{lorebook_id}/events",
    ):
        assert "after `DELETE`" in paths[path]["get"]["description"], path


def test_max_tokens_is_bounded_by_the_models_context(api: Api) -> None:
    """The app's own model (the local one here) has a context of 2048 / 1.5 = 1365 tokens."""
    schemas = _schema(api)["components"]["schemas"]
    chat = schemas["ChatRequest"]["properties"]["max_tokens"]
    assert chat["maximum"] == 1364
    for field in ("max_tokens", "max_completion_tokens"):
        options = schemas["ChatCompletionRequest"]["properties"][field]["anyOf"]
        assert [o["maximum"] for o in options if o.get("type") == "integer"] == [1364]


def test_voices_and_languages_are_the_engines_own(api: Api) -> None:
    voice = _property(api, "Voice", "voice")
    assert {"nova", "alloy", "f1", "m3"} <= set(voice["enum"]) and "robot" not in voice["enum"]
    language = _property(api, "Voice", "language")
    for tag in ("es", "es-MX", "en_GB", "pt-br"):
        assert re.search(language["pattern"], tag), tag
    assert not re.search(language["pattern"], "xx-klingon")
    character = make_character(api)
    refused = api.client.patch(
        f"/v1/characters/{character['id']}",
        json={"voice": {"language": "xx-klingon"}},
        headers=api.acme,
    )
    assert refused.status_code == 422, refused.text


# Uploads take any bytes the schema calls a file; only audio (415 otherwise) or a card (422) is
# accepted. A lorebook import takes another program's file, whose rules the schema cannot say
# either.
UPLOADS = (
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/instances/{instance_id}/voice",
    "/v1/characters/import",
    "/v1/lorebooks/import",
)
ANSWERS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.slow
def test_every_route_answers_within_its_schema_never_5xx_and_accepts_what_it_calls_valid(
    settings: Settings, tmp_path: Path, openai_stub: OpenAIStub
) -> None:
    """schemathesis against a real `alma serve`, bounded for CI: 8 generated requests per
    operation, on each store (what one store holds the other must too). Every answer is no 5xx
    and within the schema, and no request the schema calls valid gets a 400/413/422; then the
    projections catch up with whatever it wrote."""
    env = {
        "OPENAI_API_KEY": "sk-test-alma-0123456789",
        "OPENAI_BASE_URL": openai_stub.base_url,
        "ALMA_MEMORY_FORMATION": "false",
    }
    with serving(settings, tmp_path, env) as (http, _):
        _world(http)  # something to find, beside the random ids that find nothing
        schema = schemathesis.openapi.from_url(f"{http.base_url}/openapi.json")
        failures: list[str] = []
        keys_sent: set[str] = set()
        for found in schema.get_all_operations():
            operation = found.ok()

            @hypothesis.given(operation.as_strategy())
            @hypothesis.settings(
                max_examples=8,
                deadline=None,
                database=None,
                suppress_health_check=list(hypothesis.HealthCheck),
                phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
            )
            def conforms(case: Any) -> None:
                checks = [*ANSWERS]
                uploaded = case.operation.path in UPLOADS or case.media_type == FORM
                # An Idempotency-Key sent before with another request is refused (422): a rule
                # between requests, which no schema can say.
                key = (case.headers or {}).get("Idempotency-Key")
                repeated = key in keys_sent
                if key is not None:
                    keys_sent.add(key)
                if not uploaded and not repeated and _called_valid(case):
                    checks.append(positive_data_acceptance)
                case.call_and_validate(headers=dict(http.headers), checks=checks, timeout=60)

            try:
                conforms()
            except Exception as error:
                failures.append(f"{operation.label}: {error}")
        assert not failures, "\n\n".join(failures)
        # Whatever was written, every projection applies it: none is left behind or skips one.
        _until(lambda: _health(http)["projection_lag_events"] == 0, "the projections to catch up")
        assert _health(http)["skipped_events"] == []


def _called_valid(case: Any) -> bool:
    """Whether alma must accept the case for the schema to be right. Not for the rules between
    fields a schema cannot say: a point in the past given twice (`version` and `at` in a query,
    `at_version` and `at` in a fork's body: one or the other, 400/422), `since` after `until`
    (422 naming `since`), a lorebook's entries with one `id` twice or a key that is a regular
    expression (`/.../`, compiled and tried before it is taken); nor when it holds text no store
    can hold in a free-form key or an OpenAI field alma ignores (still refused)."""
    query = case.query or {}
    twice = {"version", "at"} <= set(query) or (
        isinstance(case.body, dict) and {"at_version", "at"} <= set(case.body)
    )
    lore = _lore_the_schema_cannot_judge(case.body)
    refused = _holds_refused_text([case.body, case.query])
    return not (twice or lore or _since_after_until(query) or refused)


def _lore_the_schema_cannot_judge(body: Any) -> bool:
    if not isinstance(body, dict):
        return False
    entries = body.get("entries") if isinstance(body.get("entries"), list) else [body]
    ids = [e["id"] for e in entries if isinstance(e, dict) and e.get("id") is not None]
    keys = [
        key
        for e in entries
        if isinstance(e, dict)
        for field in ("keys", "secondary_keys")
        for key in e.get(field) or []
        if isinstance(key, str)
    ]
    return len(ids) != len(set(ids)) or any(is_regex(key) for key in keys)
