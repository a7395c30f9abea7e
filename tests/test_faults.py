"""Faults injected for real against real `alma serve` / `alma worker` processes: PostgreSQL
stopped and started again, the Chroma server killed, the worker killed mid-batch, the model
upstream down or slow. What must hold: the API answers fast and in its error shape, recovers
without a restart, and never loses what it acknowledged.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from alma.api.services import build_services
from alma.domain import Actor, Memory
from alma.settings import Settings
from tests.cli import bearer, create_key, free_port, running, wait_for_health
from tests.openai_stub import Fail, OpenAIStub, Reply
from tests.test_chroma_server import chroma_server

_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


class ThrowawayPostgres:
    """A PostgreSQL server of the test's own (never the machine's shared one), from the
    installed binaries, that the test may stop and start at will."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="alma-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        # initdb and postgres refuse to run as root: run them as the postgres user then.
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.root, "postgres")
        self._pg(["initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])

    def _pg(self, args: list[str]) -> None:
        command = [*self._as, str(Path(_BIN[-1]) / args[0]), *args[1:]]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stdout + result.stderr

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        log = str(self.root / "server.log")
        self._pg(["pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "start"])

    def stop(self, mode: str = "fast") -> None:
        self._pg(["pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop"])

    def url(self, schema: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres?schema={schema}"

    def create_schema(self, schema: str) -> None:
        dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')


@pytest.fixture
def postgres() -> Iterator[ThrowawayPostgres]:
    if not _BIN or not shutil.which("runuser"):
        pytest.skip("no PostgreSQL binaries to start a throwaway server")
    server = ThrowawayPostgres()
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(AssertionError):
            server.stop("immediate")
        shutil.rmtree(server.root, ignore_errors=True)


def _settings(tmp_path: Path, **fields: Any) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "data", **fields)  # type: ignore[call-arg]


@contextmanager
def serving(
    settings: Settings, tmp_path: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[httpx.Client, subprocess.Popen[str]]]:
    """A real `alma serve` on a free port and an HTTP client with a key for tenant 'acme'."""
    _, key = create_key(settings, "acme")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / f"serve-{port}.log"
    with running(settings, ["serve", "--port", str(port)], log, env) as process:
        wait_for_health(base, process, log)
        with httpx.Client(base_url=base, headers=bearer(key), timeout=30) as http:
            yield http, process


def _until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _health(http: httpx.Client) -> dict[str, Any]:
    body: dict[str, Any] = http.get("/health", timeout=10).json()
    return body


def _world(http: httpx.Client) -> str:
    character = http.post("/v1/characters", json={"name": "Doña Rosa", "description": "Curandera"})
    assert character.status_code == 201, character.text
    instance = http.post(
        f"/v1/characters/{character.json()['id']}/instances", json={"name": "Rosa", "memory": ""}
    )
    assert instance.status_code == 201, instance.text
    instance_id: str = instance.json()["id"]
    return instance_id


class Writer(threading.Thread):
    """Creates characters one after another until stopped, keeping every answer."""

    def __init__(self, http: httpx.Client) -> None:
        super().__init__(daemon=True)
        self.http = http
        self.statuses: list[int | str] = []
        self.acknowledged: list[str] = []
        self._stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self._stopping.is_set():
            n += 1
            try:
                response = self.http.post(
                    "/v1/characters", json={"name": f"Personaje {n}", "description": ""}
                )
            except httpx.TransportError as error:
                self.statuses.append(type(error).__name__)
                continue
            self.statuses.append(response.status_code)
            if response.status_code == 201:
                self.acknowledged.append(response.json()["id"])
            else:
                time.sleep(0.05)

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=60)


@pytest.mark.slow
def test_a_postgres_outage_answers_503_at_once_and_loses_no_acknowledged_write(
    postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    postgres.create_schema("alma")
    settings = _settings(tmp_path, database_url=postgres.url("alma"))
    with serving(settings, tmp_path) as (http, process):
        writer = Writer(http)
        writer.start()
        _until(lambda: len(writer.acknowledged) >= 10, "writes before the outage")

        postgres.stop("fast")
        _until(lambda: _health(http)["event_store"] == "down", "/health to see the outage")
        # Quick: well inside the store's own connect timeout (5 s) + margin, never its retries.
        quick = httpx.Timeout(10.0)
        for _ in range(5):
            refused = http.post(
                "/v1/characters", json={"name": "X", "description": ""}, timeout=quick
            )
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "database_unavailable"
            assert int(refused.headers["Retry-After"]) > 0
            assert refused.headers["x-request-id"]
        health = http.get("/health", timeout=quick)
        assert health.status_code == 503
        assert health.json()["event_store"] == "down"
        assert health.json()["projections"] is None
        during = len(writer.acknowledged)

        postgres.start()
        _until(lambda: _health(http)["status"] == "ok", "/health after the restart")
        _until(lambda: len(writer.acknowledged) > during + 5, "writes after the restart")
        writer.stop()

        assert process.poll() is None  # resumed without restarting alma
        # A write in flight when the server stopped waits in the store's retries and lands
        # after the restart; the others were refused with 503. Nothing hung, nothing else.
        assert set(writer.statuses) <= {201, 503}, writer.statuses
        stored: set[str] = set()
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
            page = http.get("/v1/characters", params=params).json()
            stored |= {item["id"] for item in page["items"]}
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert set(writer.acknowledged) <= stored
        assert len(stored) <= len(writer.statuses)  # nothing made up, nothing doubled
        for character_id in writer.acknowledged[:: max(1, len(writer.acknowledged) // 20)]:
            assert http.get(f"/v1/characters/{character_id}").status_code == 200


def _search(http: httpx.Client, instance: str, q: str) -> httpx.Response:
    return http.get(
        f"/v1/instances/{instance}/memories/search",
        params={"q": q, "k": 3, "consistent": "true"},
    )


_USER_PERRO = {"role": "user", "content": "¿Y mi perro?"}


def _alma_part(response: httpx.Response) -> Any:
    """The `alma` object of an OpenAI-compatible reply, streamed (in the last chunk) or not."""
    if not response.headers["content-type"].startswith("text/event-stream"):
        return response.json()["alma"]
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line[6:7] == "{"]
    return next(event["alma"] for event in events if "alma" in event)


@pytest.mark.slow
def test_with_chroma_down_chat_answers_without_memories_and_the_index_catches_up(
    tmp_path: Path, openai_stub: OpenAIStub
) -> None:
    port = free_port()
    settings = _settings(tmp_path)
    model = {"OPENAI_API_KEY": "sk-test-alma-0123456789", "OPENAI_BASE_URL": openai_stub.base_url}
    env = {"ALMA_CHROMA_URL": f"http://127.0.0.1:{port}", "ALMA_MEMORY_FORMATION": "false", **model}
    with (
        chroma_server(tmp_path / "chroma", port) as chroma,
        serving(settings, tmp_path, env) as (
            http,
            _,
        ),
    ):
        instance = _world(http)
        memories = f"/v1/instances/{instance}/memories"
        assert http.post(memories, json={"text": "Su perro se llama Canelo"}).status_code == 201
        assert _search(http, instance, "perro").json()["results"][0]["text"].endswith("Canelo")

        chroma.send_signal(signal.SIGKILL)
        chroma.wait()
        health = http.get("/health")
        assert health.status_code == 503
        assert (health.json()["vector_store"], health.json()["event_store"]) == ("down", "ok")

        chat = http.post(f"/v1/instances/{instance}/chat", json={"message": "¿Y mi perro?"})
        assert chat.status_code == 200, chat.text
        assert chat.json()["memories_unavailable"] is True
        assert chat.json()["memories_used"] == []
        assert "Canelo" not in str(openai_stub.requests[-1]["messages"])
        for stream in (False, True):  # OpenAI's shape says so in a header, and in `alma`
            compatible = http.post(
                "/v1/chat/completions",
                json={"model": instance, "stream": stream, "messages": [_USER_PERRO]},
            )
            assert compatible.status_code == 200, compatible.text
            assert compatible.headers["X-Alma-Memories-Unavailable"] == "true"
            assert _alma_part(compatible)["memories_unavailable"] is True
        searched = http.get(f"{memories}/search", params={"q": "perro"})
        assert searched.status_code == 503, searched.text
        assert searched.json()["error"]["code"] == "vector_store_unavailable"
        assert "Retry-After" in searched.headers
        written = http.post(memories, json={"text": "Vive cerca del río Guadalquivir"})
        assert written.status_code == 201  # the event is recorded; the index waits for Chroma

        with chroma_server(tmp_path / "chroma", port):
            _until(lambda: _health(http)["status"] == "ok", "/health with Chroma back")
            found = _search(http, instance, "¿dónde vive, junto a qué río?")
            assert found.status_code == 200, found.text
            assert "Vive cerca del río Guadalquivir" in [r["text"] for r in found.json()["results"]]
            again = http.post(f"/v1/instances/{instance}/chat", json={"message": "¿Y mi perro?"})
            assert again.json()["memories_unavailable"] is False
            compatible = http.post(
                "/v1/chat/completions", json={"model": instance, "messages": [_USER_PERRO]}
            )
            assert "X-Alma-Memories-Unavailable" not in compatible.headers
            assert compatible.json()["alma"]["memories_unavailable"] is False
            assert "Su perro se llama Canelo" in [m["text"] for m in again.json()["memories_used"]]


@pytest.mark.slow
def test_a_worker_killed_mid_batch_leaves_an_index_equal_to_the_live_memories(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    services = build_services(settings)
    actor = Actor("acme", "test", "faults")
    try:
        app = services.app
        character = app.create_character("acme", {"name": "Rosa", "description": ""}, actor)
        instance = app.create_instance("acme", character.id, "Rosa", "", actor).id
        memories = [
            Memory.add("acme", instance, f"Recuerdo número {n}: {uuid.uuid4().hex[:8]}", actor)
            for n in range(3000)
        ]
        app.save(*memories)
        live = {str(memory.id): memory.text for memory in memories}
        written = app.recorder.max_notification_id()

        log = tmp_path / "worker.log"
        with running(settings, ["worker"], log, {"ALMA_INDEX_BATCH_SIZE": "1000"}) as worker:
            # The first batch of 1,000 events committed: the worker is into the second.
            _until(lambda: services.memory.position() > 0, "the worker's first batch", 120)
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        assert services.memory.position() < written, "the worker finished before the kill"

        for memory_id in list(live)[:50]:
            app.forget_memory("acme", instance, uuid.UUID(memory_id), actor)
            del live[memory_id]
        for memory_id in list(live)[:50]:
            live[memory_id] = f"{live[memory_id]} (revisado)"
            app.revise_memory("acme", instance, uuid.UUID(memory_id), actor, text=live[memory_id])
        written = app.recorder.max_notification_id()

        with running(settings, ["worker"], log):
            _until(lambda: services.memory.position() >= written, "the worker to catch up", 300)
    finally:
        services.close()

    reopened = build_services(settings)
    try:
        index = reopened.memory_index
        docs = index.memories(instance, 0, 5000)
        assert {doc.doc_id: doc.text for doc in docs} == live
        assert index.vectors.ids(index.generation, instance) >= set(live)
        hits = index.search(instance, next(iter(live.values())), k=1)
        assert hits[0].doc.doc_id in live
    finally:
        reopened.close()


@pytest.mark.slow
def test_a_down_or_slow_model_answers_502_or_504_in_time_and_keeps_the_message(
    tmp_path: Path, openai_stub: OpenAIStub
) -> None:
    env = {
        "OPENAI_API_KEY": "sk-test-alma-0123456789",
        "OPENAI_BASE_URL": openai_stub.base_url,
        "ALMA_MODEL_TIMEOUT_S": "1",
        "ALMA_MODEL_MAX_RETRIES": "0",
        "ALMA_MEMORY_FORMATION": "false",
    }
    with serving(_settings(tmp_path), tmp_path, env) as (http, _):
        instance = _world(http)
        chat = f"/v1/instances/{instance}/chat"
        # The stub would answer after 60 s; the client gives up at 20: only alma's own model
        # timeout (1 s) can produce an answer.
        openai_stub.script(Reply("demasiado tarde", delay_s=60))
        slow = http.post(chat, json={"message": "¿Me oyes?"}, timeout=20)
        assert slow.status_code == 504, slow.text
        assert slow.json()["error"]["code"] == "model_timeout"

        openai_stub.script(Fail(503))
        down = http.post(chat, json={"message": "¿Y ahora?"}, timeout=20)
        assert down.status_code == 502, down.text
        assert down.json()["error"]["code"] == "model_unavailable"

        events = http.get(f"/v1/instances/{instance}/events", params={"limit": 500}).json()
        messages = [e["data"]["content"] for e in events["items"] if e["type"] == "MessageRecorded"]
        assert messages == ["¿Me oyes?", "¿Y ahora?"]
        failures = [e["data"]["status"] for e in events["items"] if e["type"] == "ReplyFailed"]
        assert failures == [504, 502]
        assert _health(http)["model"] == "failing"

    unreachable = {**env, "OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"}
    other = tmp_path / "other"
    other.mkdir()
    with serving(_settings(other), other, unreachable) as (http, _):
        instance = _world(http)
        gone = http.post(f"/v1/instances/{instance}/chat", json={"message": "¿Hola?"}, timeout=20)
        assert gone.status_code == 502, gone.text
        assert gone.json()["error"]["code"] == "model_unavailable"
