"""The HTTP contract of API.md for characters, instances, events, audit and fork."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.conftest import Api, make_character, make_instance


def test_editing_a_character_records_one_event_per_changed_field(api: Api) -> None:
    character = make_character(api)
    response = api.client.patch(
        f"/v1/characters/{character['id']}",
        json={
            "name": "Rosa María",
            "personality": "risueña",
            "description": character["description"],
        },
        headers=api.acme,
    )
    assert response.status_code == 200
    assert response.json()["version"] == 3
    events = api.client.get(f"/v1/characters/{character['id']}/events", headers=api.acme).json()
    assert [e["type"] for e in events["items"]] == ["Created", "Renamed", "PersonalityChanged"]
    assert events["items"][1]["data"] == {"name": "Rosa María"}
    assert events["items"][1]["actor"]["tenant"] == "acme"


def test_every_event_carries_the_request_id_of_the_request_that_caused_it(api: Api) -> None:
    character = make_character(api)
    response = api.client.patch(
        f"/v1/characters/{character['id']}",
        json={"greeting": "¡Buenas!"},
        headers={**api.acme, "X-Request-ID": "trace-42"},
    )
    assert response.headers["x-request-id"] == "trace-42"
    events = api.client.get(f"/v1/characters/{character['id']}/events", headers=api.acme).json()
    assert events["items"][-1]["actor"]["request_id"] == "trace-42"


def test_if_match_with_a_stale_version_answers_409_with_the_current_version(api: Api) -> None:
    instance = make_instance(api, make_character(api)["id"])
    path = f"/v1/instances/{instance['id']}"
    assert (
        api.client.patch(
            path, json={"memory": "a"}, headers={**api.acme, "If-Match": "1"}
        ).status_code
        == 200
    )
    stale = api.client.patch(path, json={"memory": "b"}, headers={**api.acme, "If-Match": '"1"'})
    assert stale.status_code == 409
    assert stale.json()["error"]["details"] == {"current_version": 2}
    assert api.client.get(path, headers=api.acme).json()["memory"] == "a"


def test_an_instance_name_taken_in_the_tenant_answers_409(api: Api) -> None:
    character = make_character(api)
    make_instance(api, character["id"], name="Rosa")
    other = make_character(api, name="Otro")
    response = api.client.post(
        f"/v1/characters/{other['id']}/instances", json={"name": "rosa"}, headers=api.acme
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "name_taken"


def test_state_back_then_by_version_and_by_time(api: Api) -> None:
    instance = make_instance(api, make_character(api)["id"], memory="primero")
    path = f"/v1/instances/{instance['id']}"
    between = datetime.now(UTC).isoformat()
    api.client.patch(path, json={"memory": "segundo", "name": "Rosa II"}, headers=api.acme)
    assert api.client.get(path, params={"version": 1}, headers=api.acme).json() == instance
    assert api.client.get(path, params={"at": between}, headers=api.acme).json() == instance
    now = api.client.get(path, headers=api.acme).json()
    assert (now["name"], now["memory"], now["version"]) == ("Rosa II", "segundo", 3)


def test_lists_are_paginated_with_opaque_cursors_and_filtered_by_q(api: Api) -> None:
    created = [make_character(api, name=f"Personaje {n}") for n in range(5)]
    make_character(api, name="José Arcadio")
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.client.get("/v1/characters", params=params, headers=api.acme).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen[:5] == [c["id"] for c in created] and len(seen) == 6
    found = api.client.get("/v1/characters", params={"q": "jose"}, headers=api.acme).json()
    assert [item["name"] for item in found["items"]] == ["José Arcadio"]


def test_a_deleted_character_no_longer_lists_but_its_events_stay(api: Api) -> None:
    character = make_character(api)
    path = f"/v1/characters/{character['id']}"
    assert api.client.delete(path, headers=api.acme).status_code == 204
    assert api.client.get(path, headers=api.acme).status_code == 404
    assert api.client.get("/v1/characters", headers=api.acme).json()["items"] == []
    events = api.client.get(f"{path}/events", headers=api.acme).json()["items"]
    assert [e["type"] for e in events] == ["Created", "Archived"]
    assert api.client.get(path, params={"version": 1}, headers=api.acme).json() == character


def test_instances_list_under_their_character_and_deleting_frees_the_name(api: Api) -> None:
    character = make_character(api)
    first = make_instance(api, character["id"], name="Rosa")
    second = make_instance(api, character["id"], name="Rosita")
    listed = api.client.get(f"/v1/characters/{character['id']}/instances", headers=api.acme)
    assert [i["id"] for i in listed.json()["items"]] == [first["id"], second["id"]]
    assert api.client.delete(f"/v1/instances/{first['id']}", headers=api.acme).status_code == 204
    again = make_instance(api, character["id"], name="Rosa")
    listed = api.client.get(f"/v1/characters/{character['id']}/instances", headers=api.acme)
    assert [i["id"] for i in listed.json()["items"]] == [second["id"], again["id"]]


def test_the_events_endpoint_pages_and_filters_by_type(api: Api) -> None:
    instance = make_instance(api, make_character(api)["id"])
    path = f"/v1/instances/{instance['id']}"
    for n in range(4):
        api.client.patch(path, json={"memory": f"m{n}"}, headers=api.acme)
    api.client.patch(path, json={"name": "Otra"}, headers=api.acme)
    page = api.client.get(f"{path}/events", params={"limit": 2}, headers=api.acme).json()
    assert [e["version"] for e in page["items"]] == [1, 2]
    rest = api.client.get(
        f"{path}/events", params={"cursor": page["next_cursor"]}, headers=api.acme
    ).json()
    assert [e["version"] for e in rest["items"]] == [3, 4, 5, 6]
    after = api.client.get(f"{path}/events", params={"after_version": 4}, headers=api.acme).json()
    assert [e["version"] for e in after["items"]] == [5, 6]
    renamed = api.client.get(f"{path}/events", params={"type": "Renamed"}, headers=api.acme)
    assert [e["data"] for e in renamed.json()["items"]] == [{"name": "Otra"}]


def test_the_memory_audit_shows_every_change_with_before_after_and_diff(api: Api) -> None:
    instance = make_instance(api, make_character(api)["id"], memory="Vive en Oaxaca.\n")
    path = f"/v1/instances/{instance['id']}"
    api.client.patch(path, json={"name": "Otra"}, headers=api.acme)
    api.client.patch(path, json={"memory": "Vive en Oaxaca.\nTiene un gato.\n"}, headers=api.acme)
    audit = api.client.get(f"{path}/memory/audit", headers=api.acme).json()["items"]
    assert [(a["version"], a["before"], a["after"]) for a in audit] == [
        (1, "", "Vive en Oaxaca.\n"),
        (3, "Vive en Oaxaca.\n", "Vive en Oaxaca.\nTiene un gato.\n"),
    ]
    assert "+Tiene un gato.\n" in audit[1]["diff"]
    assert audit[1]["actor"]["tenant"] == "acme"
    page = api.client.get(f"{path}/memory/audit", params={"limit": 1}, headers=api.acme).json()
    rest = api.client.get(
        f"{path}/memory/audit", params={"cursor": page["next_cursor"]}, headers=api.acme
    ).json()
    assert [a["version"] for a in page["items"] + rest["items"]] == [1, 3]


def test_forking_starts_a_new_instance_from_the_state_at_a_version(api: Api) -> None:
    instance = make_instance(api, make_character(api)["id"], memory="antes")
    path = f"/v1/instances/{instance['id']}"
    api.client.patch(path, json={"memory": "después"}, headers=api.acme)
    response = api.client.post(
        f"{path}/fork", json={"name": "Rosa del pasado", "at_version": 1}, headers=api.acme
    )
    assert response.status_code == 201
    fork = response.json()
    assert (fork["memory"], fork["character_id"], fork["version"]) == (
        "antes",
        instance["character_id"],
        1,
    )
    assert fork["forked_from"] == {"instance_id": instance["id"], "version": 1}
    assert api.client.get(path, headers=api.acme).json()["memory"] == "después"


def test_health_reports_the_event_store_and_projection_lag(api: Api) -> None:
    body = api.client.get("/health").json()
    assert (body["status"], body["event_store"], body["vector_store"]) == ("ok", "ok", "ok")
    assert body["projection_lag_events"] >= 0
