"""Several `alma worker` processes sharing the projections' partitions over PostgreSQL and a
Chroma server, with faults injected for real: a worker killed mid-batch, a worker paused longer
than the takeover bound and resumed, workers added and removed under traffic, PostgreSQL
restarted under traffic. What must hold at the end, whatever happened: the memory index holds
exactly the live memories (in SQL and in Chroma), the listings and conversations exactly what
was written, and the memory process formed each window's memories once (none missing, none
twice), as a single worker would.

The model stand-in answers each window with one memory per fact token the user said in it, so
what a single worker forms is known: one memory per token.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from alma.api.event_store import open_app
from alma.api.services import build_services
from alma.domain import Actor, Alma, Memory, NewMessage
from alma.settings import Settings
from alma.stores.locks import AdvisoryLocks
from alma.stores.sql import conninfo
from tests.cli import free_port, running, wait_for_line
from tests.openai_stub import Behaviour, OpenAIStub, Reply
from tests.test_chroma_server import chroma_server
from tests.test_faults import ThrowawayPostgres, postgres

__all__ = ["postgres"]  # a fixture: pytest finds it here

TENANT = "acme"
ACTOR = Actor(TENANT, "test", "workers")
FACTS = "decide what is worth remembering"
TOKEN = re.compile(r"^user: .*?\b(hecho-\d+-\d+)\b", re.MULTILINE)
TIMEOUT_S = 4  # ALMA_PARTITION_TIMEOUT_S of these workers
# A killed worker's partitions are free at once; a silent one's after TIMEOUT_S; the others
# claim every second. The bound README states, with a margin for this loaded machine.
TAKEOVER_BOUND_S = 60  # liveness only: README states the bound, the test prints what it took


class FactStub(OpenAIStub):
    """Answers the memory process with one `add` per fact token in the window's user lines,
    after `delay_s` (a hosted model's answer time)."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    def answer(self, body: dict[str, Any], headers: dict[str, str]) -> Behaviour:
        super().answer(body, headers)
        system = str(body["messages"][0]["content"])
        if FACTS not in system:
            return Reply("Entendido.")
        asked = str(body["messages"][-1]["content"])
        operations = [{"op": "add", "text": f"Recuerda {t}"} for t in TOKEN.findall(asked)]
        return Reply(json.dumps(operations), delay_s=self.delay_s)


class World:
    """Instances, memories and conversations written straight to the event store, and what
    the read models must end up holding."""

    def __init__(self, app: Alma, instances: int) -> None:
        self.app = app
        character = app.create_character(TENANT, {"name": "Rosa", "description": ""}, ACTOR)
        self.character = character.id
        self.instances = [
            app.create_instance(TENANT, character.id, f"Rosa {n}", "", ACTOR).id
            for n in range(instances)
        ]
        self.tokens: set[str] = set()
        self.messages: Counter[UUID] = Counter()
        self.rounds = 0

    def memories(self, per_instance: int) -> None:
        for n, instance in enumerate(self.instances):
            self.app.save(
                *[
                    Memory.add(TENANT, instance, f"Recuerdo {n}-{k}-{self.rounds}", ACTOR)
                    for k in range(per_instance)
                ]
            )
        self.rounds += 1

    def conversation(self) -> None:
        """Ten imported messages per instance: one window of the memory process each."""
        for n, instance in enumerate(self.instances):
            batch = []
            for k in range(5):
                token = f"hecho-{n}-{self.rounds * 10 + k}"
                self.tokens.add(token)
                batch.append(NewMessage("user", f"Mi dato es {token}"))
                batch.append(NewMessage("assistant", "Entendido."))
            self.app.import_messages(TENANT, instance, batch, ACTOR)
            self.messages[instance] += len(batch)
        self.rounds += 1

    def edits(self, count: int) -> None:
        """Forgets and revises some of the memories added by hand."""
        live = _live_memories(self.app)
        by_hand = [(m, i) for m, (i, text, formed) in live.items() if not formed][: 2 * count]
        for memory_id, instance in by_hand[:count]:
            self.app.forget_memory(TENANT, instance, memory_id, ACTOR)
        for memory_id, instance in by_hand[count:]:
            self.app.revise_memory(TENANT, instance, memory_id, ACTOR, text="Revisado")


def _live_memories(app: Alma) -> dict[UUID, tuple[UUID, str, bool]]:
    """Every live memory, from the log: its instance, text, and whether the memory process
    formed it."""
    live: dict[UUID, tuple[UUID, str, bool]] = {}
    start = 1
    while notifications := app.recorder.select_notifications(start=start, limit=5000):
        for notification in notifications:
            event: Any = app.mapper.to_domain_event(notification)
            kind = type(event)
            if kind is Memory.Added:
                formed = event.actor.key_id == "memory-process"
                live[event.originator_id] = (event.instance_id, event.text, formed)
            elif kind is Memory.Revised:
                instance, _, formed = live[event.originator_id]
                live[event.originator_id] = (instance, event.text, formed)
            elif kind is Memory.Forgotten:
                del live[event.originator_id]
        start = notifications[-1].id + 1
    return live


def _formed_texts(app: Alma) -> list[str]:
    """The texts of every memory the memory process added, once per event."""
    texts = []
    start = 1
    while notifications := app.recorder.select_notifications(start=start, limit=5000):
        for notification in notifications:
            event: Any = app.mapper.to_domain_event(notification)
            if type(event) is Memory.Added and event.actor.key_id == "memory-process":
                texts.append(event.text)
        start = notifications[-1].id + 1
    return texts


def _until(condition: Callable[[], bool], what: str, timeout: float) -> float:
    """Seconds it took `condition` to hold."""
    started = time.monotonic()
    while not _holds(condition):
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(0.2)
    return time.monotonic() - started


def _holds(condition: Callable[[], bool]) -> bool:
    """False too when the database is slow to take a connection (the machine is loaded)."""
    try:
        return condition()
    except psycopg.OperationalError:
        return False


class Workers:
    """`alma worker` processes on one store, started and stopped at will."""

    def __init__(self, settings: Settings, env: dict[str, str], stack: ExitStack) -> None:
        self.settings = settings
        self.env = env
        self.stack = stack
        self.running: list[subprocess.Popen[str]] = []
        self.logs: list[Path] = []

    def start(self) -> subprocess.Popen[str]:
        log = self.settings.data_dir.parent / f"worker-{len(self.logs)}.log"
        process = self.stack.enter_context(running(self.settings, ["worker"], log, self.env))
        wait_for_line(process, log, "following the event log")
        self.running.append(process)
        self.logs.append(log)
        return process

    def name(self, process: subprocess.Popen[str]) -> str:
        return f":{process.pid}"

    def stop(self, process: subprocess.Popen[str]) -> None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        self.running.remove(process)


@pytest.fixture
def deployment(
    postgres: ThrowawayPostgres, tmp_path: Path
) -> Iterator[tuple[Settings, FactStub, ExitStack, dict[str, str]]]:
    """A PostgreSQL server of the test's own (three workers open many connections, and one
    test restarts it), a Chroma server, the model stand-in, and the workers' environment."""
    postgres.create_schema("alma")
    with ExitStack() as stack:
        port = free_port()
        stack.enter_context(chroma_server(tmp_path / "chroma", port))
        stub = stack.enter_context(FactStub(delay_s=0.3))
        env = _worker_env(f"http://127.0.0.1:{port}", stub)
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            data_dir=tmp_path / "data",
            database_url=postgres.url("alma"),
            chroma_url=env["ALMA_CHROMA_URL"],
        )
        yield settings, stub, stack, env


def _worker_env(chroma_url: str, stub: OpenAIStub) -> dict[str, str]:
    return {
        "ALMA_CHROMA_URL": chroma_url,
        "ALMA_PARTITIONS": "6",
        "ALMA_PARTITION_TIMEOUT_S": str(TIMEOUT_S),
        "ALMA_INDEX_BATCH_SIZE": "300",
        "ALMA_EMBEDDING_BATCH_THREADS": "1",
        "ALMA_SUMMARY_EVERY": "1000",
        "ALMA_FORMATION_CONCURRENCY": "8",
        "OPENAI_API_KEY": "sk-test-alma-0123456789",
        "OPENAI_BASE_URL": stub.base_url,
    }


def _partitions(settings: Settings) -> list[tuple[str, int, int, str | None]]:
    """Every partition's projection, number, position and owner now, read straight from
    PostgreSQL (building the services would wait for a paused worker's open transaction)."""
    env = settings.event_store_env("events")
    schema = env.get("POSTGRES_SCHEMA", "public")
    locks = AdvisoryLocks(conninfo(env), schema, TIMEOUT_S)
    try:
        with psycopg.connect(conninfo(env), options=f"-c search_path={schema}") as connection:
            rows = connection.execute(
                "SELECT projection, partition, position FROM projection_partitions"
            ).fetchall()
        owners = {key: locks.owners(key) for key in {r[0] for r in rows}}
    finally:
        locks.close()
    return [(key, p, position, owners[key].get(p)) for key, p, position in rows]


def _owners(settings: Settings) -> dict[str, dict[int, str | None]]:
    """Each projection's partitions and their owners (host:pid) now."""
    found: dict[str, dict[int, str | None]] = {}
    for key, partition, _, owner in _partitions(settings):
        found.setdefault(key, {})[partition] = owner
    return found


def _windows_due(settings: Settings) -> int:
    """The memory process's windows read and not formed yet (its positions move past them)."""
    env = settings.event_store_env("events")
    schema = env.get("POSTGRES_SCHEMA", "public")
    with psycopg.connect(conninfo(env), options=f"-c search_path={schema}") as connection:
        row = connection.execute("SELECT COUNT(*) FROM formation_due").fetchone()
    return 0 if row is None else int(row[0])


def _caught_up(settings: Settings, app: Alma) -> Callable[[], bool]:
    def done() -> bool:
        head = app.recorder.max_notification_id() or 0
        rows = _partitions(settings)
        read = len({r[0] for r in rows}) == 5 and all(r[2] >= head for r in rows)
        # No window due either, and nothing written meanwhile (a window formed writes).
        return read and _windows_due(settings) == 0 and app.recorder.max_notification_id() == head

    return done


def _assert_read_models_equal_the_log(settings: Settings, world: World) -> None:
    app = world.app
    live = _live_memories(app)
    services = build_services(settings)
    try:
        index = services.memory_index
        for instance in world.instances:
            ours = {str(m): text for m, (i, text, _) in live.items() if i == instance}
            docs = index.memories(instance, 0, 10_000)
            assert {d.doc_id: d.text for d in docs} == ours, instance
            indexed = index.store.query(
                "SELECT doc_id FROM memory_docs WHERE generation = %s AND instance_id = %s",
                (index.generation, str(instance)),
            )
            # Chroma holds a vector for every source in SQL (memories, messages), and no other.
            assert index.vectors.ids(index.generation, instance) == {r[0] for r in indexed}
            messages = services.conversation_view.messages(instance, 0, 10_000)
            assert len(messages) == world.messages[instance]
        listed = services.listings_view.select("instance", TENANT, 0, 10_000)
        assert sorted(str(x.id) for x in listed) == sorted(str(i) for i in world.instances)
    finally:
        services.close()
    formed, told = Counter(_formed_texts(app)), Counter(f"Recuerda {t}" for t in world.tokens)
    assert (sorted((told - formed).elements()), sorted((formed - told).elements())) == ([], [])


@pytest.mark.slow
def test_a_killed_worker_and_a_paused_one_lose_nothing_and_write_nothing_twice(
    deployment: tuple[Settings, FactStub, ExitStack, dict[str, str]],
) -> None:
    settings, _, stack, env = deployment
    app = open_app(settings)
    stack.callback(app.close)
    world = World(app, instances=24)
    workers = Workers(settings, env, stack)
    killed, paused, third = workers.start(), workers.start(), workers.start()
    world.memories(per_instance=60)
    world.conversation()
    owners = _owners(settings)
    ours = [p for p, o in owners["memory-index/1"].items() if o and o.endswith(f":{killed.pid}")]
    assert ours, owners  # each worker took its share

    # Killed while its partitions still have work: the others take them over.
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    workers.running.remove(killed)
    live = {f":{p.pid}" for p in workers.running}
    took = _until(
        lambda: all(
            o is not None and o[o.rfind(":") :] in live
            for partitions in _owners(settings).values()
            for o in partitions.values()
        ),
        "the killed worker's partitions to be taken over",
        TAKEOVER_BOUND_S,
    )
    print(f"partitions of the killed worker taken over in {took:.1f} s")
    world.memories(per_instance=20)
    world.edits(count=40)
    world.conversation()

    # Paused for longer than the bound, while traffic goes on, then resumed.
    paused.send_signal(signal.SIGSTOP)
    try:
        _until(
            lambda: (
                not any(
                    o is not None and o.endswith(f":{paused.pid}")
                    for partitions in _owners(settings).values()
                    for o in partitions.values()
                )
            ),
            "the paused worker's partitions to be taken over",
            TAKEOVER_BOUND_S + 10,
        )
        world.memories(per_instance=20)
        world.edits(count=40)
        world.conversation()
    finally:
        paused.send_signal(signal.SIGCONT)
    world.memories(per_instance=10)
    world.conversation()
    _until(_caught_up(settings, app), "the workers to catch up", 600)
    assert paused.poll() is None and third.poll() is None  # resumed by themselves

    _assert_read_models_equal_the_log(settings, world)


@pytest.mark.slow
def test_scaling_from_one_worker_to_three_and_back_under_traffic_loses_nothing(
    deployment: tuple[Settings, FactStub, ExitStack, dict[str, str]],
) -> None:
    settings, _, stack, env = deployment
    app = open_app(settings)
    stack.callback(app.close)
    world = World(app, instances=12)
    workers = Workers(settings, env, stack)
    first = workers.start()
    traffic = _Traffic(world)
    traffic.start()
    try:
        second, third = workers.start(), workers.start()
        _until(
            lambda: all(
                None not in partitions.values() and len(set(partitions.values())) == 3
                for partitions in _owners(settings).values()
            ),
            "three workers to share every projection",
            60,
        )
        workers.stop(second)
        workers.stop(first)
        _until(
            lambda: all(
                set(partitions.values()) == {_owner_of(third, partitions)}
                for partitions in _owners(settings).values()
            ),
            "the last worker to own every partition",
            60,
        )
    finally:
        traffic.stop()
    _until(_caught_up(settings, app), "the last worker to catch up", 600)
    _assert_read_models_equal_the_log(settings, world)


def _owner_of(process: subprocess.Popen[str], partitions: dict[int, str | None]) -> str | None:
    return next((o for o in partitions.values() if o and o.endswith(f":{process.pid}")), None)


class _Traffic(threading.Thread):
    """Memories, conversations and edits, a round at a time, until stopped."""

    def __init__(self, world: World) -> None:
        super().__init__(daemon=True)
        self.world = world
        self.errors: list[BaseException] = []
        self._stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                self.world.memories(per_instance=10)
                self.world.conversation()
                self.world.edits(count=5)
        except BaseException as error:
            self.errors.append(error)

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=120)
        assert not self.errors, self.errors


@pytest.mark.slow
def test_workers_resume_by_themselves_after_postgres_restarts_under_traffic(
    postgres: ThrowawayPostgres,
    deployment: tuple[Settings, FactStub, ExitStack, dict[str, str]],
) -> None:
    settings, _, stack, env = deployment
    app = open_app(settings)
    stack.callback(app.close)
    world = World(app, instances=8)
    workers = Workers(settings, env, stack)
    one, two = workers.start(), workers.start()
    world.memories(per_instance=30)
    world.conversation()

    postgres.stop("fast")  # every session ends: locks, pools, the event store's
    time.sleep(2)
    postgres.start()
    _until(lambda: _writes(world), "the event store to take writes again", 60)
    world.conversation()
    _until(_caught_up(settings, app), "the workers to resume and catch up", 600)
    assert one.poll() is None and two.poll() is None  # resumed without a restart
    _assert_read_models_equal_the_log(settings, world)


def _writes(world: World) -> bool:
    try:
        world.memories(per_instance=5)
    except Exception:
        return False
    return True
