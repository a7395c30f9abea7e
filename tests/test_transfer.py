"""`alma export` and `alma import`: a tenant moved from a SQLite store into a fresh SQLite store
and into PostgreSQL (the `settings` fixture) arrives with the same events, the same states and,
once the projections catch up, the same memory index."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from alma.api.services import Services, build_services
from alma.domain import Actor, NewMessage
from alma.settings import Settings
from tests.cli import alma, assert_clean_failure

QUERIES = ["¿cómo se llama el perro?", "river", "what does she drink in the morning"]


def _fill(services: Services) -> list[UUID]:
    """Both tenants write; returns acme's instance ids."""
    app = services.app
    instances = []
    for tenant in ("acme", "rival"):
        actor = Actor(tenant, "test", "fill")
        rosa = app.create_character(
            tenant, {"name": "Doña Rosa", "description": "Curandera"}, actor
        )
        card = {"tags": ["curandera"], "card_extras": {"data": {"extensions": {"x": [1, None]}}}}
        edit = {"personality": "Terca ☕", "voice": {"v": 1}, **card}
        app.edit_character(tenant, rosa.id, edit, actor)
        one = app.create_instance(tenant, rosa.id, "Rosa", "Vive en Oaxaca", actor)
        app.edit_instance(tenant, one.id, actor, user_name="José Núñez")  # the fork has it too
        two = app.fork_instance(tenant, one.id, "Rosa bis", actor, app.fork_point(tenant, one.id))
        app.edit_instance(tenant, one.id, actor, name="Rosita", memory="Vive junto al río\n\nY más")
        dog = app.add_memory(tenant, one.id, "Su perro se llama Canelo", actor, {"k": "v"}, 0.9)
        app.add_memory(
            tenant,
            one.id,
            "Drinks café de olla every morning",
            actor,
            occurred_at=datetime(2023, 5, 8, 13, 56, tzinfo=UTC),
            speaker="Caroline",
        )
        gone = app.add_memory(tenant, two.id, "Olvidará esto", actor)
        app.revise_memory(tenant, one.id, dog.id, actor, text="Su perro Canelo es viejo")
        app.forget_memory(tenant, two.id, gone.id, actor)
        sent = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
        app.import_messages(
            tenant,
            one.id,
            [
                NewMessage("user", "¿Y el río?", sent, name="José Núñez"),
                NewMessage("assistant", "Cerca.", sent),
            ],
            actor,
        )
        app.archive_instance(tenant, two.id, actor)
        if tenant == "acme":
            instances = [one.id, two.id]
    return instances


def _state(services: Services, aggregate_id: UUID) -> dict[str, Any]:
    aggregate = services.app.repository.get(aggregate_id)
    return {k: v for k, v in vars(aggregate).items() if k != "_pending_events"}


def _index(services: Services, instance_id: UUID) -> dict[str, Any]:
    index = services.memory_index
    docs = index.memories(instance_id, 0, 500)
    messages = services.conversation_view.messages(instance_id, 0, 500)
    return {
        "docs": sorted(
            (
                *(d.doc_id, d.kind, d.text, d.metadata, d.importance),
                *(d.occurred_at, d.speaker, d.created_at),
            )
            for d in docs
        ),
        "messages": [(m.id, m.role, m.content, m.metadata, m.sent_at, m.name) for m in messages],
        "search": [
            [
                (hit.doc.doc_id, round(hit.score, 4), hit.doc.occurred_at, hit.doc.speaker)
                for hit in index.search(instance_id, query)
            ]
            for query in QUERIES
        ],
    }


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_export_import_round_trip(settings: Settings, tmp_path: Path) -> None:
    source_settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path / "source", _env_file=None, memory_formation=False
    )
    source = build_services(source_settings)
    target = None
    try:
        instances = _fill(source)
        source.memory.catch_up()
        source.conversation.catch_up()
        assert alma(source_settings, "keys", "create", "--tenant", "acme").returncode == 0
        exported = tmp_path / "acme.jsonl"

        done = alma(source_settings, "export", "--tenant", "acme", "--output", str(exported))

        assert done.returncode == 0, done.stderr
        assert "API keys are not exported" in done.stderr
        lines = _lines(exported)
        assert {line["topic"].split(":")[1].split(".")[0] for line in lines} == {
            "Character",
            "Instance",
            "InstanceName",
            "Memory",
        }
        assert all(line["state"]["tenant"] == "acme" for line in lines if line["version"] == 1)
        assert "rival" not in exported.read_text()
        to_stdout = alma(source_settings, "export", "--tenant", "acme")
        assert to_stdout.stdout == exported.read_text(encoding="utf-8")

        imported = alma(settings, "import", str(exported))

        assert imported.returncode == 0, imported.stderr
        target = build_services(settings)
        ids = list(dict.fromkeys(UUID(line["id"]) for line in lines))
        for aggregate_id in ids:
            assert _state(target, aggregate_id) == _state(source, aggregate_id)
        assert target.app.recorder.max_notification_id() == len(lines)
        again = tmp_path / "again.jsonl"
        assert alma(settings, "export", "--tenant", "acme", "--output", str(again)).returncode == 0
        assert again.read_text(encoding="utf-8") == exported.read_text(encoding="utf-8")

        target.memory.catch_up()
        target.conversation.catch_up()
        for instance_id in instances:
            assert _index(target, instance_id) == _index(source, instance_id)
        held = _index(target, instances[0])
        assert held["docs"]
        caroline = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
        assert ("Caroline", caroline) in {(d[6], d[5]) for d in held["docs"]}  # who and when
        assert [m[-1] for m in held["messages"]] == ["José Núñez", "Rosita"]  # the instance's

        assert_clean_failure(alma(settings, "import", str(exported)))  # already there
        assert target.app.recorder.max_notification_id() == len(lines)
    finally:
        source.close()
        if target is not None:
            target.close()


def test_import_refuses_a_bad_file_and_writes_nothing(settings: Settings, tmp_path: Path) -> None:
    good = {
        "id": "0b0a5c3e-9a43-4f5e-8f2e-1f6b3c1d2e3f",
        "version": 1,
        "topic": "domain.keys:ApiKey.Issued",
        "state": {},
    }
    bad_lines = [
        "not json",
        json.dumps(good),  # keys never travel
        json.dumps({**good, "topic": "os:system"}),
        json.dumps({**good, "topic": "domain.character:Character.Created", "version": 2}),
    ]
    for n, bad in enumerate(bad_lines):
        path = tmp_path / f"bad{n}.jsonl"
        path.write_text(bad + "\n", encoding="utf-8")
        result = alma(settings, "import", str(path))
        assert_clean_failure(result)
        assert "line 1" in result.stderr
    assert_clean_failure(alma(settings, "import", str(tmp_path / "missing.jsonl")))
    services = build_services(settings)
    try:
        assert (services.app.recorder.max_notification_id() or 0) == 0
    finally:
        services.close()


def test_export_leaves_erased_instances_out(settings: Settings, tmp_path: Path) -> None:
    services = build_services(settings)
    try:
        app, actor = services.app, Actor("acme", "test", "erase")
        rosa = app.create_character("acme", {"name": "Rosa", "description": ""}, actor)
        kept = app.create_instance("acme", rosa.id, "Kept", "", actor)
        gone = app.create_instance("acme", rosa.id, "Gone", "", actor)
        app.add_memory("acme", gone.id, "secreto-borrado-123", actor)
        app.add_memory("acme", kept.id, "recuerdo que queda", actor)
        app.erase_instance("acme", gone.id, actor)
    finally:
        services.close()
    exported = tmp_path / "acme.jsonl"

    result = alma(settings, "export", "--tenant", "acme", "--output", str(exported))

    assert result.returncode == 0, result.stderr
    text = exported.read_text(encoding="utf-8")
    assert "secreto-borrado-123" not in text and "recuerdo que queda" in text
    ids = {line["id"] for line in _lines(exported)}
    assert str(gone.id) not in ids and {str(rosa.id), str(kept.id)} <= ids
