"""The `alma` command line, run as the installed console script against a real store.

Each test runs the script in a subprocess with `ALMA_DATA_DIR` (and, for PostgreSQL,
`ALMA_DATABASE_URL`) pointing at the store the `settings` fixture made, then checks the result
through the application or the HTTP API built on the very same settings.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from alma.api.services import Services, build_services
from alma.domain import Actor
from alma.settings import Settings
from tests.cli import (
    ALMA,
    KEY_RE,
    alma,
    assert_clean_failure,
    bearer,
    create_key,
    free_port,
    running,
    wait_for_health,
)
from tests.conftest import Api, make_character, make_instance

STATUS_RE = re.compile(r"^listings\s+position (\d+)\s+lag (\d+)\s+lag_seconds")


def test_the_installed_script_runs() -> None:
    """`alma` is the editable install's console script: a new top-level module is importable
    from it only once it is in pyproject's py-modules *and* `pip install -e .` has been re-run."""
    result = subprocess.run(
        [ALMA, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"`{ALMA} --help` failed; re-run `pip install -e .`?\n" + (
        result.stderr
    )
    for command in ("serve", "worker", "keys", "replay", "projections"):
        assert command in result.stdout


@pytest.fixture
def sqlite_services(tmp_path: Path) -> Iterator[Services]:
    """For refusals, which do not depend on the store: one store keeps the suite quick."""
    built = build_services(Settings(data_dir=tmp_path / "data", _env_file=None))  # type: ignore[call-arg]
    try:
        yield built
    finally:
        built.close()


# keys


def test_keys_create_prints_exactly_one_line_the_key_and_it_works(api: Api) -> None:
    settings = api.services.settings
    result = alma(settings, "keys", "create", "--tenant", "acme")

    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    key = lines[0]
    assert key.startswith("alma_") and KEY_RE.fullmatch(key), key
    assert key not in result.stderr  # the key id goes to stderr, never the secret

    found = api.services.app.authenticate(key)
    assert found is not None and found.tenant == "acme"
    assert str(found.id) in result.stderr
    created = make_character(api)
    listed = api.client.get("/v1/characters", headers=bearer(key))
    assert listed.status_code == 200, listed.text
    assert [item["id"] for item in listed.json()["items"]] == [created["id"]]

    _, rival = create_key(settings, "rival")  # a new key each time, of its own tenant
    assert rival != key
    other = api.client.get(f"/v1/characters/{created['id']}", headers=bearer(rival))
    assert other.status_code == 404, other.text


def test_keys_create_refuses_a_bad_tenant_name(sqlite_services: Services) -> None:
    result = alma(sqlite_services.settings, "keys", "create", "--tenant", "Not OK")
    assert_clean_failure(result)
    assert "tenant" in result.stderr
    missing = alma(sqlite_services.settings, "keys", "create")
    assert missing.returncode != 0 and missing.stdout == ""
    assert "--tenant" in missing.stderr
    assert not sqlite_services.app.has_keys()
    assert (sqlite_services.app.recorder.max_notification_id() or 0) == 0


def test_keys_revoke_stops_the_key_at_once(api: Api) -> None:
    settings = api.services.settings
    issued, key = api.services.app.issue_key("acme", Actor("acme", "cli", "test"))
    key_id = str(issued)  # what `keys create` prints on stderr (checked above)
    assert api.client.get("/v1/characters", headers=bearer(key)).status_code == 200

    result = alma(settings, "keys", "revoke", key_id)

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    refused = api.client.get("/v1/characters", headers=bearer(key))
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"]["code"] == "unauthorized"
    assert api.services.app.authenticate(key) is None
    assert api.client.get("/v1/characters", headers=api.acme).status_code == 200  # others work

    again = alma(settings, "keys", "revoke", key_id)  # revoking twice is harmless
    assert again.returncode == 0, again.stderr
    assert api.client.get("/v1/characters", headers=bearer(key)).status_code == 401


def test_keys_revoke_refuses_what_is_not_a_key(sqlite_services: Services, actor: Actor) -> None:
    app = sqlite_services.app
    character = app.create_character("acme", {"name": "Rosa", "description": ""}, actor)
    for key_id in ("not-a-uuid", str(character.id)):
        assert_clean_failure(alma(sqlite_services.settings, "keys", "revoke", key_id))
    assert app.character("acme", character.id).version == 1


# replay


def _replay_lines(settings: Settings, *args: str) -> list[dict[str, Any]]:
    result = alma(settings, "replay", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.slow
def test_replay_prints_each_event_and_the_state_after_it(api: Api) -> None:
    character = make_character(api)
    instance = make_instance(api, character["id"], name="Rosa", memory="Vive en Oaxaca")
    path = f"/v1/instances/{instance['id']}"
    edits = [
        {"memory": "Vive en Oaxaca. Le gusta el café ☕"},
        {"name": "Rosa la curandera"},
        {"name": "José", "memory": "שלום — nueva memoria\nsegunda línea"},
        {"memory": ""},
    ]
    for body in edits:
        response = api.client.patch(path, json=body, headers=api.acme)
        assert response.status_code == 200, response.text
    current = api.client.get(path, headers=api.acme).json()
    version = current["version"]
    assert version == 6

    lines = _replay_lines(api.services.settings, str(instance["id"]))

    assert len(lines) == version
    events = api.client.get(f"{path}/events", params={"limit": 500}, headers=api.acme).json()
    for n, line in enumerate(lines, start=1):
        assert set(line) == {"event", "state"}
        then = api.client.get(path, params={"version": n}, headers=api.acme)
        assert then.status_code == 200, then.text
        assert line["state"] == then.json(), f"state after event {n}"
        assert line["event"] == events["items"][n - 1], f"event {n}"
    assert lines[-1]["state"] == current
    assert [line["event"]["type"] for line in lines][:3] == [
        "Created",
        "MemoryRewritten",
        "Renamed",
    ]

    head = _replay_lines(api.services.settings, str(instance["id"]), "--to-version", "3")
    assert head == lines[:3]

    assert api.client.delete(path, headers=api.acme).status_code == 204
    after_delete = _replay_lines(api.services.settings, str(instance["id"]))  # history stays
    assert after_delete[:version] == lines
    assert len(after_delete) == version + 1
    assert after_delete[-1]["event"]["type"] == "Archived"


def test_replay_refuses_what_is_not_an_instance(sqlite_services: Services, actor: Actor) -> None:
    app = sqlite_services.app
    character = app.create_character("acme", {"name": "Rosa", "description": ""}, actor)
    for instance_id in (str(character.id), "not-a-uuid"):
        assert_clean_failure(alma(sqlite_services.settings, "replay", instance_id))


def test_replay_of_an_unknown_instance_fails_cleanly(sqlite_services: Services) -> None:
    """An id with no events must answer like any other refusal: a message, not a traceback."""
    assert_clean_failure(alma(sqlite_services.settings, "replay", str(uuid.uuid4())))


# projections


def _status(settings: Settings) -> tuple[int, int]:
    """The listings line of `alma projections status` (one line per read model)."""
    result = alma(settings, "projections", "status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    projection = r"\S+\tposition \d+\tlag \d+\tlag_seconds [\d.e+-]+"
    partition = r"\S+ partition \d+\tposition \d+\tlag \d+\tlag_seconds [\d.e+-]+\towner \S+"
    assert lines and all(re.fullmatch(f"{projection}|{partition}", line) for line in lines)
    (match,) = [m for m in map(STATUS_RE.match, lines) if m]
    return int(match[1]), int(match[2])


def _fill(services: Services) -> None:
    app = services.app
    for tenant in ("acme", "rival"):
        actor = Actor(tenant, "test", "fill")
        rosa = app.create_character(
            tenant, {"name": "Doña Rosa", "description": "Curandera"}, actor
        )
        juan = app.create_character(tenant, {"name": "Juan", "description": "Arriero"}, actor)
        one = app.create_instance(tenant, rosa.id, "Rosa 1", "", actor)
        app.create_instance(tenant, rosa.id, "Rosa 2", "", actor)
        app.create_instance(tenant, juan.id, "Juan 1", "", actor)
        app.edit_character(tenant, juan.id, {"name": "Don Juan", "description": "Viejo"}, actor)
        app.edit_instance(tenant, one.id, actor, name="Rosita")
        app.archive_character(tenant, rosa.id, actor)


def _view(services: Services) -> Any:
    """The listings view (`services.listings_view`, or the follower's `view` in older trees)."""
    view = getattr(services, "listings_view", None)
    return view if view is not None else services.listings.view  # type: ignore[attr-defined]


def _listing(services: Services) -> dict[tuple[str, str], list[uuid.UUID]]:
    view = _view(services)
    return {
        (kind, tenant): [entry.id for entry in view.select(kind, tenant, 0, 500)]
        for kind in ("character", "instance")
        for tenant in ("acme", "rival")
    }


@pytest.mark.slow
def test_projections_status_shows_position_and_lag(services: Services) -> None:
    _fill(services)
    written = services.app.recorder.max_notification_id()
    assert written > 0

    assert _status(services.settings) == (0, written)
    services.listings.catch_up()
    assert _status(services.settings) == (written, 0)


@pytest.mark.slow
def test_projections_rebuild_gives_the_same_listing(services: Services) -> None:
    _fill(services)
    services.listings.catch_up()
    before = _listing(services)
    position = services.listings.position()
    assert before[("character", "acme")] and before[("instance", "rival")]

    result = alma(services.settings, "projections", "rebuild", "listings")
    assert result.returncode == 0, result.stderr
    assert _listing(services) == before
    assert services.listings.position() == position

    _view(services).clear()  # a lost read model...
    assert all(not ids for ids in _listing(services).values())
    assert services.listings.position() == 0
    result = alma(services.settings, "projections", "rebuild")  # ...is rebuilt (no name: all)
    assert result.returncode == 0, result.stderr
    assert _listing(services) == before
    assert services.listings.position() == position
    assert services.listings.lag() == 0

    assert_clean_failure(alma(services.settings, "projections", "rebuild", "nope"))
    assert _listing(services) == before


# serve and worker


@pytest.mark.slow
def test_serve_on_an_empty_store_prints_a_default_key_once(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    first_log = tmp_path / "first.log"
    with running(settings, ["serve", "--port", str(port)], first_log) as process:
        health = wait_for_health(base, process, first_log)
        assert health.json()["status"] == "ok"
        assert health.json()["event_store"] == "ok"
        docs = httpx.get(f"{base}/docs", timeout=5)
        assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
        assert httpx.get(f"{base}/openapi.json", timeout=5).status_code == 200

        keys = KEY_RE.findall(first_log.read_text())
        assert len(keys) == 1, first_log.read_text()
        key = keys[0]
        assert "'default'" in first_log.read_text()
        assert httpx.get(f"{base}/v1/characters", timeout=5).status_code == 401
        created = httpx.post(
            f"{base}/v1/characters",
            json={"name": "Doña Rosa", "description": "Curandera"},
            headers=bearer(key),
            timeout=5,
        )
        assert created.status_code == 201, created.text
        listed = httpx.get(f"{base}/v1/characters", headers=bearer(key), timeout=5)
        assert listed.status_code == 200, listed.text
        assert [item["id"] for item in listed.json()["items"]] == [created.json()["id"]]

    services = build_services(settings)
    try:
        found = services.app.authenticate(key)
        assert found is not None and found.tenant == "default"
    finally:
        services.close()

    second_log = tmp_path / "second.log"
    with running(settings, ["serve", "--port", str(port)], second_log) as process:
        wait_for_health(base, process, second_log)
        assert "alma_" not in second_log.read_text()
        again = httpx.get(f"{base}/v1/characters", headers=bearer(key), timeout=5)
        assert again.status_code == 200, again.text
        assert len(again.json()["items"]) == 1


@pytest.mark.slow
def test_worker_follows_the_log_and_stops_on_sigterm(services: Services, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    with running(services.settings, ["worker"], log) as process:
        _fill(services)
        written = services.app.recorder.max_notification_id()
        deadline = time.monotonic() + 20
        while services.listings.position() < written:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"worker stuck at {services.listings.position()}"
            time.sleep(0.05)
    assert process.returncode == 0, log.read_text()
    assert services.listings.lag() == 0
    assert _listing(services)[("character", "acme")]
