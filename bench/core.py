"""Core benchmark for alma's write path and load path, on SQLite and on PostgreSQL.

Run from the repository root: `python bench/core.py [--quick] [--postgres-url URL]`.

What it measures, on each store (SQLite: a file in a temporary folder; PostgreSQL: a fresh schema
that is created here and dropped at the end):

1. Raw library save rate: a minimal `eventsourcing` aggregate with one `@event` command, kept in
   memory and saved after every command (one event per save), in a plain `Application` subclass.
2. alma's application-layer command rate for memory edits, `Alma.edit_instance(memory=...)`,
   (a) all on one instance and (b) round-robin over 1,000 instances, as a ratio to the raw rate.
3. The same edits through HTTP (`PATCH /v1/instances/{id}`) from 8 concurrent clients against
   `api.app:create_app(settings)` served by uvicorn in a subprocess (skipped if `api.app` is
   missing): all clients on one instance, and each client on its own instance; once as the
   embedded default (projections and the local chat model in the server) and once as a
   deployment's API process (projections in `alma worker`, a hosted chat model): the request
   path alone.
4. Load latency p50/p95 of an instance's current state with 10, 1,000 and 100,000 events in
   its history, and of its state at an old version (history // 3 + 7) — time travel.

Targets:
- application-layer edit rate >= 0.8 x the raw save rate, on each store;
- instance load p95 <= 5 ms at every history length;
- time-travel load p95 <= 20 ms;
- HTTP, projections elsewhere: 8 clients on their own instances >= 0.5x the in-process rate on
  one instance with p95 <= 20 ms; 8 clients on one shared instance p95 <= 50 ms.

`--quick` uses smaller sizes (histories of 10 / 1,000 / 10,000, fewer operations) and finishes
in well under a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alma.domain import Actor, Alma, Instance
from alma.settings import Settings
from alma.stores.keys import open_keys
from bench.report import Row, checked, free_port, log, percentiles_ms, print_table

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
TENANT = "bench"
ACTOR = Actor(tenant=TENANT, key_id="bench", request_id="bench")
FILLER = "The character remembers the harbour, the rain and the name of the ferryman. " * 3
APP_RATE_TARGET = 0.8
LOAD_P95_TARGET_MS = 5.0
TIME_TRAVEL_P95_TARGET_MS = 20.0
GROW_BATCH = 1_000
WARMUP = 20
HTTP_CLIENTS = 8
HTTP_RATE_TARGET = 0.5  # of the in-process rate, 8 clients on their own instances
OWN_P95_TARGET_MS = 20.0
SHARED_P95_TARGET_MS = 50.0


@dataclass(frozen=True)
class Sizes:
    saves: int
    instances: int
    http_requests: int
    histories: tuple[int, ...]
    samples: int


FULL = Sizes(
    saves=5_000, instances=1_000, http_requests=2_000, histories=(10, 1_000, 100_000), samples=200
)
QUICK = Sizes(
    saves=500, instances=1_000, http_requests=400, histories=(10, 1_000, 10_000), samples=50
)


def memory_text(i: int) -> str:
    return f"#{i} {FILLER}"


# Stores


@contextlib.contextmanager
def sqlite_store() -> Iterator[Settings]:
    with tempfile.TemporaryDirectory(prefix="alma-bench-") as folder:
        yield Settings(data_dir=Path(folder), database_url=f"sqlite:///{folder}/alma.sqlite3")


@contextlib.contextmanager
def postgres_store(url: str) -> Iterator[Settings]:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    try:
        with tempfile.TemporaryDirectory(prefix="alma-bench-") as folder:
            yield Settings(data_dir=Path(folder), database_url=f"{url}?schema={schema}")
    finally:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


@contextlib.contextmanager
def alma(settings: Settings) -> Iterator[Alma]:
    app = Alma(settings.event_store_env("events"), keys=open_keys)
    try:
        yield app
    finally:
        app.close()


# 1. Raw library save rate and 2. application-layer command rate

Op = Callable[[int], None]


class Note(Aggregate):
    @event("Created")
    def __init__(self) -> None:
        self.text = ""

    @event("Written")
    def write(self, text: str) -> None:
        self.text = text


class RawApp(Application[UUID]):
    name = "rawbench"


@contextlib.contextmanager
def raw_saver(settings: Settings) -> Iterator[Op]:
    """One aggregate kept in memory; each call records one event and saves it."""
    app = RawApp(settings.event_store_env("raw"))
    try:
        note = Note()
        app.save(note)

        def save(i: int) -> None:
            note.write(memory_text(i))
            app.save(note)

        yield save
    finally:
        app.close()


def memory_editor(app: Alma, instance_ids: list[UUID]) -> Op:
    def edit(i: int) -> None:
        instance_id = instance_ids[i % len(instance_ids)]
        app.edit_instance(TENANT, instance_id, ACTOR, memory=memory_text(i))

    return edit


def create_instances(app: Alma, count: int, prefix: str) -> list[UUID]:
    character = app.create_character(TENANT, {"name": f"{prefix} character"}, ACTOR)
    return [
        app.create_instance(TENANT, character.id, f"{prefix}-{k}", "", ACTOR).id
        for k in range(count)
    ]


def elapsed(op: Op, first: int, count: int) -> float:
    start = time.perf_counter()
    for i in range(first, first + count):
        op(i)
    return time.perf_counter() - start


def paired_rates(raw: Op, command: Op, total: int, rounds: int = 10) -> tuple[float, float]:
    """Operations/s of `raw` and of `command`, timed in alternating blocks so that both see the
    same load on the machine (the ratio is what the target is about)."""
    for i in range(WARMUP):
        raw(-1 - i)
        command(-1 - i)
    per_round = total // rounds
    raw_s = command_s = 0.0
    for r in range(rounds):
        raw_s += elapsed(raw, r * per_round, per_round)
        command_s += elapsed(command, r * per_round, per_round)
    done = per_round * rounds
    return done / raw_s, done / command_s


def app_layer_rows(settings: Settings, app: Alma, sizes: Sizes) -> tuple[list[Row], float, float]:
    """The rows for sections 1 and 2, the raw rate over both pairings, and alma's rate on one
    instance (what HTTP is compared with)."""
    log(f"app layer: creating 1 + {sizes.instances:,} instances")
    scenarios = (
        ("one instance", create_instances(app, 1, "one")),
        (f"{sizes.instances:,} instances", create_instances(app, sizes.instances, "many")),
    )
    rows = []
    raw_rates = []
    rates = []
    with raw_saver(settings) as raw:
        for label, instance_ids in scenarios:
            log(f"app layer: {label}, paired with raw saves")
            raw_rate, rate = paired_rates(raw, memory_editor(app, instance_ids), sizes.saves)
            raw_rates.append(raw_rate)
            rates.append(rate)
            ratio = rate / raw_rate
            rows.append(
                Row(
                    f"alma edit_instance(memory), {label}",
                    f"{rate:.2f} cmd/s = {ratio:.2f}x raw ({raw_rate:.2f} alongside)",
                    f">= {APP_RATE_TARGET:.2f}x raw",
                    checked(ratio >= APP_RATE_TARGET),
                )
            )
    raw_rate = statistics.harmonic_mean(raw_rates)
    label = f"raw library save, 1 event/save (n={len(raw_rates) * sizes.saves:,})"
    return [Row(label, f"{raw_rate:.2f} cmd/s"), *rows], raw_rate, rates[0]


# 3. Through HTTP

SERVER_CODE = """
import sys
import uvicorn
from alma.api.app import create_app
from alma.settings import Settings

settings = Settings.model_validate_json(sys.argv[1])
uvicorn.run(create_app(settings), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def api_unavailable() -> str | None:
    """Why `api.app.create_app` cannot be used, or None when it can."""
    try:
        from alma.api.app import create_app  # noqa: F401
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def wait_until_listening(server: subprocess.Popen[bytes], port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the API server exited with status {server.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the API server did not listen on port {port} within {timeout} s")


@contextlib.contextmanager
def api_server(settings: Settings) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-c", SERVER_CODE, settings.model_dump_json(), str(port)]
    server = subprocess.Popen(command, cwd=ROOT)
    try:
        wait_until_listening(server, port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def seed_http(settings: Settings) -> tuple[str, list[UUID]]:
    """An API key and one instance per client, made before the server opens the store."""
    with alma(settings) as app:
        _, secret = app.issue_key(TENANT, ACTOR)
        return secret, create_instances(app, HTTP_CLIENTS, "http")


@dataclass
class HttpResult:
    rate: float
    p50_ms: float
    p95_ms: float
    failures: int


def drive_http(base_url: str, secret: str, targets: list[UUID], requests: int) -> HttpResult:
    """HTTP_CLIENTS threads, client k editing targets[k % len(targets)]."""
    per_client = requests // HTTP_CLIENTS
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(HTTP_CLIENTS + 1)

    def client(k: int) -> None:
        url = f"/v1/instances/{targets[k % len(targets)]}"
        headers = {"Authorization": f"Bearer {secret}"}
        mine: list[float] = []
        bad: list[str] = []
        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as http:
            http.patch(url, json={"memory": f"warm {k}"})
            barrier.wait()
            for i in range(per_client):
                start = time.perf_counter()
                response = http.patch(url, json={"memory": memory_text(k * per_client + i)})
                mine.append(time.perf_counter() - start)
                if not response.is_success:
                    bad.append(f"{response.status_code} {response.text[:200]}")
        with lock:
            latencies.extend(mine)
            failures.extend(bad)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(HTTP_CLIENTS)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if failures:
        log(f"HTTP: {len(failures)} failed requests, first: {failures[0]}")
    p50, p95, _ = percentiles_ms(latencies)
    return HttpResult(len(latencies) / elapsed, p50, p95, len(failures))


def http_rows(settings: Settings, sizes: Sizes, in_process: float) -> list[Row]:
    """Each scenario twice: as the embedded default (the projections in the server's process,
    where every memory edit is also embedded and indexed, and the local chat model, which reads
    an edited instance's next prompt ahead), and as a deployment's API process (the projections
    in `alma worker`, a hosted chat model, which a PATCH never calls): the request path alone,
    what the targets are for."""
    reason = api_unavailable()
    if reason is not None:
        return [Row("HTTP: skipped (api.app not available)", reason[:60])]
    secret, instance_ids = seed_http(settings)
    rows = [Row("HTTP server", "1 uvicorn process")]
    for projections in (False, True):
        where = "embedded default" if projections else "projections elsewhere"
        deployed = {"openai_api_key": SecretStr("sk-bench-never-called")}
        served = settings.model_copy(
            update={"run_projections": projections, **({} if projections else deployed)}
        )
        with api_server(served) as base_url:
            scenarios = (
                ("one shared instance", instance_ids[:1], SHARED_P95_TARGET_MS),
                ("own instance each", instance_ids, OWN_P95_TARGET_MS),
            )
            for label, targets, p95_target in scenarios:
                log(f"HTTP: {HTTP_CLIENTS} clients, {label}, {where}")
                result = drive_http(base_url, secret, targets, sizes.http_requests)
                ratio = result.rate / in_process
                value = (
                    f"{result.rate:.2f} cmd/s = {ratio:.2f}x in-process, "
                    f"p50 {result.p50_ms:.2f} ms, p95 {result.p95_ms:.2f} ms"
                )
                if result.failures:
                    value += f", {result.failures} failed"
                row = f"HTTP PATCH, {HTTP_CLIENTS} clients, {label}, {where}"
                if projections:
                    rows.append(Row(row, value))
                    continue
                rate_ok = label == "one shared instance" or ratio >= HTTP_RATE_TARGET
                target = f"p95 <= {p95_target:.0f} ms"
                if label == "own instance each":
                    target = f">= {HTTP_RATE_TARGET:.1f}x, {target}"
                ok = rate_ok and result.p95_ms <= p95_target and not result.failures
                rows.append(Row(row, value, target, checked(ok)))
    return rows


# 4. Load latency


def grow(app: Alma, instance_id: UUID, history: int) -> None:
    """Append memory edits until the instance has `history` events, saving in batches (the
    application still snapshots every event whose version is a multiple of the interval)."""
    instance = app.repository.get(instance_id)
    assert isinstance(instance, Instance)
    while instance.version < history:
        for _ in range(min(GROW_BATCH, history - instance.version)):
            instance.rewrite_memory(memory_text(instance.version), ACTOR)
        app.save(instance)


def latency_ms(load: Callable[[], Any], samples: int) -> tuple[float, float]:
    for _ in range(min(WARMUP, samples)):
        load()
    timings = []
    for _ in range(samples):
        start = time.perf_counter()
        load()
        timings.append(time.perf_counter() - start)
    p50, p95, _ = percentiles_ms(timings)
    return p50, p95


def latency_row(label: str, load: Callable[[], Any], target_ms: float, samples: int) -> Row:
    p50, p95 = latency_ms(load, samples)
    return Row(
        label,
        f"p50 {p50:.2f} ms, p95 {p95:.2f} ms",
        f"p95 <= {target_ms:.2f} ms",
        checked(p95 <= target_ms),
    )


def load_rows(app: Alma, sizes: Sizes) -> list[Row]:
    """Per history length: the current state; when that falls on a snapshot, also the current
    state with the most events past the last snapshot (interval - 1, the worst case); and the
    state at an old version (history // 3 + 7)."""
    rows = []
    interval = Alma.snapshotting_intervals[Instance]
    character_id = app.create_character(TENANT, {"name": "load"}, ACTOR).id
    for history in sizes.histories:
        log(f"load: writing {history:,} events")
        instance_id = app.create_instance(TENANT, character_id, f"load-{history}", "", ACTOR).id

        def current(i: UUID = instance_id) -> Instance:
            return app.instance(TENANT, i)

        grow(app, instance_id, history)
        label = f"load current, history {history:,}"
        rows.append(latency_row(label, current, LOAD_P95_TARGET_MS, sizes.samples))
        length = history
        if history % interval == 0:
            length = history + interval - 1
            grow(app, instance_id, length)
            label = f"load current, history {length:,} ({interval - 1} past snapshot)"
            rows.append(latency_row(label, current, LOAD_P95_TARGET_MS, sizes.samples))
        old = min(history, history // 3 + 7)
        label = f"load version {old:,} of {length:,}"
        rows.append(
            latency_row(
                label,
                lambda i=instance_id, v=old: app.instance(TENANT, i, version=v),
                TIME_TRAVEL_P95_TARGET_MS,
                sizes.samples,
            )
        )
    return rows


# Report


def run_store(title: str, settings: Settings, sizes: Sizes) -> None:
    log(title)
    with alma(settings) as app:
        rows, _, in_process = app_layer_rows(settings, app, sizes)
        rows += load_rows(app, sizes)
    rows += http_rows(settings, sizes, in_process)
    print_table(title, rows)


def postgres_unavailable(url: str) -> str | None:
    try:
        with psycopg.connect(url, connect_timeout=5):
            return None
    except psycopg.Error as error:
        return str(error).strip().splitlines()[0]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under a minute")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("ALMA_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="server and database in which a throwaway schema is made",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    sizes = QUICK if args.quick else FULL
    print(
        f"alma core benchmark ({'quick' if args.quick else 'full'}): "
        f"Python {platform.python_version()}, eventsourcing {metadata.version('eventsourcing')}, "
        f"{sizes.saves:,} commands per rate, {sizes.samples} loads per latency, "
        f"snapshot interval {Alma.snapshotting_intervals[Instance]}"
    )
    with sqlite_store() as settings:
        run_store("SQLite (file in a temp dir)", settings, sizes)
    reason = postgres_unavailable(args.postgres_url)
    if reason is not None:
        print(f"\n== PostgreSQL: skipped ({reason}) ==")
        return
    with postgres_store(args.postgres_url) as settings:
        run_store("PostgreSQL (throwaway schema)", settings, sizes)


if __name__ == "__main__":
    main()
