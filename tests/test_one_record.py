"""One record must not stop search: not for its instance, not for anyone else's (issue 14, 8).
A time without a zone is UTC, every value the API accepts fits every store, and an event a read
model cannot apply is skipped, recorded and shown until a rebuild clears it."""

from __future__ import annotations

from uuid import UUID

import pytest

from alma.api.services import Services, build_memory_index
from alma.domain import Actor, Memory
from alma.projections import Follower
from tests.cli import alma
from tests.conftest import Api, make_character, make_instance

ACTOR = Actor("acme", "test", "req-1")


def _instance(api: Api, name: str = "Rosa") -> str:
    return str(make_instance(api, make_character(api)["id"], name=name)["id"])


def _search(api: Api, instance_id: str, q: str, consistent: bool) -> list[dict[str, object]]:
    response = api.client.get(
        f"/v1/instances/{instance_id}/memories/search",
        params={"q": q, "consistent": str(consistent).lower()},
        headers=api.acme,
    )
    assert response.status_code == 200, response.text
    results: list[dict[str, object]] = response.json()["results"]
    return results


def test_a_message_imported_without_a_time_zone_is_utc_and_its_instance_stays_searchable(
    api: Api,
) -> None:
    instance = _instance(api)
    imported = api.client.post(
        f"/v1/instances/{instance}/messages",
        json={
            "messages": [
                {
                    "role": "user",
                    "content": "My sister Lucia is a nurse in Triana",
                    "timestamp": "2023-05-08T13:56:00",
                },
                {
                    "role": "assistant",
                    "content": "Then she works nights at the hospital",
                    "timestamp": "2023-05-08T15:56:00+02:00",
                },
            ]
        },
        headers=api.acme,
    )
    assert imported.status_code == 201, imported.text

    found = _search(api, instance, "sister nurse", consistent=True)
    assert found[0]["text"] == "My sister Lucia is a nurse in Triana"
    assert found[0]["created_at"] == "2023-05-08T13:56:00Z"
    assert _search(api, instance, "sister nurse", consistent=False) == found
    messages = api.client.get(f"/v1/instances/{instance}/messages", headers=api.acme).json()
    # Both said at 13:56 UTC: the second one's offset is converted, not dropped.
    assert [m["timestamp"] for m in messages["items"]] == ["2023-05-08T13:56:00Z"] * 2


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"])
def test_a_time_outside_the_years_1_to_9999_in_utc_is_refused(api: Api, moment: str) -> None:
    instance = _instance(api)
    before = api.written()
    imported = api.client.post(
        f"/v1/instances/{instance}/messages",
        json={"messages": [{"role": "user", "content": "hola", "timestamp": moment}]},
        headers=api.acme,
    )
    assert imported.status_code == 422, imported.text
    assert imported.json()["error"]["code"] == "invalid_request"
    state = api.client.get(f"/v1/instances/{instance}", params={"at": moment}, headers=api.acme)
    assert state.status_code == 422, state.text
    assert api.written() == before


def test_an_importance_the_api_accepts_is_stored_and_searchable_on_every_store(api: Api) -> None:
    instance = _instance(api)
    base = f"/v1/instances/{instance}/memories"
    for importance in (1e-50, 5e-324):  # PostgreSQL's 4-byte REAL held neither
        created = api.client.post(
            base,
            json={"text": f"Lucia keeps bees {importance}", "importance": importance},
            headers=api.acme,
        )
        assert created.status_code == 201, created.text
    found = _search(api, instance, "Lucia keeps bees", consistent=True)
    assert sorted(r["text"] for r in found) == ["Lucia keeps bees 1e-50", "Lucia keeps bees 5e-324"]
    listed = api.client.get(base, headers=api.acme)
    assert listed.status_code == 200, listed.text
    assert sorted(m["importance"] for m in listed.json()["items"]) == [5e-324, 1e-50]


@pytest.mark.parametrize("importance", ["1.5", "-0.1", "NaN", "Infinity", "1e400"])
def test_an_importance_outside_0_to_1_is_refused_at_the_door_as_the_schema_says(
    api: Api, importance: str
) -> None:
    instance = _instance(api)
    memory = api.services.app.add_memory("acme", UUID(instance), "Lucia", ACTOR)
    before = api.written()
    for method, path in (
        ("POST", f"/v1/instances/{instance}/memories"),
        ("PATCH", f"/v1/instances/{instance}/memories/{memory.id}"),
    ):
        response = api.client.request(
            method,
            path,
            content=f'{{"text": "x", "importance": {importance}}}',
            headers={**api.acme, "Content-Type": "application/json"},
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["details"] == {"field": "importance"}
    assert api.written() == before
    schemas = api.client.get("/openapi.json").json()["components"]["schemas"]
    for body in ("MemoryCreate", "MemoryEdit"):
        declared = schemas[body]["properties"]["importance"]
        assert (declared["minimum"], declared["maximum"]) == (0, 1)


def test_an_index_that_held_importance_as_a_4_byte_real_is_widened_when_opened(
    services: Services, actor: Actor
) -> None:
    store = services.memory_index.store
    if store.dialect == "postgresql":  # the column as earlier versions made it
        with store.transaction() as cursor:
            cursor.execute("ALTER TABLE memory_docs ALTER COLUMN importance TYPE REAL")
    character = services.app.create_character("acme", {"name": "Rosa", "description": "-"}, actor)
    instance = services.app.create_instance("acme", character.id, "Rosa", "", actor)
    services.app.add_memory("acme", instance.id, "Lucia keeps bees", actor, importance=1e-50)

    reopened = build_memory_index(services.settings)
    try:
        Follower(services.app, reopened, services.locks, services.settings.partitions).catch_up()
        (hit,) = reopened.search(instance.id, "bees")
        assert (hit.doc.text, hit.doc.importance) == ("Lucia keeps bees", 1e-50)
    finally:
        reopened.close()


def _metric(api: Api, name: str, projection: str) -> float:
    for line in api.client.get("/metrics").text.splitlines():
        if line.startswith(f'{name}{{projection="{projection}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} for {projection}")


def test_an_event_the_index_cannot_apply_is_skipped_shown_and_cleared_by_a_rebuild(
    api: Api,
) -> None:
    poisoned, other = _instance(api, "Rosa"), _instance(api, "Ana")
    character = api.client.post(
        "/v1/characters", json={"name": "Don Rival", "description": "d"}, headers=api.rival
    ).json()
    rival = api.client.post(
        f"/v1/characters/{character['id']}/instances", json={"name": "Rival"}, headers=api.rival
    ).json()["id"]
    # A memory whose text is no text, as a tool writing events past the domain's rules (or an
    # earlier version's) could leave in the log: no read model can index it.
    bad = Memory("acme", UUID(poisoned), 12345, {}, 0.5, None, ACTOR)  # type: ignore[arg-type]
    api.services.app.save(bad)
    for instance, headers in ((other, api.acme), (rival, api.rival)):
        added = api.client.post(
            f"/v1/instances/{instance}/memories", json={"text": "Lucia keeps bees"}, headers=headers
        )
        assert added.status_code == 201, added.text

    found = _search(api, other, "bees", consistent=True)  # past the bad event
    assert [r["text"] for r in found] == ["Lucia keeps bees"]
    rival_found = api.client.get(
        f"/v1/instances/{rival}/memories/search",
        params={"q": "bees", "consistent": "true"},
        headers=api.rival,
    )
    assert rival_found.status_code == 200, rival_found.text
    assert [r["text"] for r in rival_found.json()["results"]] == ["Lucia keeps bees"]
    assert _search(api, poisoned, "bees", consistent=True) == []
    health = api.client.get("/health")
    assert health.status_code == 200, health.text  # serving: every replica would skip it too
    assert health.json()["status"] == "degraded"
    assert health.json()["projections"]["memory-index"] == 0
    skipped = [s for s in health.json()["skipped_events"] if s["projection"] == "memory-index"]
    assert [(s["originator_id"], s["error"]) for s in skipped] == [(str(bad.id), "TypeError")]
    assert skipped[0]["position"] > 0
    assert _metric(api, "alma_projection_skipped_events", "memory-index") == 1

    # Erasing what holds it, then rebuilding, leaves nothing the projections cannot read.
    erased = api.client.delete(f"/v1/instances/{poisoned}?erase=true", headers=api.acme)
    assert erased.status_code == 204, erased.text
    rebuilt = alma(api.services.settings, "projections", "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    health = api.client.get("/health")
    assert (health.json()["status"], health.json()["skipped_events"]) == ("ok", [])
    assert _metric(api, "alma_projection_skipped_events", "memory-index") == 0
    assert [r["text"] for r in _search(api, other, "bees", consistent=True)] == ["Lucia keeps bees"]
