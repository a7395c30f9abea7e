"""Security settings: per-key rate limits, CORS, body limits on every route, and the keys'
constant-time check."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from alma.settings import Settings
from tests.conftest import Api, make_character, make_instance, running_api
from tests.openai_stub import OpenAIStub, Reply
from tests.test_faults import serving
from tests.test_tenancy import ENDPOINTS, AcmeWorld, Endpoint, call


@pytest.fixture
def limited(settings: Settings) -> Iterator[Api]:
    with running_api(settings.model_copy(update={"rate_limit": 3})) as running:
        yield running


def test_a_key_over_its_rate_limit_gets_429_with_retry_after(limited: Api) -> None:
    for _ in range(3):
        assert limited.client.get("/v1/characters", headers=limited.acme).status_code == 200
    refused = limited.client.get("/v1/characters", headers=limited.acme)
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limited"
    # OpenAI-compatible paths answer in OpenAI's shape too.
    openai = limited.client.get("/v1/models", headers=limited.acme)
    assert openai.status_code == 429
    assert openai.json()["error"]["type"] == "rate_limit_error"
    # Each key has its own bucket.
    assert limited.client.get("/v1/characters", headers=limited.rival).status_code == 200


def test_without_a_rate_limit_nothing_is_refused(api: Api) -> None:
    for _ in range(20):
        assert api.client.get("/v1/characters", headers=api.acme).status_code == 200


PREFLIGHT = {
    "Origin": "https://app.example",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
}


def test_cors_is_off_unless_configured(api: Api) -> None:
    preflight = api.client.options("/v1/characters", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in preflight.headers
    plain = api.client.get("/v1/characters", headers={**api.acme, "Origin": "https://app.example"})
    assert "access-control-allow-origin" not in plain.headers


def test_cors_allows_only_the_configured_origins(settings: Settings) -> None:
    configured = settings.model_copy(update={"cors_origins": "https://app.example, https://b.io"})
    with running_api(configured) as api:
        preflight = api.client.options("/v1/characters", headers=PREFLIGHT)
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        other = api.client.options(
            "/v1/characters", headers={**PREFLIGHT, "Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers


BODIES = {name: e for name, e in ENDPOINTS.items() if e.body is not None or e.upload}


@pytest.fixture(scope="module")
def small_bodies(module_settings: Settings) -> Iterator[tuple[Api, AcmeWorld]]:
    """alma with small body limits and acme's character and instance, shared by the tests that
    are refused and check that nothing was written."""
    limits = {"max_body_bytes": 4096, "audio_max_bytes": 4096, "import_max_bytes": 4096}
    small = module_settings.model_copy(update=limits)
    with running_api(small) as api:
        character = make_character(api)
        instance = make_instance(api, character["id"])
        character_id, instance_id = str(character["id"]), str(instance["id"])
        # Refused before any id is looked up: the instance's stands in for the others.
        yield api, AcmeWorld(character_id, instance_id, instance_id, instance_id, instance_id, ())


@pytest.mark.parametrize("endpoint", list(BODIES.values()), ids=list(BODIES))
def test_every_route_that_takes_a_body_refuses_one_over_the_limit(
    small_bodies: tuple[Api, AcmeWorld], endpoint: Endpoint
) -> None:
    api, world = small_bodies
    padding = "x" * 100_000  # over the JSON limit, and over uploads' (audio + 64 KiB)
    oversized = Endpoint(
        endpoint.method,
        endpoint.path,
        {**(endpoint.body or {}), "padding": padding},
        upload=endpoint.upload + padding.encode() if endpoint.upload else None,
    )
    before = api.written()
    response = call(api, oversized, world, api.acme)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "payload_too_large"
    assert api.written() == before


def test_a_key_is_checked_against_its_hash_in_constant_time(api: Api) -> None:
    """The lookup is by a hash of the key; the stored hash is then compared with
    hmac.compare_digest, so a wrong key of the same id cannot get in."""
    app = api.services.app
    secret = api.acme["Authorization"].removeprefix("Bearer ")
    key = app.authenticate(secret)
    assert key is not None and key.tenant == "acme"
    assert app.authenticate(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None


@pytest.mark.slow
def test_a_running_server_logs_no_key_prompt_or_memory_text(
    tmp_path: Path, openai_stub: OpenAIStub
) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path / "data")  # type: ignore[call-arg]
    model_key = "sk-test-secret-model-key-0123456789"
    env = {
        "OPENAI_API_KEY": model_key,
        "OPENAI_BASE_URL": openai_stub.base_url,
        "ALMA_MEMORY_FORMATION": "true",  # its prompts carry the conversation too
    }
    secrets = {
        "description": "Curandera-secreta-descripcion",
        "memory text": "Vive-en-la-calle-secreta-7",
        "snippet": "Su-hermana-secreta-Lucia",
        "message": "Mi-contraseña-secreta-es-azul",
        "reply": "Respuesta-secreta-del-modelo",
    }
    openai_stub.script(Reply(secrets["reply"]), Reply("[]"))
    with serving(settings, tmp_path, env) as (http, _):
        key = http.headers["Authorization"].removeprefix("Bearer ")
        character = http.post(
            "/v1/characters", json={"name": "Rosa", "description": secrets["description"]}
        ).json()["id"]
        instance = http.post(
            f"/v1/characters/{character}/instances",
            json={"name": "Rosa", "memory": secrets["memory text"]},
        ).json()["id"]
        memory = http.post(f"/v1/instances/{instance}/memories", json={"text": secrets["snippet"]})
        assert memory.status_code == 201, memory.text
        chat = http.post(f"/v1/instances/{instance}/chat", json={"message": secrets["message"]})
        assert chat.status_code == 200, chat.text
        assert http.get("/v1/instances/nope").status_code in (404, 422)  # an error logged too
        deadline = time.monotonic() + 30
        while len(openai_stub.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # the memory process's prompt, sent from its own thread
        assert len(openai_stub.requests) == 2
        assert secrets["message"] in json.dumps(openai_stub.requests[1], ensure_ascii=False)
    (log,) = tmp_path.glob("serve-*.log")
    logged = log.read_text(encoding="utf-8")
    assert "POST /v1/instances" in logged or "/v1/instances/{instance_id}" in logged, logged
    for what, text in {**secrets, "API key": key, "model key": model_key}.items():
        assert text not in logged, f"the {what} is in the log"
