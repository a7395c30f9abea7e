"""Every PATCH body is a JSON merge patch (RFC 7396): a field left out stays, null clears an
optional field back to its default, an object merges member by member, and null on a required
field is a 422 naming it that writes nothing. Each PATCH route, each nullable field, on both
stores, sent as application/merge-patch+json."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Api, make_character, make_instance

MERGE_PATCH = "application/merge-patch+json"
PERSONA = (
    "description",
    "personality",
    "scenario",
    "greeting",
    "example_dialogue",
    "system_prompt",
)
# What a Character Card carries besides the persona: null clears each ("" or [] or {}).
CARD = (
    "alternate_greetings",
    "post_history_instructions",
    "creator_notes",
    "tags",
    "creator",
    "character_version",
    "nickname",
    "card_extras",
)


def patch(api: Api, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.client.patch(path, json=body, headers={**api.acme, "Content-Type": MERGE_PATCH})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def refused(api: Api, path: str, body: dict[str, Any], field: str) -> None:
    before = api.written()
    response = api.client.patch(path, json=body, headers={**api.acme, "Content-Type": MERGE_PATCH})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["details"]) == ("invalid_input", {"field": field})
    assert error["message"] == f"{field} is required: null cannot clear it"
    assert api.written() == before


def _memory(api: Api) -> str:
    character = make_character(api)
    instance = make_instance(api, character["id"], memory="Nació en la sierra.")
    base = f"/v1/instances/{instance['id']}/memories"
    created = api.client.post(
        base,
        json={
            "text": "Su hermana Lucía es enfermera",
            "metadata": {"tema": "familia", "fuente": "ella"},
            "importance": 0.9,
        },
        headers=api.acme,
    )
    assert created.status_code == 201, created.text
    return f"{base}/{created.json()['id']}"


def test_character_null_clears_each_optional_field_and_voice_merges(api: Api) -> None:
    voice = {"language": "es", "engine": "espeak", "voice": "f2", "speed": 1.2}
    character = make_character(api, **{field: f"{field} de Rosa" for field in PERSONA[1:]})
    path = f"/v1/characters/{character['id']}"
    patch(api, path, {"voice": voice})

    merged = patch(api, path, {"voice": {"speed": None, "voice": "m3"}})
    assert merged["voice"] == {"language": "es", "engine": "espeak", "voice": "m3"}
    for field in PERSONA:
        cleared = patch(api, path, {field: None})
        assert cleared[field] == "", field
    cleared = patch(api, path, {"voice": None})
    assert cleared["voice"] is None
    assert cleared["name"] == "Doña Rosa"  # left out: stays


def test_instance_null_clears_memory_and_voice_and_voice_merges(api: Api) -> None:
    character = make_character(api, voice={"language": "es"})
    instance = make_instance(api, character["id"], memory="Nació en la sierra.")
    path = f"/v1/instances/{instance['id']}"
    patch(api, path, {"voice": {"voice": "m3", "speed": 0.9}})

    merged = patch(api, path, {"voice": {"language": "es-MX", "speed": None}})
    assert merged["voice"] == {"voice": "m3", "language": "es-MX"}
    cleared = patch(api, path, {"memory": None})
    assert (cleared["memory"], cleared["name"], cleared["voice"]) == ("", "Rosa", merged["voice"])
    cleared = patch(api, path, {"voice": None})
    assert cleared["voice"] is None
    events = api.client.get(f"{path}/events", headers=api.acme).json()["items"]
    assert [e["type"] for e in events][-2:] == ["MemoryRewritten", "VoiceChanged"]


def test_memory_null_clears_metadata_and_importance_and_metadata_merges(api: Api) -> None:
    path = _memory(api)

    merged = patch(api, path, {"metadata": {"fuente": None, "año": 1998}})
    assert merged["metadata"] == {"tema": "familia", "año": 1998}
    assert (merged["text"], merged["importance"]) == ("Su hermana Lucía es enfermera", 0.9)
    cleared = patch(api, path, {"importance": None})
    assert (cleared["importance"], cleared["metadata"]) == (0.5, merged["metadata"])
    cleared = patch(api, path, {"metadata": None})
    assert (cleared["metadata"], cleared["importance"]) == ({}, 0.5)
    assert cleared["text"] == "Su hermana Lucía es enfermera"


@pytest.mark.parametrize("route", ["character", "instance", "memory"])
def test_null_on_a_required_field_is_a_422_naming_it(api: Api, route: str) -> None:
    character = make_character(api)
    if route == "character":
        refused(api, f"/v1/characters/{character['id']}", {"name": None}, "name")
    elif route == "instance":
        instance = make_instance(api, character["id"])
        path = f"/v1/instances/{instance['id']}"
        refused(api, path, {"name": None, "memory": "otra"}, "name")
        assert api.client.get(path, headers=api.acme).json()["memory"] == ""
    else:
        refused(api, _memory(api), {"text": None}, "text")


def test_the_schema_says_which_fields_can_be_null(api: Api) -> None:
    schemas = api.client.get("/openapi.json").json()["components"]["schemas"]

    def nullable(model: str) -> set[str]:
        fields = schemas[model]["properties"]
        return {
            name
            for name, spec in fields.items()
            if any(option.get("type") == "null" for option in spec.get("anyOf", []))
        }

    assert nullable("CharacterEdit") == {*PERSONA, *CARD, "voice"}
    assert nullable("InstanceEdit") == {"memory", "voice", "user_name"}
    # null resets occurred_at to when the snippet was recorded and clears the speaker
    assert nullable("MemoryEdit") == {"metadata", "importance", "occurred_at", "speaker"}
