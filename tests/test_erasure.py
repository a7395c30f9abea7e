"""Erasure: `DELETE ...?erase=true` destroys the key of a character or an instance, after which
its text cannot be read through any endpoint, by any process, nor found in the store's files."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from uuid import UUID, uuid4

import psycopg
import pytest
from eventsourcing.persistence import Mapper

from alma.api.cli import projections_rebuild, replay
from alma.api.event_store import open_app
from alma.api.services import rebuild_memory_index
from alma.domain import Actor, Alma, Character, NotFound
from alma.domain.erasure import MAGIC
from alma.domain.keystore import MemoryKeys
from alma.settings import Settings
from alma.stores.keys import SQLiteKeys
from tests.conftest import Api, make_character, make_instance
from tests.openai_stub import OpenAIStub, Reply

ACTOR = Actor("acme", "test", "erasure")


def marker(what: str) -> str:
    """A string found nowhere unless alma wrote it."""
    return f"zq{what}{uuid4().hex[:12]}"


class World:
    """Acme's character with an instance full of marked text: description, memory text,
    a memory snippet (added and revised), and a chat turn both ways."""

    def __init__(self, api: Api, stub: OpenAIStub, name: str = "Rosa") -> None:
        self.markers = {
            k: marker(k) for k in ("desc", "name", "memory", "snippet", "said", "reply")
        }
        self.markers["revised"] = marker("revised")
        m = self.markers
        self.character = make_character(api, name="Doña Rosa", description=m["desc"])
        self.instance_id = str(
            make_instance(api, self.character["id"], name=m["name"], memory=m["memory"])["id"]
        )
        base = f"/v1/instances/{self.instance_id}"
        added = api.client.post(f"{base}/memories", json={"text": m["snippet"]}, headers=api.acme)
        assert added.status_code == 201, added.text
        self.memory_id = added.json()["id"]
        revised = api.client.patch(
            f"{base}/memories/{self.memory_id}", json={"text": m["revised"]}, headers=api.acme
        )
        assert revised.status_code == 200, revised.text
        stub.script(Reply(m["reply"]))
        chat = api.client.post(
            f"{base}/chat", json={"message": f"Hola {m['said']}"}, headers=api.acme
        )
        assert chat.status_code == 200, chat.text
        caught_up(api)


def caught_up(api: Api) -> None:
    for follower in api.services.followers:
        assert follower.wait(api.written(), 30)


def erase(api: Api, kind: str, aggregate_id: object) -> None:
    response = api.client.delete(f"/v1/{kind}/{aggregate_id}?erase=true", headers=api.acme)
    assert response.status_code == 204, response.text
    caught_up(api)


def leftovers(settings: Settings, needles: list[str | bytes]) -> dict[str, list[str | bytes]]:
    """Where the store still holds any of the needles: files, or PostgreSQL tables."""
    if settings.database_url:
        return _tables_holding(settings, needles)
    found: dict[str, list[str | bytes]] = {}
    for path in settings.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits = [n for n in needles if _bytes(n) in data]
            if hits:
                found[str(path.relative_to(settings.data_dir))] = hits
    return found


def test_an_erased_instance_answers_404_everywhere(chat_api: Api, openai_stub: OpenAIStub) -> None:
    api = chat_api
    world = World(api, openai_stub)
    erase(api, "instances", world.instance_id)

    base = f"/v1/instances/{world.instance_id}"
    completion = {"messages": [{"role": "user", "content": "Hola"}], "max_tokens": 4}
    requests = [
        ("GET", base, None),
        ("GET", f"{base}?version=1", None),
        ("GET", f"{base}?at=2100-01-01T00:00:00Z", None),
        ("PATCH", base, {"memory": "otra"}),
        ("DELETE", base, None),
        ("DELETE", f"{base}?erase=true", None),
        ("POST", f"{base}/fork", {"name": "Rama"}),
        ("GET", f"{base}/events", None),
        ("GET", f"{base}/memory/audit", None),
        ("GET", f"{base}/memories", None),
        ("POST", f"{base}/memories", {"text": "otra"}),
        ("GET", f"{base}/memories/search?q=hola&consistent=true", None),
        ("GET", f"{base}/memories/{world.memory_id}", None),
        ("PATCH", f"{base}/memories/{world.memory_id}", {"text": "otra"}),
        ("DELETE", f"{base}/memories/{world.memory_id}", None),
        ("GET", f"{base}/messages", None),
        ("POST", f"{base}/messages", {"messages": [{"role": "user", "content": "hola"}]}),
        ("POST", f"{base}/chat", {"message": "Hola"}),
        ("POST", "/v1/chat/completions", {**completion, "model": world.instance_id}),
        ("POST", "/v1/chat/completions", {**completion, "model": world.markers["name"]}),
        ("POST", "/v1/audio/speech", {"input": "Hola", "voice": world.instance_id}),
    ]
    before = api.written()
    for method, path, body in requests:
        response = api.client.request(method, path, json=body, headers=api.acme)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "not_found"
        sent = f"{path} {body}"
        for text in world.markers.values():
            assert text in sent or text not in response.text
    assert api.written() == before

    models = api.client.get("/v1/models", headers=api.acme).json()["data"]
    assert world.instance_id not in [m["id"] for m in models]
    listed = api.client.get(f"/v1/characters/{world.character['id']}/instances", headers=api.acme)
    assert listed.json()["items"] == []
    # The character stays, and the name is free again.
    assert api.client.get(f"/v1/characters/{world.character['id']}", headers=api.acme).is_success
    make_instance(api, world.character["id"], name=world.markers["name"])


def test_an_erased_instance_leaves_no_text_in_the_store(
    chat_api: Api, openai_stub: OpenAIStub, settings: Settings
) -> None:
    """SQLite: the raw bytes of every file under ALMA_DATA_DIR (databases, their logs, Chroma).
    PostgreSQL: every row of every table of alma's schema."""
    api = chat_api
    world = World(api, openai_stub)
    other = World(api, openai_stub, name="Otra")  # lives on: its text stays findable
    needles = [text for kind, text in world.markers.items() if kind != "desc"]
    if not settings.database_url:
        needles.append(_key_bytes(settings.data_dir / "events.sqlite3", world.instance_id))
    # The check can see: before erasure the read models hold the text in the clear.
    assert set(needles) == {n for hits in leftovers(settings, needles).values() for n in hits}

    erase(api, "instances", world.instance_id)

    assert leftovers(settings, needles) == {}
    kept = [other.markers["revised"], other.markers["said"], world.markers["desc"]]
    assert all(leftovers(settings, [text]) for text in kept)


def test_erasing_a_character_erases_its_instances(
    chat_api: Api, openai_stub: OpenAIStub, settings: Settings
) -> None:
    api = chat_api
    world = World(api, openai_stub)
    second = make_instance(api, world.character["id"], name="Segunda", memory="zqsecond")
    erase(api, "characters", world.character["id"])

    for path in (
        f"/v1/characters/{world.character['id']}",
        f"/v1/characters/{world.character['id']}/events",
        f"/v1/characters/{world.character['id']}?version=1",
        f"/v1/instances/{world.instance_id}",
        f"/v1/instances/{second['id']}",
    ):
        assert api.client.get(path, headers=api.acme).status_code == 404, path
    assert api.client.get("/v1/characters", headers=api.acme).json()["items"] == []
    assert api.client.get("/v1/models", headers=api.acme).json()["data"] == []
    assert leftovers(settings, [*world.markers.values(), "zqsecond"]) == {}


def test_rebuilding_the_index_and_replay_do_not_bring_it_back(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    api = chat_api
    world = World(api, openai_stub)
    erase(api, "instances", world.instance_id)

    rebuild_memory_index(api.services)
    for follower in (api.services.conversation, api.services.memory_audit):
        projections_rebuild(api.services, follower.name)

    index = api.services.memory_index
    instance_id = UUID(world.instance_id)
    assert index.memories(instance_id, 0, 50) == []
    assert api.services.conversation_view.messages(instance_id, 0, 50) == []
    assert api.services.audit_view.audit(instance_id, 0, 50) == []
    assert index.search(instance_id, world.markers["revised"]) == []
    assert index.search(instance_id, world.markers["said"]) == []
    with pytest.raises(NotFound):
        replay(api.services.app, world.instance_id, None)


def test_another_process_stops_serving_an_erased_instance(
    chat_api: Api, openai_stub: OpenAIStub, settings: Settings
) -> None:
    """The other process has the instance and its key cached; the `Erased` event fences it."""
    api = chat_api
    world = World(api, openai_stub)
    other = open_app(settings)
    try:
        instance_id, memory_id = UUID(world.instance_id), UUID(world.memory_id)
        assert other.instance("acme", instance_id).memory == world.markers["memory"]
        assert other.memory("acme", instance_id, memory_id).text == world.markers["revised"]

        erase(api, "instances", world.instance_id)

        with pytest.raises(NotFound):
            other.instance("acme", instance_id)
        with pytest.raises(NotFound):
            other.revise_memory("acme", instance_id, memory_id, ACTOR, text="otra")
        with pytest.raises(NotFound):
            other.edit_instance("acme", instance_id, ACTOR, memory="otra")
    finally:
        other.close()


def test_events_written_before_encryption_are_still_read(api: Api) -> None:
    app = api.services.app
    character = Character.create("acme", {"name": "Antigua", "description": "en claro"}, ACTOR)
    plain = Mapper(app.mapper.transcoder)
    app.recorder.insert_events([plain.to_stored_event(e) for e in character.collect_events()])

    (stored,) = app.recorder.select_events(character.id)
    assert not stored.state.startswith(MAGIC)
    assert app.character("acme", character.id).description == "en claro"
    edited = app.edit_character("acme", character.id, {"description": "cifrada"}, ACTOR)
    assert edited.version == 2
    (_, second) = app.recorder.select_events(character.id)
    assert second.state.startswith(MAGIC)
    assert app.character("acme", character.id).description == "cifrada"


def test_events_in_a_database_never_get_keys_that_live_only_in_memory(settings: Settings) -> None:
    """Keys kept in memory would be gone at the next start, and every event they encrypted
    unreadable with them."""
    with pytest.raises(ValueError, match="open_keys"):
        Alma(settings.event_store_env("events"))
    app = open_app(settings)
    try:
        assert not isinstance(app.keys, MemoryKeys)
    finally:
        app.close()


def test_a_key_is_committed_as_durably_as_the_events_it_encrypts(tmp_path: Path) -> None:
    """A key must survive any power loss its events survive, and a tombstone any its `Erased`
    event survives, or erased text could be read again."""
    app = open_app(Settings(data_dir=tmp_path / "data", _env_file=None))  # type: ignore[call-arg]
    try:
        assert isinstance(app.keys, SQLiteKeys)
        with app.recorder.datastore.transaction(commit=False) as cursor:  # type: ignore[attr-defined]
            cursor.execute("PRAGMA synchronous")
            (events,) = cursor.fetchone()
        ((keys,),) = app.keys.store.query("PRAGMA synchronous")
        assert keys >= events
    finally:
        app.close()


def _key_bytes(path: Path, scope: str) -> bytes:
    with sqlite3.connect(path) as connection:
        (key,) = connection.execute(
            "SELECT key FROM erasure_keys WHERE scope_id = ?", (scope,)
        ).fetchone()
    connection.close()
    assert isinstance(key, bytes) and len(key) == 32
    return key


def _tables_holding(settings: Settings, needles: list[str | bytes]) -> dict[str, list[str | bytes]]:
    """Every row of every table in alma's schema, as text and as raw bytes."""
    assert settings.database_url is not None
    url, _, query = settings.database_url.partition("?")
    schema = query.removeprefix("schema=")
    found: dict[str, list[str | bytes]] = {}
    with psycopg.connect(url) as connection:
        tables = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
        for (table,) in tables:
            rows = connection.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall()
            text = repr(rows).encode()
            raw = b"".join(v for row in rows for v in row if isinstance(v, bytes))
            hits = [n for n in needles if _bytes(n) in text + raw]
            if hits:
                found[table] = hits
    return found


def _bytes(needle: str | bytes) -> bytes:
    return needle if isinstance(needle, bytes) else needle.encode()
