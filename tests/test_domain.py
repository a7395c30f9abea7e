"""The application service on each store: replay, concurrency, uniqueness, snapshots."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from uuid import uuid4

import pytest
from eventsourcing.persistence import IntegrityError
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from alma.api.services import Services
from alma.domain import (
    Actor,
    Alma,
    Instance,
    InvalidInput,
    Memory,
    NameTaken,
    NewMessage,
    NotFound,
    ToolResult,
    VersionConflict,
)
from alma.domain.rules import bad_character
from alma.stores.keys import open_keys

texts = st.text(st.characters(codec="utf-8"), max_size=40).filter(
    lambda text: bad_character(text) is None
)
names = texts.filter(lambda s: s.strip() != "")
commands = st.lists(
    st.one_of(
        st.tuples(st.just("rename"), names),
        st.tuples(st.just("memory"), texts),
        st.tuples(st.just("both"), st.tuples(names, texts)),
    ),
    max_size=25,
)


@hypothesis_settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(commands=commands)
def test_replaying_the_events_gives_exactly_the_state_served_at_each_version(
    services: Services, actor: Actor, commands: list[tuple[str, object]]
) -> None:
    app = services.app
    character = app.create_character("acme", {"name": "Lola", "description": "bruja"}, actor)
    instance = app.create_instance("acme", character.id, f"i-{uuid4()}", "", actor)
    served = {instance.version: _state(instance)}
    for kind, value in commands:
        if kind == "rename":
            changed = app.edit_instance("acme", instance.id, actor, name=f"{value}-{instance.id}")
        elif kind == "memory":
            changed = app.edit_instance("acme", instance.id, actor, memory=str(value))
        else:
            name, memory = value  # type: ignore[misc]
            changed = app.edit_instance(
                "acme", instance.id, actor, name=f"{name}-{instance.id}", memory=memory
            )
        served[changed.version] = _state(changed)

    for version, state in served.items():
        assert _state(app.instance("acme", instance.id, version=version)) == state
    replayed: Instance | None = None
    for event in app.events.get(instance.id):
        replayed = event.mutate(replayed)
        assert replayed is not None
        if replayed.version in served:
            assert _state(replayed) == served[replayed.version]


def _state(instance: Instance) -> tuple[object, ...]:
    return (instance.version, instance.name, instance.memory, instance.character_id)


def test_concurrent_writers_to_one_instance_lose_nothing(services: Services, actor: Actor) -> None:
    app = services.app
    character = app.create_character("acme", {"name": "Lola", "description": ""}, actor)
    instance = app.create_instance("acme", character.id, "Lolita", "", actor)
    writers, edits = 6, 15

    def write(writer: int) -> None:
        for n in range(edits):
            app.edit_instance("acme", instance.id, actor, memory=f"writer {writer} edit {n}")

    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(write, range(writers)))

    final = app.instance("acme", instance.id)
    assert final.version == 1 + writers * edits
    memories = [getattr(e, "memory", None) for e in app.events.get(instance.id)][1:]
    assert sorted(memories) == sorted(
        f"writer {w} edit {n}" for w in range(writers) for n in range(edits)
    )


def test_writers_to_one_instance_in_one_process_take_turns_and_never_retry(
    services: Services, actor: Actor
) -> None:
    app = services.app
    character = app.create_character("acme", {"name": "Lola", "description": ""}, actor)
    instance = app.create_instance("acme", character.id, "Lolita", "", actor)
    barrier = threading.Barrier(8)

    def write(writer: int) -> None:
        barrier.wait()
        for n in range(10):
            app.edit_instance("acme", instance.id, actor, memory=f"writer {writer} edit {n}")
            app.add_memory("acme", instance.id, f"memory {writer}.{n}", actor)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(8)))

    assert app.instance("acme", instance.id).version == 1 + 8 * 10
    assert app.retries == 0


def test_two_processes_writing_one_instance_race_and_lose_nothing(
    services: Services, actor: Actor
) -> None:
    """Turns are per process: a second application on the same store still races the first,
    and the command that loses is tried again on fresh state."""
    first = services.app
    second = Alma(services.settings.event_store_env("events"), keys=open_keys)
    try:
        character = first.create_character("acme", {"name": "Lola", "description": ""}, actor)
        instance = first.create_instance("acme", character.id, "Lolita", "", actor)
        barrier = threading.Barrier(4)

        def write(writer: int) -> None:
            app = (first, second)[writer % 2]
            barrier.wait()
            for n in range(15):
                app.edit_instance("acme", instance.id, actor, memory=f"writer {writer} edit {n}")

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(write, range(4)))
    finally:
        second.close()
    memories = [getattr(e, "memory", None) for e in first.events.get(instance.id)][1:]
    assert sorted(memories) == sorted(f"writer {w} edit {n}" for w in range(4) for n in range(15))


def test_a_stale_expected_version_is_refused_with_the_current_one(
    services: Services, actor: Actor
) -> None:
    app = services.app
    character = app.create_character("acme", {"name": "Lola", "description": ""}, actor)
    app.edit_character("acme", character.id, {"description": "v2"}, actor, expected_version=1)
    with pytest.raises(VersionConflict) as conflict:
        app.edit_character("acme", character.id, {"description": "v3"}, actor, expected_version=1)
    assert conflict.value.current_version == 2
    assert app.character("acme", character.id).description == "v2"


@pytest.mark.parametrize("rival_name", ["Lolita", "LOLITA", " lolita ", "Lolita"])
def test_two_concurrent_creates_of_one_name_give_exactly_one_instance(
    services: Services, actor: Actor, rival_name: str
) -> None:
    app = services.app
    character = app.create_character("acme", {"name": "Lola", "description": ""}, actor)
    barrier = threading.Barrier(2)

    def create(name: str) -> str:
        barrier.wait()
        try:
            app.create_instance("acme", character.id, name, "", actor)
        except NameTaken:
            return "taken"
        return "created"

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(create, ["Lolita", rival_name]))
    assert outcomes == ["created", "taken"]


def test_a_released_name_can_be_taken_again(services: Services, actor: Actor) -> None:
    app = services.app
    character = app.create_character("acme", {"name": "Lola", "description": ""}, actor)
    first = app.create_instance("acme", character.id, "Lolita", "", actor)
    app.edit_instance("acme", first.id, actor, name="Lola II")
    second = app.create_instance("acme", character.id, "Lolita", "", actor)
    with pytest.raises(NameTaken):
        app.edit_instance("acme", first.id, actor, name="lolita")
    app.archive_instance("acme", second.id, actor)
    app.edit_instance("acme", first.id, actor, name="lolita")
    assert app.instance_id_by_name("acme", "LOLITA") == first.id
    with pytest.raises(NotFound):
        app.instance("acme", second.id)


def test_state_at_a_time_is_the_last_version_written_before_it(
    services: Services, actor: Actor
) -> None:
    app = services.app
    character = app.create_character("acme", {"name": "Lola", "description": ""}, actor)
    instance = app.create_instance("acme", character.id, "Lolita", "uno", actor)
    stamps = []
    for memory in ["dos", "tres", "cuatro"]:
        stamps.append(datetime.now(UTC))
        app.edit_instance("acme", instance.id, actor, memory=memory)
    assert app.instance("acme", instance.id, at=stamps[0]).memory == "uno"
    assert app.instance("acme", instance.id, at=stamps[2]).memory == "tres"
    assert app.instance("acme", instance.id, at=datetime.now(UTC)).memory == "cuatro"
    with pytest.raises(NotFound):
        app.instance("acme", instance.id, at=datetime(2000, 1, 1, tzinfo=UTC))


def test_long_histories_load_from_snapshots(services: Services, actor: Actor) -> None:
    app = services.app
    character = app.create_character("acme", {"name": "Lola", "description": ""}, actor)
    instance = app.create_instance("acme", character.id, "Lolita", "", actor)
    for n in range(120):
        instance.rewrite_memory(f"m{n}", actor)
    app.save(instance)
    assert app.snapshots is not None
    snapshot_versions = [s.originator_version for s in app.snapshots.get(instance.id)]
    assert snapshot_versions == [50, 100]
    assert app.instance("acme", instance.id).memory == "m119"
    assert app.instance("acme", instance.id, version=75).memory == "m73"


def test_a_turn_s_tool_results_are_recorded_once_by_any_process_and_after_a_snapshot(
    services: Services, actor: Actor
) -> None:
    first = services.app
    env = services.settings.event_store_env("events")
    second = Alma(env, keys=open_keys)
    try:
        character = first.create_character("acme", {"name": "Lola", "description": ""}, actor)
        instance = first.create_instance("acme", character.id, "Lolita", "", actor)
        asked = first.record_message("acme", instance.id, "¿Qué tiempo hace?", actor)
        sunny = ToolResult("call_0", "weather", "sunny")
        noon = ToolResult(None, "clock", "noon")  # a legacy function's: no id
        assert len(first.record_tool_results("acme", instance.id, asked, [sunny], actor)) == 1
        assert second.record_tool_results("acme", instance.id, asked, [sunny], actor) == []
        assert (
            len(second.record_tool_results("acme", instance.id, asked, [sunny, noon], actor)) == 1
        )
        # The first process's copy is behind the store: its save loses and is tried again.
        assert first.record_tool_results("acme", instance.id, asked, [sunny, noon], actor) == []
        for n in range(50):
            first.edit_instance("acme", instance.id, actor, memory=f"m{n}")
        assert first.snapshots is not None and list(first.snapshots.get(instance.id))
        third = Alma(env, keys=open_keys)  # nothing cached: the instance loads from its snapshot
        try:
            again = [sunny, noon, sunny]
            assert third.record_tool_results("acme", instance.id, asked, again, actor) == []
            later = third.record_message("acme", instance.id, "¿Y mañana?", actor)
            # Another turn: the same id (some servers number calls from call_0 every time) is new.
            assert len(third.record_tool_results("acme", instance.id, later, again, actor)) == 2
        finally:
            third.close()
    finally:
        second.close()
    recorded = [e for e in first.events.get(instance.id) if type(e) is Instance.ToolResultRecorded]
    assert [(e.in_reply_to, e.tool_call_id) for e in recorded] == [
        (asked, "call_0"),
        (asked, None),
        (later, "call_0"),
        (later, None),
    ]


def test_two_processes_writing_one_instance_lose_nothing_and_honour_if_match(
    services: Services, actor: Actor
) -> None:
    """Each process keeps its own cached copies; a copy behind the store must never win."""
    first = services.app
    second = Alma(services.settings.event_store_env("events"), keys=open_keys)
    try:
        character = first.create_character("acme", {"name": "Lola", "description": ""}, actor)
        instance = first.create_instance("acme", character.id, "Lolita", "", actor)
        for n in range(10):
            writer = first if n % 2 == 0 else second
            writer.edit_instance("acme", instance.id, actor, memory=f"edit {n}")
        # The first writer's copy is behind the store; If-Match with the true version works.
        by_first = first.edit_instance(
            "acme", instance.id, actor, memory="by first", expected_version=11
        )
        by_second = second.edit_instance(
            "acme", instance.id, actor, memory="by second", expected_version=12
        )
        assert (by_first.version, by_second.version) == (12, 13)
        with pytest.raises(VersionConflict) as stale:
            first.edit_instance("acme", instance.id, actor, memory="late", expected_version=12)
        assert stale.value.current_version == 13
        memories = [getattr(e, "memory", None) for e in first.events.get(instance.id)]
        assert memories == ["", *(f"edit {n}" for n in range(10)), "by first", "by second"]
        second.archive_instance("acme", instance.id, actor)
        with pytest.raises(NotFound):
            first.edit_instance("acme", instance.id, actor, memory="after delete")
    finally:
        second.close()


def test_the_cached_copy_of_a_memory_shares_nothing_a_command_could_change(
    services: Services, actor: Actor
) -> None:
    """A command works on a copy of this process's cached aggregate: changing the copy's nested
    state must leave the cache as the store has it."""
    app = services.app
    instance = app.create_instance(
        "acme", app.create_character("acme", {"name": "Rosa"}, actor).id, "rosa", "", actor
    )
    memory = Memory.add("acme", instance.id, "Vive en Sevilla", actor, source={"messages": ["m1"]})
    app.save(memory)

    copied = app.repository.last_seen(memory.id)
    assert vars(copied) == vars(memory)
    copied.source["messages"].append("m2")
    copied.metadata["topic"] = "casa"

    again = app.repository.last_seen(memory.id)
    assert (again.source, again.metadata) == ({"messages": ["m1"]}, {})


def test_a_chat_message_is_recorded_as_the_users_now_like_an_imported_one(
    services: Services, actor: Actor
) -> None:
    app = services.app
    character = app.create_character("acme", {"name": "Rosa", "description": ""}, actor)
    instance = app.create_instance("acme", character.id, "rosa", "", actor)
    before = datetime.now(UTC)
    said = app.record_message("acme", instance.id, "¿Te acuerdas?", actor, {"source": "voice"})
    (imported,) = app.import_messages("acme", instance.id, [NewMessage("user", "Sí.")], actor)
    chat, transcript = list(app.events.get(instance.id))[1:]
    assert type(chat) is type(transcript) is Instance.MessageRecorded
    assert (chat.message_id, chat.role, chat.content) == (said, "user", "¿Te acuerdas?")
    assert (chat.metadata, chat.actor) == ({"source": "voice"}, actor)
    assert before <= chat.sent_at <= transcript.sent_at and transcript.message_id == imported
    assert app.instance("acme", instance.id).message_count == 2
    for content, metadata in (("   ", None), ("hola", {"nested": {}})):
        with pytest.raises(InvalidInput):
            app.record_message("acme", instance.id, content, actor, metadata)
    app.archive_instance("acme", instance.id, actor)
    with pytest.raises(NotFound):
        app.record_message("acme", instance.id, "¿Sigues ahí?", actor)
    assert len(list(app.events.get(instance.id))) == 4  # created, two messages, archived


def test_a_write_whose_answer_was_lost_is_not_refused_when_retried(
    services: Services, actor: Actor
) -> None:
    """The PostgreSQL recorder retries an insert after a dropped connection; when the first
    attempt had committed, the retry meets its own rows. That is a write done, not a conflict
    (a client used to get 409 for a character that was created)."""
    app = services.app
    character = app.create_character("acme", {"name": "Lola", "description": "bruja"}, actor)
    sent = list(app.events.get(character.id))
    app.save(*sent)  # the same events again, as the retry sends them
    assert list(app.events.get(character.id)) == sent

    other = app.create_character("acme", {"name": "Pepa", "description": "hada"}, actor)
    someone_elses = [
        type(e)(**{**vars(e), "originator_id": character.id}) for e in app.events.get(other.id)
    ]
    with pytest.raises(IntegrityError):
        app.save(*someone_elses)  # different events at the same version still conflict
