"""Tenant isolation and authentication.

Every endpoint under /v1 wants a live key (401 otherwise), and a tenant never learns anything
about another tenant's resources: their ids answer 404, exactly like ids that do not exist, and
a refused request writes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from alma.domain import Actor, Reply
from tests.conftest import Api, make_character, make_instance
from tests.speech_samples import say


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    body: dict[str, Any] | None = None
    success: int = 200
    upload: bytes | None = None  # sent as the multipart `file`, with `body` as the form


# Every endpoint under /v1, with a request its owner may make.
ENDPOINTS = {
    "create character": Endpoint("POST", "/v1/characters", {"name": "N", "description": "d"}, 201),
    "list characters": Endpoint("GET", "/v1/characters"),
    "get character": Endpoint("GET", "/v1/characters/{character_id}"),
    "edit character": Endpoint("PATCH", "/v1/characters/{character_id}", {"greeting": "¡Hola!"}),
    "delete character": Endpoint("DELETE", "/v1/characters/{character_id}", success=204),
    "character events": Endpoint("GET", "/v1/characters/{character_id}/events"),
    "import character": Endpoint("POST", "/v1/characters/import", {"name": "Card"}, 201),
    "export character": Endpoint("GET", "/v1/characters/{character_id}/export?format=v3"),
    "create instance": Endpoint(
        "POST", "/v1/characters/{character_id}/instances", {"name": "Nueva", "memory": ""}, 201
    ),
    "list instances": Endpoint("GET", "/v1/characters/{character_id}/instances"),
    "get instance": Endpoint("GET", "/v1/instances/{instance_id}"),
    "edit instance": Endpoint("PATCH", "/v1/instances/{instance_id}", {"memory": "otra"}),
    "delete instance": Endpoint("DELETE", "/v1/instances/{instance_id}", success=204),
    "fork instance": Endpoint("POST", "/v1/instances/{instance_id}/fork", {"name": "Rama"}, 201),
    "greeting": Endpoint("POST", "/v1/instances/{instance_id}/greeting", {"index": 0}, 201),
    "instance events": Endpoint("GET", "/v1/instances/{instance_id}/events"),
    "memory audit": Endpoint("GET", "/v1/instances/{instance_id}/memory/audit"),
    "add memory": Endpoint(
        "POST", "/v1/instances/{instance_id}/memories", {"text": "Otra cosa"}, 201
    ),
    "list memories": Endpoint("GET", "/v1/instances/{instance_id}/memories"),
    "search memories": Endpoint("GET", "/v1/instances/{instance_id}/memories/search?q=mole"),
    "get memory": Endpoint("GET", "/v1/instances/{instance_id}/memories/{memory_id}"),
    "edit memory": Endpoint(
        "PATCH", "/v1/instances/{instance_id}/memories/{memory_id}", {"text": "Mole poblano"}
    ),
    "forget memory": Endpoint(
        "DELETE", "/v1/instances/{instance_id}/memories/{memory_id}", success=204
    ),
    "list messages": Endpoint("GET", "/v1/instances/{instance_id}/messages"),
    # acme's first instance has no conversation (its greeting needs none), so here the route is
    # listed and refused without a key; test_built_from asks another tenant for a real reply.
    "get message": Endpoint(
        "GET", "/v1/instances/{instance_id}/messages/{message_id}", success=404
    ),
    "chat": Endpoint(
        "POST", "/v1/instances/{instance_id}/chat", {"message": "Hola", "max_tokens": 4}
    ),
    "chat completions": Endpoint(
        "POST",
        "/v1/chat/completions",
        {
            "model": "{instance_id}",
            "messages": [{"role": "user", "content": "Hola"}],
            "max_tokens": 4,
        },
    ),
    "models": Endpoint("GET", "/v1/models"),
    "model": Endpoint("GET", "/v1/models/{model}"),
    "completions": Endpoint(
        "POST", "/v1/completions", {"model": "{instance_id}", "prompt": "Hola", "max_tokens": 4}
    ),
    "responses": Endpoint(
        "POST", "/v1/responses", {"model": "{instance_id}", "input": "Hola", "max_output_tokens": 4}
    ),
    "response": Endpoint("GET", "/v1/responses/{response_id}"),
    "embeddings": Endpoint("POST", "/v1/embeddings", {"model": "any", "input": "Hola"}),
    "speech": Endpoint("POST", "/v1/audio/speech", {"input": "Hola", "voice": "{instance_id}"}),
    "transcription": Endpoint(
        "POST", "/v1/audio/transcriptions", {}, upload=say("Hello there, my friend.", "en")
    ),
    "translation": Endpoint(
        "POST", "/v1/audio/translations", {}, upload=say("Hello there, my friend.", "en")
    ),
    "voice turn": Endpoint(
        "POST",
        "/v1/instances/{instance_id}/voice",
        {"max_tokens": "4"},
        upload=say("Hello there, my friend.", "en"),
    ),
    "import messages": Endpoint(
        "POST",
        "/v1/instances/{instance_id}/messages",
        {"messages": [{"role": "user", "content": "hola"}]},
        201,
    ),
    "create lorebook": Endpoint("POST", "/v1/lorebooks", {"name": "L", "entries": []}, 201),
    "import lorebook": Endpoint("POST", "/v1/lorebooks/import", {"entries": {}}, 201),
    "list lorebooks": Endpoint("GET", "/v1/lorebooks"),
    "get lorebook": Endpoint("GET", "/v1/lorebooks/{lorebook_id}"),
    "edit lorebook": Endpoint("PATCH", "/v1/lorebooks/{lorebook_id}", {"description": "otra"}),
    "delete lorebook": Endpoint("DELETE", "/v1/lorebooks/{lorebook_id}", success=204),
    "export lorebook": Endpoint("GET", "/v1/lorebooks/{lorebook_id}/export"),
    "lorebook events": Endpoint("GET", "/v1/lorebooks/{lorebook_id}/events"),
    "add lorebook entry": Endpoint(
        "POST", "/v1/lorebooks/{lorebook_id}/entries", {"content": "x"}, 201
    ),
    "edit lorebook entry": Endpoint(
        "PATCH", "/v1/lorebooks/{lorebook_id}/entries/{entry_id}", {"content": "y"}
    ),
    "remove lorebook entry": Endpoint(
        "DELETE", "/v1/lorebooks/{lorebook_id}/entries/{entry_id}", success=204
    ),
    "attach to character": Endpoint(
        "PUT", "/v1/characters/{character_id}/lorebooks", {"lorebook_ids": ["{lorebook_id}"]}
    ),
    "character lorebooks": Endpoint("GET", "/v1/characters/{character_id}/lorebooks"),
    "attach to instance": Endpoint(
        "PUT", "/v1/instances/{instance_id}/lorebooks", {"lorebook_ids": ["{lorebook_id}"]}
    ),
    "instance lorebooks": Endpoint("GET", "/v1/instances/{instance_id}/lorebooks"),
}

# Reads of a resource as it was. Its owner is told that version 99 is out of range (422);
# another tenant must not even learn that much.
BACK_THEN = {
    "character at version 1": Endpoint("GET", "/v1/characters/{character_id}?version=1"),
    "character at version 99": Endpoint(
        "GET", "/v1/characters/{character_id}?version=99", success=422
    ),
    "character at a time": Endpoint("GET", "/v1/characters/{character_id}?at=2100-01-01T00:00:00Z"),
    "instance at version 1": Endpoint("GET", "/v1/instances/{instance_id}?version=1"),
    "instance at version 99": Endpoint(
        "GET", "/v1/instances/{instance_id}?version=99", success=422
    ),
    "instance at a time": Endpoint("GET", "/v1/instances/{instance_id}?at=2100-01-01T00:00:00Z"),
    "fork at version 1": Endpoint(
        "POST", "/v1/instances/{instance_id}/fork", {"name": "R", "at_version": 1}, 201
    ),
    "events after version 1": Endpoint("GET", "/v1/instances/{instance_id}/events?after_version=1"),
    "lorebook at version 1": Endpoint("GET", "/v1/lorebooks/{lorebook_id}?version=1"),
    "lorebook at version 99": Endpoint(
        "GET", "/v1/lorebooks/{lorebook_id}?version=99", success=422
    ),
}

WITH_AN_ID = {name: e for name, e in ENDPOINTS.items() if "{" in e.path}


def each(table: dict[str, Endpoint]) -> Any:
    return pytest.mark.parametrize("endpoint", list(table.values()), ids=list(table))


@dataclass(frozen=True)
class AcmeWorld:
    """Acme's character and instance, and the texts that must never reach another tenant."""

    character_id: str
    instance_id: str
    memory_id: str
    lorebook_id: str
    response_id: str  # a turn of acme's other instance (the first has no conversation)
    secrets: tuple[str, ...]


@pytest.fixture
def acme(api: Api) -> AcmeWorld:
    return make_acme(api)


@pytest.fixture(scope="module")
def shared_acme(shared_api: Api) -> AcmeWorld:
    """Acme's world in the module's one running alma (conftest's `shared_api`), for the tests
    that are refused and check that nothing was written."""
    return make_acme(shared_api)


def make_acme(api: Api) -> AcmeWorld:
    character = make_character(
        api, name="Doña Rosa de Acme", description="Receta secreta", greeting="¡Pásele!"
    )
    instance = make_instance(api, character["id"], name="Rosa", memory="El mole lleva cacao.")
    edited = api.client.patch(
        f"/v1/instances/{instance['id']}",
        json={"memory": "El mole lleva cacao y chile pasilla."},
        headers=api.acme,
    )
    assert edited.status_code == 200, edited.text
    memory = api.client.post(
        f"/v1/instances/{instance['id']}/memories",
        json={"text": "La abuela guarda la receta del mole"},
        headers=api.acme,
    )
    assert memory.status_code == 201, memory.text
    lorebook = api.client.post(
        "/v1/lorebooks",
        json={"name": "Recetario", "entries": [{"keys": ["mole"], "content": "El mole negro"}]},
        headers=api.acme,
    )
    assert lorebook.status_code == 201, lorebook.text
    secrets = (
        "Doña Rosa de Acme",
        "Receta secreta",
        "El mole lleva cacao",
        "receta del mole",
        "acme",
        "Recetario",
        "El mole negro",
        "Pásele, que el mole ya está",
    )
    return AcmeWorld(
        str(character["id"]),
        str(instance["id"]),
        memory.json()["id"],
        lorebook.json()["id"],
        _a_turn(api, character["id"], secrets[-1]),
        secrets,
    )


def _a_turn(api: Api, character_id: object, said: str) -> str:
    """The response id of a turn recorded on another instance of acme's character."""
    talk = UUID(str(make_instance(api, character_id, name="Rosa de la cocina")["id"]))
    app, actor = api.services.app, Actor("acme", "cli", "setup")
    asked = app.record_message("acme", talk, "¿Ya está el mole?", actor)
    reply = Reply(asked, said, "local/test", 1, 1, 1, (), "")
    reply_id, _ = app.record_reply("acme", talk, reply, actor)
    return f"resp_{talk.hex}{reply_id.hex}"


def call(api: Api, endpoint: Endpoint, world: AcmeWorld, headers: dict[str, str]) -> httpx.Response:
    path = endpoint.path.format(
        character_id=world.character_id,
        instance_id=world.instance_id,
        memory_id=world.memory_id,
        message_id=uuid4(),
        model=world.instance_id,  # the OpenAI-compatible name of an instance
        lorebook_id=world.lorebook_id,
        entry_id=0,
        response_id=world.response_id,
    )
    body = endpoint.body
    if body is not None:  # ids in bodies too (the OpenAI-compatible `model`, lorebooks)
        text = json.dumps(body).replace("{instance_id}", world.instance_id)
        body = json.loads(text.replace("{lorebook_id}", world.lorebook_id))
    if endpoint.upload is not None:
        files = {"file": ("speech.wav", endpoint.upload, "audio/wav")}
        return api.client.request(endpoint.method, path, data=body, files=files, headers=headers)
    return api.client.request(endpoint.method, path, json=body, headers=headers)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["details"], type(error["message"])) == (code, None, str)
    # OpenAI-compatible paths add OpenAI's own `type` and `param`; nothing else is added.
    assert set(error) - {"code", "message", "details"} <= {"type", "param"}


def test_the_table_lists_every_v1_endpoint(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()
    served = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        if path.startswith("/v1/")
        for method in operations
    }
    listed = {(e.method, e.path.split("?")[0]) for e in ENDPOINTS.values()}
    assert served == listed, "add the new endpoints to ENDPOINTS, so tenancy covers them"


# Authentication: no key, a malformed header, an unknown or revoked key.


def revoked_key(api: Api) -> dict[str, str]:
    actor = Actor("acme", "cli", "setup")
    key_id, secret = api.services.app.issue_key("acme", actor)
    api.services.app.revoke_key(key_id, actor)
    return {"Authorization": f"Bearer {secret}"}


def acme_secret(api: Api) -> str:
    return api.acme["Authorization"].removeprefix("Bearer ")


BAD_CREDENTIALS: dict[str, Callable[[Api], dict[str, str]]] = {
    "no Authorization header": lambda api: {},
    "an empty Authorization header": lambda api: {"Authorization": ""},
    "Bearer and no key": lambda api: {"Authorization": "Bearer"},
    "Bearer and blanks": lambda api: {"Authorization": "Bearer    "},
    "a key without its scheme": lambda api: {"Authorization": acme_secret(api)},
    "a key under the Basic scheme": lambda api: {"Authorization": f"Basic {acme_secret(api)}"},
    "a key under the Token scheme": lambda api: {"Authorization": f"Token {acme_secret(api)}"},
    "a key with a character missing": lambda api: {"Authorization": api.acme["Authorization"][:-1]},
    "a key with a character added": lambda api: {"Authorization": api.acme["Authorization"] + "x"},
    "a key sent as X-API-Key": lambda api: {"X-API-Key": acme_secret(api)},
    "an unknown key": lambda api: {"Authorization": "Bearer alma_" + "A" * 43},
    "a revoked key": revoked_key,
}


@pytest.mark.parametrize("credentials", list(BAD_CREDENTIALS.values()), ids=list(BAD_CREDENTIALS))
def test_every_endpoint_answers_401_without_a_live_key(
    shared_api: Api, shared_acme: AcmeWorld, credentials: Callable[[Api], dict[str, str]]
) -> None:
    api, acme = shared_api, shared_acme
    headers = credentials(api)
    before = api.written()
    for name, endpoint in ENDPOINTS.items():
        response = call(api, endpoint, acme, headers)
        assert response.status_code == 401, (name, response.text)
        assert_error(response, 401, "unauthorized")
    assert api.written() == before


def test_revoking_a_key_takes_effect_at_once(api: Api, acme: AcmeWorld) -> None:
    actor = Actor("acme", "cli", "ops")
    key_id, secret = api.services.app.issue_key("acme", actor)
    headers = {"Authorization": f"Bearer {secret}"}
    assert api.client.get("/v1/characters", headers=headers).status_code == 200

    api.services.app.revoke_key(key_id, actor)

    assert_error(api.client.get("/v1/characters", headers=headers), 401, "unauthorized")
    assert api.client.get("/v1/characters", headers=api.acme).status_code == 200


def test_every_key_of_a_tenant_sees_the_same_resources(api: Api, acme: AcmeWorld) -> None:
    _, secret = api.services.app.issue_key("acme", Actor("acme", "cli", "ops"))
    response = api.client.get(
        f"/v1/instances/{acme.instance_id}", headers={"Authorization": f"Bearer {secret}"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["memory"] == "El mole lleva cacao y chile pasilla."


# Isolation: another tenant's ids are not found, and its lists are its own.


@each(ENDPOINTS | BACK_THEN)
def test_the_owner_reaches_every_endpoint(api: Api, acme: AcmeWorld, endpoint: Endpoint) -> None:
    """The requests in the tables are good ones: only the key decides the answers below."""
    response = call(api, endpoint, acme, api.acme)
    assert response.status_code == endpoint.success, response.text


@each(WITH_AN_ID | BACK_THEN)
def test_another_tenant_gets_404_for_every_id_of_acme(
    shared_api: Api, shared_acme: AcmeWorld, endpoint: Endpoint
) -> None:
    api, acme = shared_api, shared_acme
    before = api.written()
    response = call(api, endpoint, acme, api.rival)
    assert_error(response, 404, "not_found")
    for secret in acme.secrets:
        assert secret not in response.text
    assert api.written() == before


def test_another_tenant_changes_nothing_of_acme(shared_api: Api, shared_acme: AcmeWorld) -> None:
    api, acme = shared_api, shared_acme

    def state() -> tuple[Any, ...]:
        character = api.client.get(f"/v1/characters/{acme.character_id}", headers=api.acme)
        instance = api.client.get(f"/v1/instances/{acme.instance_id}", headers=api.acme)
        return character.json(), instance.json()

    before = state()
    for endpoint in WITH_AN_ID.values():
        assert call(api, endpoint, acme, api.rival).status_code == 404
    assert state() == before


def test_another_tenants_list_never_shows_acmes_characters(api: Api, acme: AcmeWorld) -> None:
    own = api.client.post(
        "/v1/characters", json={"name": "Don Rival", "description": "d"}, headers=api.rival
    )
    assert own.status_code == 201, own.text

    listed = api.client.get("/v1/characters", headers=api.rival).json()
    assert [c["name"] for c in listed["items"]] == ["Don Rival"]
    assert listed["next_cursor"] is None
    searched = api.client.get("/v1/characters", params={"q": "Rosa"}, headers=api.rival).json()
    assert searched == {"items": [], "next_cursor": None}

    acmes = api.client.get("/v1/characters", headers=api.acme).json()
    assert [c["name"] for c in acmes["items"]] == ["Doña Rosa de Acme"]


def test_a_cursor_from_one_tenant_pages_only_the_other_tenants_own_list(
    api: Api, acme: AcmeWorld
) -> None:
    for n in range(3):
        make_character(api, name=f"Acme {n}")
    first = api.client.get("/v1/characters", params={"limit": 1}, headers=api.acme).json()
    assert first["next_cursor"] is not None
    page = api.client.get(
        "/v1/characters", params={"cursor": first["next_cursor"]}, headers=api.rival
    )
    assert page.status_code == 200, page.text
    assert page.json() == {"items": [], "next_cursor": None}


def test_instance_names_are_unique_per_tenant_not_across_tenants(api: Api, acme: AcmeWorld) -> None:
    rivals = api.client.post(
        "/v1/characters", json={"name": "Don Rival", "description": "d"}, headers=api.rival
    ).json()
    path = f"/v1/characters/{rivals['id']}/instances"

    same_name = api.client.post(path, json={"name": "Rosa"}, headers=api.rival)
    assert same_name.status_code == 201, same_name.text
    assert same_name.json()["name"] == "Rosa"

    again = api.client.post(path, json={"name": "Rosa"}, headers=api.rival)
    assert_error(again, 409, "name_taken")
    acme_again = api.client.post(
        f"/v1/characters/{acme.character_id}/instances", json={"name": "Rosa"}, headers=api.acme
    )
    assert_error(acme_again, 409, "name_taken")


def test_renaming_into_a_name_another_tenant_uses_is_allowed(api: Api, acme: AcmeWorld) -> None:
    rivals = api.client.post(
        "/v1/characters", json={"name": "Don Rival", "description": "d"}, headers=api.rival
    ).json()
    instance = api.client.post(
        f"/v1/characters/{rivals['id']}/instances", json={"name": "Rival"}, headers=api.rival
    ).json()
    renamed = api.client.patch(
        f"/v1/instances/{instance['id']}", json={"name": "Rosa"}, headers=api.rival
    )
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "Rosa"
    assert (
        api.client.get(f"/v1/instances/{acme.instance_id}", headers=api.acme).json()["name"]
        == "Rosa"
    )


# Ids of another tenant inside bodies, OpenAI `model` names, and erasure.


def test_a_voice_naming_another_tenants_instance_or_character_is_not_found(
    api: Api, acme: AcmeWorld
) -> None:
    for voice in (acme.instance_id, acme.character_id):
        response = api.client.post(
            "/v1/audio/speech", json={"input": "Hola", "voice": voice}, headers=api.rival
        )
        assert_error(response, 404, "not_found")


def test_a_model_named_after_another_tenants_instance_is_not_found(
    api: Api, acme: AcmeWorld
) -> None:
    before = api.written()
    for model in (acme.instance_id, "Rosa", "Doña Rosa de Acme/Rosa"):
        response = api.client.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "Hola"}]},
            headers=api.rival,
        )
        assert_error(response, 404, "not_found")
        for secret in acme.secrets:
            assert secret not in response.text
    assert api.written() == before
    assert api.client.get("/v1/models", headers=api.rival).json()["data"] == []
    listed = api.client.get("/v1/models", headers=api.acme).json()["data"]
    assert sorted((m["name"], m["id"] == acme.instance_id) for m in listed) == [
        ("Rosa", True),
        ("Rosa de la cocina", False),
    ]


@pytest.mark.parametrize("kind", ["characters", "instances"])
def test_another_tenant_cannot_erase_and_an_erased_id_is_not_found(
    api: Api, acme: AcmeWorld, kind: str
) -> None:
    aggregate_id = acme.character_id if kind == "characters" else acme.instance_id
    path = f"/v1/{kind}/{aggregate_id}"
    before = api.written()
    assert_error(api.client.delete(f"{path}?erase=true", headers=api.rival), 404, "not_found")
    assert api.written() == before
    assert api.client.get(path, headers=api.acme).status_code == 200

    assert api.client.delete(f"{path}?erase=true", headers=api.acme).status_code == 204

    for headers in (api.acme, api.rival):
        assert_error(api.client.get(path, headers=headers), 404, "not_found")
        assert_error(api.client.get(f"{path}/events", headers=headers), 404, "not_found")
