"""The conversation and the memory audit are read models of their own: they keep up with the log
while the memory index waits for its embeddings, and like every read model they equal what was
recorded after any interleaving, change nothing when an event comes again, rebuild from the
first event, and keep nothing of an erased instance."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alma.api.cli import projections_rebuild
from alma.api.services import Services, build_services
from alma.domain import Actor
from alma.projections import Follower, SqlReadModel
from alma.stores.sql import open_store
from tests.cli import alma
from tests.conftest import Api, make_character, make_instance
from tests.openai_stub import OpenAIStub, Reply
from tests.test_memory_index import Model, apply, operations, settings_for_index

Entry = tuple[str, UUID | None, str, str]  # kind, memory id, before, after


@dataclass
class Recorded(Model):
    """What was recorded, with the memory changes each instance's audit must show."""

    audit: dict[UUID, list[Entry]] = field(default_factory=dict)


@pytest.fixture
def world(services: Services) -> Iterator[Recorded]:
    actor = Actor("acme", "test", "setup")
    character = services.app.create_character("acme", {"name": "Rosa", "description": ""}, actor)
    instances = [
        services.app.create_instance("acme", character.id, f"Rosa {n}", "", actor).id
        for n in range(2)
    ]
    yield Recorded(instances, audit={i: [("memory_text", None, "", "")] for i in instances})


def test_a_turn_s_history_and_the_audit_do_not_wait_for_the_vector_store(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    api, index = chat_api, chat_api.services.memory_index
    instance = str(make_instance(api, make_character(api)["id"], memory="Vive en Oaxaca.")["id"])
    base = f"/v1/instances/{instance}"
    assert api.services.memory.wait(api.written(), 30)
    unstuck = threading.Event()
    upsert = index.vectors.upsert

    def stuck(*args: Any) -> None:
        unstuck.wait(60)
        upsert(*args)

    index.vectors.upsert = stuck  # type: ignore[method-assign]
    try:
        openai_stub.script(Reply("Me llamo Rosa."), Reply("Ya te lo dije: Rosa."))
        first = api.client.post(
            f"{base}/chat", json={"message": "¿Cómo te llamas?"}, headers=api.acme
        )
        assert first.status_code == 200, first.text
        added = api.client.post(
            f"{base}/memories", json={"text": "Tiene un gato"}, headers=api.acme
        )
        assert added.status_code == 201, added.text

        messages = api.client.get(f"{base}/messages", headers=api.acme)
        audit = api.client.get(f"{base}/memory/audit", headers=api.acme)
        second = api.client.post(f"{base}/chat", json={"message": "¿Y otra vez?"}, headers=api.acme)

        assert api.services.memory.lag() > 0  # the index is still embedding the first turn
        assert messages.status_code == 200, messages.text
        assert [(m["role"], m["content"]) for m in messages.json()["items"]] == [
            ("user", "¿Cómo te llamas?"),
            ("assistant", "Me llamo Rosa."),
        ]
        assert audit.status_code == 200, audit.text
        assert [(a["kind"], a["after"]) for a in audit.json()["items"]] == [
            ("memory_text", "Vive en Oaxaca."),
            ("memory_added", "Tiene un gato"),
        ]
        assert second.status_code == 200, second.text
        said = [m for m in openai_stub.requests[1]["messages"] if m["role"] != "system"]
        assert said[-3:] == [
            {"role": "user", "content": "¿Cómo te llamas?"},
            {"role": "assistant", "content": "Me llamo Rosa."},
            {"role": "user", "content": "¿Y otra vez?"},
        ]
    finally:
        unstuck.set()
    assert api.services.memory.wait(api.written(), 60)
    found = index.search(UUID(instance), "¿Cómo te llamas?")
    assert "¿Cómo te llamas?" in [hit.doc.text for hit in found]  # the index caught up after


def apply_recording(services: Services, model: Recorded, ops: list[tuple[str, int, Any]]) -> None:
    """Applies `ops` one by one, noting the memory changes each makes."""
    audit = model.audit
    for op in ops:
        memories, texts, said = dict(model.memories), dict(model.memory_text), dict(model.said)
        apply(services, model, [op])
        for memory_id, (instance, text) in model.memories.items():
            if memory_id not in memories:
                audit[instance].append(("memory_added", memory_id, "", text))
            elif memories[memory_id][1] != text or said[memory_id] != model.said[memory_id]:
                audit[instance].append(("memory_revised", memory_id, memories[memory_id][1], text))
        for memory_id, (instance, text) in memories.items():
            if memory_id not in model.memories:
                audit[instance].append(("memory_forgotten", memory_id, text, ""))
        for instance, text in model.memory_text.items():
            if texts.get(instance, "") != text:
                audit[instance].append(("memory_text", None, texts.get(instance, ""), text))


def recorded(services: Services, model: Model) -> dict[UUID, Any]:
    """What the two read models hold for each instance."""
    return {
        instance: (
            [
                (m.id, m.role, m.content, m.name)
                for m in services.conversation_view.messages(instance, 0, 500)
            ],
            [
                (e.kind, e.memory_id, e.before, e.after)
                for e in services.audit_view.audit(instance, 0, 500)
            ],
        )
        for instance in model.instances
    }


def expected_messages(model: Model, instance: UUID) -> list[tuple[UUID, str, str, str | None]]:
    if instance in model.deleted:
        return []
    return [
        (m, "user", text, model.said[m][0])
        for m, (i, text) in model.messages.items()
        if i == instance
    ]


def read_models(services: Services) -> list[Follower]:
    return [services.conversation, services.memory_audit]


def assert_read_models_match(services: Services, world: Recorded) -> None:
    held = recorded(services, world)
    for instance in world.instances:
        expected = (expected_messages(world, instance), world.audit[instance])
        assert held[instance] == expected, instance


@settings_for_index
@given(ops=operations, batch=st.integers(1, 7))
def test_both_equal_what_was_recorded_after_any_interleaving_and_a_replay_changes_nothing(
    services: Services, world: Recorded, ops: list[tuple[str, int, Any]], batch: int
) -> None:
    apply_recording(services, world, ops)
    for follower in read_models(services):
        follower.batch_size = batch
        follower.catch_up()
        assert follower.lag() == 0
    assert_read_models_match(services, world)
    held = recorded(services, world)

    for follower in read_models(services):  # every event delivered again, in other batches
        with follower.model.store.transaction() as cursor:  # type: ignore[attr-defined]
            cursor.execute(
                "UPDATE projection_partitions SET position = 0 WHERE projection = %s",
                (follower.name,),
            )
        follower.batch_size = batch + 1
        follower.catch_up()
    assert recorded(services, world) == held


def dying(model: SqlReadModel, crash_on: int) -> Callable[[Any, Any], bool]:
    """`model.write`, dying in the `crash_on`-th batch's transaction once it has written it."""
    write, left = model.write, [crash_on]

    def dies(cursor: Any, batch: Any) -> bool:
        erased = write(cursor, batch)
        left[0] -= 1
        if left[0] == 0:
            raise RuntimeError("the process died here")
        return erased

    return dies


@settings_for_index
@given(ops=operations, batch=st.integers(1, 5), crash_on=st.integers(1, 6))
def test_a_crash_inside_a_batch_loses_and_duplicates_nothing(
    services: Services,
    world: Recorded,
    ops: list[tuple[str, int, Any]],
    batch: int,
    crash_on: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    apply_recording(services, world, ops)
    for follower in read_models(services):
        model = follower.model
        assert isinstance(model, SqlReadModel)
        with monkeypatch.context() as patched, contextlib.suppress(RuntimeError):
            patched.setattr(model, "write", dying(model, crash_on))
            Follower(
                services.app, model, services.locks, services.settings.partitions, batch_size=batch
            ).catch_up()
        follower.catch_up()
    assert_read_models_match(services, world)


def test_a_rebuild_gives_the_same_read_models(services: Services, world: Recorded) -> None:
    apply_recording(
        services,
        world,
        [
            ("add", 0, "gato negro"),
            ("message", 0, "viaje al río"),
            ("rewrite", 1, ["Vive en Lisboa"]),
            ("revise", 0, "gato blanco"),
            ("message", 1, "canción"),
            ("delete", 1, ""),
            ("forget", 0, ""),
        ],
    )
    for follower in read_models(services):
        follower.catch_up()
    assert_read_models_match(services, world)
    before = recorded(services, world)

    for follower in read_models(services):
        projections_rebuild(services, follower.name)
    assert recorded(services, world) == before

    for follower in read_models(services):
        follower.model.clear()  # type: ignore[attr-defined]
        assert follower.position() == 0
    for follower in read_models(services):
        result = alma(services.settings, "projections", "rebuild", follower.name)
        assert result.returncode == 0, result.stderr
    assert recorded(services, world) == before
    assert all(f.lag() == 0 for f in read_models(services))


def test_a_store_from_before_them_gets_both_from_the_first_event(
    services: Services, world: Recorded
) -> None:
    """A store written by an earlier version has neither table: opened, each read model starts
    at position zero and catches up with everything recorded before it existed."""
    apply_recording(
        services, world, [("message", 0, "hola"), ("add", 1, "gato"), ("rewrite", 0, ["Lisboa"])]
    )
    for follower in read_models(services):
        with follower.model.store.transaction() as cursor:  # type: ignore[attr-defined]
            for table in (*follower.model.tables, "projection_partitions"):  # type: ignore[attr-defined]
                cursor.execute(f"DROP TABLE IF EXISTS {table}")

    upgraded = build_services(services.settings)
    try:
        for follower in read_models(upgraded):
            assert follower.position() == 0
            follower.catch_up()
        assert_read_models_match(upgraded, world)
    finally:
        upgraded.close()


@pytest.mark.parametrize("name", ["conversation", "memory-audit"])
def test_an_erasure_is_reported_done_only_once_the_store_s_log_is_wiped(
    services: Services, world: Recorded, name: str
) -> None:
    """Whoever waits for the read model to reach an erasure (`consistent` reads, tests) finds
    none of the erased text in the store's files, its write-ahead log included."""
    apply(services, world, [("add", 0, "gato secreto"), ("message", 0, "mi perro secreto")])
    (follower,) = [f for f in read_models(services) if f.name == name]
    follower.catch_up()
    services.app.erase_instance("acme", world.instances[0], Actor("acme", "t", "r"))
    erased_at = services.app.recorder.max_notification_id() or 0
    store = open_store(services.settings.event_store_env(name))
    model = type(follower.model)(store)  # type: ignore[call-arg]
    again = Follower(services.app, model, services.locks, services.settings.partitions)
    positions_at_wipe: list[int] = []
    wipe = store.wipe

    def watched_wipe() -> None:
        positions_at_wipe.append(again.position())
        wipe()

    store.wipe = watched_wipe  # type: ignore[method-assign]
    try:
        again.catch_up()
        assert positions_at_wipe and all(p < erased_at for p in positions_at_wipe)
        assert again.position() == erased_at
    finally:
        model.close()
    for follower in read_models(services):
        follower.catch_up()
    assert recorded(services, world)[world.instances[0]] == ([], [])
