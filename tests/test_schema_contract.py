"""The OpenAPI schema declares what the server checks: a request the schema calls valid is
accepted, and one it calls invalid is refused, for the rules a generated client can read
(lengths, bounds, enums, patterns). Patterns are read as Python reads them, and the schema's
class of white space is spelled out, so U+0085 means the same to both."""

from __future__ import annotations

import re
from typing import Any

from tests.conftest import Api, make_character, make_instance


def _schema(api: Api) -> dict[str, Any]:
    schema: dict[str, Any] = api.client.get("/openapi.json").json()
    return schema


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


def test_events_say_they_keep_answering_after_delete(api: Api) -> None:
    paths = _schema(api)["paths"]
    for path in ("/v1/instances/{instance_id}/events", "/v1/characters/{character_id}/events"):
        assert "after `DELETE`" in paths[path]["get"]["description"], path
