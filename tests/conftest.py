"""Fixtures: every test runs on a SQLite file and on PostgreSQL, each in its own database/schema."""

from __future__ import annotations

import glob
import os
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from pytest_postgresql import factories

from alma.api.app import create_app
from alma.api.services import Services, build_services
from alma.domain import Actor
from alma.settings import Settings
from tests.openai_stub import OpenAIStub, openai_stub

__all__ = ["openai_stub"]  # a fixture: pytest finds it here

_pg_ctl = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
throwaway_postgres = factories.postgresql_proc(executable=_pg_ctl[-1] if _pg_ctl else None)


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    dbname: str

    def url(self, schema: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}?schema={schema}"

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname=self.dbname, autocommit=True
        )


def _running_server() -> PostgresServer | None:
    server = PostgresServer(
        os.environ.get("ALMA_TEST_PG_HOST", "127.0.0.1"),
        int(os.environ.get("ALMA_TEST_PG_PORT", "5432")),
        os.environ.get("ALMA_TEST_PG_USER", "postgres"),
        os.environ.get("ALMA_TEST_PG_DB", "test"),
    )
    try:
        server.connect().close()
    except psycopg.OperationalError:
        return None
    return server


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest) -> PostgresServer:
    server = _running_server()
    if server is not None:
        return server
    try:
        proc = request.getfixturevalue("throwaway_postgres")
    except Exception as error:
        message = f"NO POSTGRESQL: none on 127.0.0.1:5432 and none could be started ({error})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        warnings.warn(message + " -- SKIPPING THE POSTGRESQL HALF OF THE SUITE", stacklevel=1)
        pytest.skip(message)
    return PostgresServer(proc.host, proc.port, proc.user, "postgres")


# Read models may lag while a loaded test machine embeds, and a pooled PostgreSQL connection may
# take longer than the default 2 s to come (a full-suite run once failed a setup so); tests wait
# rather than flake.
# Memory formation would send its own requests to the chat stub, or ask the local model (a 1.5B
# extraction is seconds a turn): its tests switch it on.
_patient = {
    "_env_file": None,
    "read_model_wait_s": 30.0,
    "consistency_wait_s": 60.0,
    "postgres_connect_timeout_s": 10,
    "memory_formation": False,
}


@contextmanager
def store_settings(kind: str, folder: Path, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Settings for a store of its own: a fresh SQLite folder, or a fresh PostgreSQL schema."""
    if kind == "sqlite":
        yield Settings(data_dir=folder / "data", **_patient)  # type: ignore[arg-type]
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with server.connect() as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield Settings(  # type: ignore[call-arg]
            data_dir=folder / "data",
            database_url=server.url(schema),
            postgres_pool_size=4,
            postgres_max_overflow=8,
            **_patient,  # type: ignore[arg-type]
        )
    finally:
        with server.connect() as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """A store of the test's own, on each store."""
    with store_settings(request.param, tmp_path, request) as made:
        yield made


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def module_settings(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """One store for a whole module, on each store: for tests that only read, or that are
    refused and check that nothing was written, so none can see another's doing."""
    with store_settings(request.param, tmp_path_factory.mktemp("store"), request) as made:
        yield made


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    built = build_services(settings)
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def actor() -> Actor:
    return Actor(tenant="acme", key_id="test-key", request_id="req-1")


@dataclass
class Api:
    """A running alma app and keys for two tenants, 'acme' and 'rival'."""

    client: TestClient
    services: Services
    acme: dict[str, str]
    rival: dict[str, str]

    def written(self) -> int:
        """How many events the store holds: bad requests must not change it."""
        return self.services.app.recorder.max_notification_id() or 0


@pytest.fixture
def api(settings: Settings) -> Iterator[Api]:
    with running_api(settings) as running:
        yield running


@pytest.fixture(scope="module")
def shared_api(module_settings: Settings) -> Iterator[Api]:
    """One running alma for a whole module (see `module_settings`): starting one per test was
    most of the time of the modules that use it."""
    with running_api(module_settings) as running:
        yield running


@pytest.fixture
def chat_api(settings: Settings, openai_stub: OpenAIStub) -> Iterator[Api]:
    """alma whose chat model is the local OpenAI-compatible stub server."""
    with running_api(stubbed_model(settings, openai_stub)) as running:
        yield running


def stubbed_model(settings: Settings, stub: OpenAIStub, **more: object) -> Settings:
    """`settings` with the stub server as the chat model (and `more` settings)."""
    return settings.model_copy(
        update={
            "openai_api_key": SecretStr("sk-test-alma-0123456789"),
            "openai_base_url": stub.base_url,
            "model_timeout_s": 2.0,
            "model_max_retries": 1,
            # A turn's bound on waiting for the index: on a loaded machine embedding the
            # memory a test just wrote can take more than the default 2 s.
            "chat_memory_wait_s": 30.0,
            **more,
        }
    )


@contextmanager
def running_api(settings: Settings) -> Iterator[Api]:
    app = create_app(settings)
    with TestClient(app) as client:
        services: Services = app.state.services
        keys = {
            tenant: services.app.issue_key(tenant, Actor(tenant, "cli", "setup"))[1]
            for tenant in ("acme", "rival")
        }
        yield Api(
            client,
            services,
            {"Authorization": f"Bearer {keys['acme']}"},
            {"Authorization": f"Bearer {keys['rival']}"},
        )


def make_character(api: Api, **fields: object) -> dict[str, object]:
    body = {"name": "Doña Rosa", "description": "Curandera de la sierra", **fields}
    response = api.client.post("/v1/characters", json=body, headers=api.acme)
    assert response.status_code == 201, response.text
    result: dict[str, object] = response.json()
    return result


def search(api: Api, instance_id: str, q: str, **params: object) -> list[dict[str, Any]]:
    """The hits of a memory search as acme, once the index holds every write before it."""
    response = api.client.get(
        f"/v1/instances/{instance_id}/memories/search",
        params={"q": q, "consistent": "true", **params},
        headers=api.acme,
    )
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def make_instance(
    api: Api, character_id: object, name: str = "Rosa", memory: str = ""
) -> dict[str, object]:
    response = api.client.post(
        f"/v1/characters/{character_id}/instances",
        json={"name": name, "memory": memory},
        headers=api.acme,
    )
    assert response.status_code == 201, response.text
    result: dict[str, object] = response.json()
    return result
