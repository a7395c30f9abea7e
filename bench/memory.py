"""Memory-index benchmark: indexing, search, projection lag, rebuild and server memory.

Run from the repository root: `python bench/memory.py [--quick] [--no-filtered]`.

Everything runs on the embedded default: SQLite files for the events and the index, embedded
Chroma, the packaged MiniLM model, all under a temporary ALMA_DATA_DIR. What it measures:

1. Indexing throughput, from events to searchable: N memories are written with the application
   (Memory aggregates saved in batches of 1,000; each a turn of a conversation, with a speaker and
   when it happened, in sessions of 20 turns, so searches blend and bring in neighbours), then
   `services.memory` catches up (the loop of `Follower.catch_up`, i.e. `run_once` until nothing
   is left). Reported as memories/s, with the
   time spent embedding and, beside it in a writer thread, in Chroma upserts.
   Store A spreads N memories over 100 instances; store B puts N memories in one instance.
2. Search latency p50/p95/p99 of `services.memory_index.search(instance, query, k=10)`, query
   embedding included, with varied Spanish and English queries: after one warm-up search per
   instance (a first search per collection loads it from disk; reported apart), 200 searches.
   Store A: random instance per query; store B: the one instance. A breakdown row gives the
   p50 of each step (query embedding, Chroma, BM25 in SQL, the vectors of BM25's other hits from
   SQL, loading the candidates).
   With `--no-filtered` skipped, otherwise a comparison: the dense step alone on the
   collection of the instance (alma's layout) against one collection holding all N vectors,
   queried with `where={"instance": ...}` (why alma keeps a collection per instance).
3. Projection lag under a steady 50 messages/s (`import_messages`, one message every 20 ms,
   round-robin over 10 instances of store A) for 30 s, with the projections running in their
   own threads (`services.start_projections()`): lag in events (written - indexed, sampled every
   5 ms) and in seconds (from the write returning to `services.memory.position()` reaching the
   write's notification id, polled every 5 ms without waking the follower).
4. Rebuild of store A's index: `rebuild_memory_index(services)`.
5. A real `alma serve` on store A: HTTP searches (each instance searched once first, as in
   process), their p50 against the in-process one, and its peak RSS (VmHWM) with the model
   loaded, after those searches and a few memory writes through HTTP.

Targets:
- indexing >= 500 memories/s;
- search p95 <= 15 ms, with the memories spread over 100 instances and all in one instance;
- projection lag < 2 s (max) at 50 messages/s;
- rebuild of the index < 5 minutes;
- search over HTTP p50 <= 1.3x in-process (issue 20).

`--quick` uses 10,000 memories (100 per instance in store A) and 10 s of lag test, and finishes
in a few minutes; the full run (100,000 memories per store) takes several times as long.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import platform
import random
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar, get_args
from uuid import UUID

import chromadb
import httpx
import numpy as np
from chromadb.api.shared_system_client import SharedSystemClient
from chromadb.config import Settings as ChromaSettings

ROOT = Path(__file__).resolve().parents[1]
# `python bench/memory.py` puts bench/ first on sys.path, where a sibling script can shadow an
# application package (bench/chat.py hides the `chat` package): import from the root instead.
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench")]

from alma.api.services import Services, build_services, rebuild_memory_index  # noqa: E402
from alma.domain import Actor, Memory, NewMessage  # noqa: E402
from alma.embeddings import Backend, Embedder  # noqa: E402
from alma.projections import Follower, MemoryIndex, Period  # noqa: E402
from alma.projections.memory_docs import documents, moment, vectors  # noqa: E402
from alma.projections.ranking import Weights  # noqa: E402
from alma.projections.vectors import COLLECTION  # noqa: E402
from alma.settings import Settings  # noqa: E402
from bench.report import (  # noqa: E402
    Row,
    checked,
    log,
    machine_load,
    p50_ms,
    percentiles_ms,
    print_table,
)
from bench.serve import alma_serve, create_key  # noqa: E402

TENANT = "bench"
ACTOR = Actor(tenant=TENANT, key_id="bench", request_id="bench")
SAVE_BATCH = 1_000
# Each memory is a turn of a conversation (`turn`).
SPEAKERS = ("Rosa", "Mateo")
SESSION = 20
START = datetime(2023, 1, 1, 18, 0, tzinfo=UTC)
PROGRESS_EVERY = 10_000
K = 10
CANDIDATES = 50  # what MemoryIndex asks Chroma for
LAG_INSTANCES = 10
SAMPLE_EVERY_S = 0.005

INDEX_RATE_TARGET = 500.0
SEARCH_P95_TARGET_MS = 15.0
HTTP_SEARCH_RATIO_TARGET = 1.3  # HTTP search p50 against in-process (issue 20)
# The second hop's weight timed beside the default search (bench/fusion.py measured its recall).
HOP = 0.2
# The ranking before issue 15's last round, whose cost the default's is measured against.
BEFORE = Weights(content=0.0, neighbours=0.5, neighbours_each_side=1, neighbour_candidates=0)
LAG_TARGET_S = 2.0
REBUILD_TARGET_S = 300.0

T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    memories: int
    instances: int
    queries: int
    lag_seconds: float
    rate: float
    http_queries: int


FULL = Sizes(
    memories=100_000, instances=100, queries=200, lag_seconds=30, rate=50, http_queries=100
)
QUICK = Sizes(memories=10_000, instances=100, queries=200, lag_seconds=10, rate=50, http_queries=50)


# Realistic texts: templates and word lists in Spanish and English


def words(text: str, separator: str | None = None) -> list[str]:
    return text.split(separator)


NAMES = words(
    "Lucía María Carmen Sofía Elena Paula Marta Julia Alba Irene Rosa Pilar Teresa Nuria Ana "
    "Javier Carlos Miguel Andrés Pablo Diego Álvaro Sergio Jorge Luis Tomás Raúl Iñaki Manuel "
    "Emma Olivia Grace Hannah Chloe Alice Megan Ruth Nora Ellen James Oliver Henry Jack Samuel "
    "Peter George Arthur Daniel Owen"
)
RELATIVES_ES = words("hermana hermano prima primo tía tío abuela abuelo madre padre sobrina vecina")
RELATIVES_EN = words("sister brother cousin aunt uncle grandmother grandfather mother father niece")
JOBS_ES = words(
    "enfermera;profesora de historia;cocinero;abogada;fontanero;veterinaria;panadero;"
    "arquitecta;taxista;periodista;bombera;farmacéutico;programadora;carpintero;dentista;"
    "bibliotecaria;pescador;camarera;electricista;ingeniera de caminos",
    ";",
)
JOBS_EN = words(
    "nurse;history teacher;chef;lawyer;plumber;vet;baker;architect;taxi driver;journalist;"
    "firefighter;pharmacist;software developer;carpenter;dentist;librarian;fisherman;"
    "waitress;electrician;civil engineer",
    ";",
)
CITIES = words(
    "Madrid;Sevilla;Bilbao;Valencia;Granada;Salamanca;Cádiz;Oviedo;Zaragoza;Barcelona;"
    "Buenos Aires;Lima;Bogotá;Ciudad de México;Montevideo;Santiago;London;Dublin;Boston;"
    "Chicago;Lisbon;Porto;Edinburgh;Toronto;Seattle;Glasgow;Marseille;Naples;Berlin;Oslo",
    ";",
)
FOODS_ES = words(
    "la paella;las lentejas;el gazpacho;la tortilla de patatas;el pulpo a la gallega;"
    "los churros con chocolate;el cocido;las croquetas de jamón;el flan;las berenjenas",
    ";",
)
FOODS_EN = words(
    "pancakes;fish and chips;mushroom risotto;apple pie;spicy curry;roast chicken;"
    "blueberry muffins;sushi;pea soup;lemon cake",
    ";",
)
PETS = words("Rufo Canela Toby Luna Nieve Bruno Pipa Max Coco Lola Pepper Biscuit Shadow Milo")
BREEDS_ES = words("pastor alemán;galgo;gato siamés;caniche;labrador;gato callejero;loro gris", ";")
BREEDS_EN = words("border collie;beagle;tabby cat;greyhound;golden retriever;parrot;spaniel", ";")
MONTHS_ES = words(
    "enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre"
)
MONTHS_EN = words(
    "January February March April May June July August September October November December"
)
FEARS_ES = words(
    "las tormentas;los perros grandes;volar;la oscuridad;el mar abierto;las alturas", ";"
)
FEARS_EN = words("thunderstorms;big dogs;flying;the dark;deep water;heights;hospitals", ";")
INSTRUMENTS_ES = words("la guitarra;el piano;el violín;la batería;la gaita;el saxofón", ";")
INSTRUMENTS_EN = words("the guitar;the piano;the violin;the drums;the cello;the trumpet", ";")
GIFTS_ES = words("un reloj antiguo;una bufanda roja;un libro de poemas;una cámara;unas botas", ";")
GIFTS_EN = words("an old watch;a red scarf;a book of poems;a camera;a pair of boots", ";")
TOPICS_ES = words("la herencia;el trabajo;la boda de su prima;dinero;política;la mudanza", ";")
TOPICS_EN = words("the inheritance;work;her cousin's wedding;money;politics;moving house", ";")
WEEKDAYS_ES = words("lunes martes miércoles jueves viernes sábado domingo")
WEEKDAYS_EN = words("Monday Tuesday Wednesday Thursday Friday Saturday Sunday")

SLOTS: dict[str, list[str]] = {
    "name": NAMES,
    "name2": NAMES,
    "rel_es": RELATIVES_ES,
    "rel_en": RELATIVES_EN,
    "job_es": JOBS_ES,
    "job_en": JOBS_EN,
    "city": CITIES,
    "city2": CITIES,
    "food_es": FOODS_ES,
    "food2_es": FOODS_ES,
    "food_en": FOODS_EN,
    "food2_en": FOODS_EN,
    "pet": PETS,
    "breed_es": BREEDS_ES,
    "breed_en": BREEDS_EN,
    "month_es": MONTHS_ES,
    "month_en": MONTHS_EN,
    "fear_es": FEARS_ES,
    "fear_en": FEARS_EN,
    "instr_es": INSTRUMENTS_ES,
    "instr_en": INSTRUMENTS_EN,
    "gift_es": GIFTS_ES,
    "gift_en": GIFTS_EN,
    "topic_es": TOPICS_ES,
    "topic_en": TOPICS_EN,
    "day_es": WEEKDAYS_ES,
    "day_en": WEEKDAYS_EN,
    "year": [str(y) for y in range(1968, 2024)],
    "daynum": [str(d) for d in range(1, 29)],
    "age": [str(a) for a in range(6, 80)],
}

MEMORY_TEMPLATES = [
    "Su {rel_es} {name} trabaja de {job_es} en {city}.",
    "{name} le regaló {gift_es} por su cumpleaños en {month_es}.",
    "Le encanta {food_es}, pero no soporta {food2_es}.",
    "Cuando tenía {age} años vivía en {city} con su {rel_es} {name}.",
    "Su mascota se llama {pet} y es un {breed_es}.",
    "El {day_es} pasado discutió con {name} sobre {topic_es}.",
    "Tiene miedo a {fear_es} desde que pasó un verano en {city}.",
    "Estudió en {city} y terminó la carrera en {year}; allí conoció a {name}.",
    "Prometió a {name} que irían juntos a {city2} en {month_es}.",
    "Su {rel_es} {name} cumple años el {daynum} de {month_es}.",
    "Toca {instr_es} los {day_es} con unos amigos de {city}.",
    "Se mudó de {city} a {city2} en {year} por el trabajo de {name}.",
    "Dice que nadie cocina {food_es} como su {rel_es} {name}.",
    "Her {rel_en} {name} works as a {job_en} in {city}.",
    "{name} gave her {gift_en} for her birthday in {month_en}.",
    "She loves {food_en} but can't stand {food2_en}.",
    "When she was {age} she lived in {city} with her {rel_en} {name}.",
    "Her pet is a {breed_en} called {pet}.",
    "Last {day_en} she argued with {name} about {topic_en}.",
    "She has been afraid of {fear_en} since a summer in {city}.",
    "She studied in {city}, graduated in {year} and met {name} there.",
    "She promised {name} they would travel to {city2} together in {month_en}.",
    "Her {rel_en} {name}'s birthday is on {month_en} {daynum}.",
    "She plays {instr_en} every {day_en} with friends from {city}.",
    "She moved from {city} to {city2} in {year} because of {name}'s job.",
]

QUERY_TEMPLATES = [
    "¿A qué se dedica su {rel_es}?",
    "¿Dónde trabaja {name}?",
    "¿Cómo se llama su mascota?",
    "¿Qué le regaló {name} por su cumpleaños?",
    "¿Qué comida le gusta?",
    "¿Dónde vivía de pequeña?",
    "¿Con quién discutió el {day_es}?",
    "¿A qué le tiene miedo?",
    "¿Dónde estudió y cuándo terminó?",
    "¿Cuándo es el cumpleaños de su {rel_es}?",
    "¿Qué instrumento toca?",
    "¿Por qué se mudó a {city}?",
    "viaje a {city} con {name}",
    "What does her {rel_en} do for a living?",
    "Where does {name} work?",
    "What is her dog's name?",
    "What did {name} give her?",
    "What food does she hate?",
    "Where did she live as a child?",
    "Who did she argue with about {topic_en}?",
    "What is she afraid of?",
    "When did she graduate?",
    "When is {name}'s birthday?",
    "Which instrument does she play?",
    "Why did she move to {city}?",
    "trip to {city} in {month_en}",
]

MESSAGE_TEMPLATES = [
    "Ayer fui a {city} con {name} y comimos {food_es}.",
    "¿Te acuerdas de cuando {name} se mudó a {city}?",
    "Mi {rel_es} {name} empieza mañana de {job_es}, está nerviosa.",
    "I went to {city} with {name} and we had {food_en}.",
    "Do you remember when {name} moved to {city2}?",
    "My {rel_en} {name} starts as a {job_en} tomorrow.",
]


def fill(template: str, rng: random.Random) -> str:
    values = {slot: rng.choice(words) for slot, words in SLOTS.items() if f"{{{slot}}}" in template}
    return template.format(**values)


def memory_texts(count: int, seed: int) -> Iterator[str]:
    rng = random.Random(seed)
    for _ in range(count):
        yield fill(rng.choice(MEMORY_TEMPLATES), rng)


def queries(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [fill(rng.choice(QUERY_TEMPLATES), rng) for _ in range(count)]


# Stores and data


@contextlib.contextmanager
def data_dir(label: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"alma-bench-memory-{label}-") as folder:
        yield Path(folder)


BACKEND: str | None = None  # --embedding-backend; None keeps alma's default


def settings_for(folder: Path) -> Settings:
    # No memory formation: with no key it would ask the local model about the imported messages.
    settings = Settings(data_dir=folder, database_url=None, chroma_url=None, memory_formation=False)
    if BACKEND is not None:
        settings.embedding_backend = BACKEND  # type: ignore[assignment]
    return settings


def release_chroma() -> None:
    """Forget this process's embedded Chroma clients (another process opens the folder next)."""
    SharedSystemClient.clear_system_cache()


def create_instances(services: Services, count: int, seed: int) -> list[UUID]:
    app = services.app
    rng = random.Random(seed)
    character = app.create_character(TENANT, {"name": "Rosa Benchmark"}, ACTOR)
    ids = []
    for k in range(count):
        memory = (
            f"{fill(MEMORY_TEMPLATES[k % 13], rng)}\n\n{fill(MEMORY_TEMPLATES[13 + k % 12], rng)}"
        )
        instance = app.create_instance(TENANT, character.id, f"rosa-{seed}-{k}", memory, ACTOR)
        ids.append(instance.id)
    return ids


def turn(n: int) -> tuple[str, datetime]:
    """Who said an instance's `n`-th memory and when: two speakers taking turns, sessions of
    `SESSION` turns a minute apart, three days between sessions, so that a search blends and
    brings in a turn's neighbours as it does in a conversation."""
    session, place = divmod(n, SESSION)
    when = START + timedelta(days=3 * session, minutes=place)
    return SPEAKERS[n % 2], when


def write_memories(services: Services, instance_ids: list[UUID], count: int, seed: int) -> float:
    """Saves `count` Memory aggregates round-robin over the instances, each a turn (`turn`);
    returns memories/s."""
    rng = random.Random(seed + 1)
    batch: list[Memory] = []
    start = time.perf_counter()
    for i, text in enumerate(memory_texts(count, seed)):
        importance = round(rng.uniform(0.2, 0.9), 2)
        metadata = {"source": "bench", "n": i}
        instance_id = instance_ids[i % len(instance_ids)]
        speaker, when = turn(i // len(instance_ids))
        batch.append(
            Memory.add(
                TENANT,
                instance_id,
                text,
                ACTOR,
                metadata,
                importance,
                occurred_at=when,
                speaker=speaker,
            )
        )
        if len(batch) == SAVE_BATCH:
            services.app.save(*batch)
            batch.clear()
    if batch:
        services.app.save(*batch)
    return count / (time.perf_counter() - start)


class Stopwatch:
    """Total time spent in the wrapped calls, how many calls, and how many items they were given
    (the length of a list passed first, as to `Embedder.encode`)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.items = 0

    def wrap(self, function: Callable[..., T]) -> Callable[..., T]:
        def timed(*args: Any, **kwargs: Any) -> T:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1
                if args and isinstance(args[0], list):
                    self.items += len(args[0])

        return timed


def catch_up(follower: Follower, label: str) -> int:
    """`Follower.catch_up` (run_once until nothing is left), with progress; returns events."""
    done = reported = 0
    while handled := follower.run_once():
        done += handled
        if done - reported >= PROGRESS_EVERY:
            reported = done
            log(f"{label}: {done:,} events indexed")
    return done


def index_rows(services: Services, label: str, count: int) -> list[Row]:
    """Times the catch-up of the memory index over everything written so far."""
    index = services.memory_index
    embedding, chroma = Stopwatch(), Stopwatch()
    encode, upsert = index.embedder.encode, index.vectors.upsert
    setattr(index.embedder, "encode", embedding.wrap(encode))  # noqa: B010
    setattr(index.vectors, "upsert", chroma.wrap(upsert))  # noqa: B010
    try:
        start = time.perf_counter()
        events = catch_up(services.memory, f"index {label}")
        seconds = time.perf_counter() - start
    finally:
        delattr(index.embedder, "encode")
        delattr(index.vectors, "upsert")
    rate = count / seconds
    per_call = chroma.seconds / max(1, chroma.calls) * 1000
    return [
        Row(
            f"index {count:,} memories, {label}",
            f"{rate:.2f} memories/s ({seconds:.2f} s, {events:,} events)",
            f">= {INDEX_RATE_TARGET:.2f}/s",
            checked(rate >= INDEX_RATE_TARGET),
        ),
        Row(
            "  of which",
            f"embedding {embedding.seconds:.2f} s "
            f"({embedding.items / max(embedding.seconds, 1e-9):.2f} texts/s); beside it, in a "
            f"writer thread, Chroma upserts {chroma.seconds:.2f} s ({chroma.calls:,} calls, "
            f"{per_call:.2f} ms a call)",
        ),
    ]


def build_store(services: Services, label: str, instances: int, sizes: Sizes) -> list[UUID]:
    log(f"{label}: creating {instances} instance(s), writing {sizes.memories:,} memories")
    instance_ids = create_instances(services, instances, seed=instances)
    rate = write_memories(services, instance_ids, sizes.memories, seed=instances)
    log(f"{label}: wrote {sizes.memories:,} memories at {rate:,.0f}/s; indexing")
    return instance_ids


def embedding_rows(services: Services, rounds: int = 4) -> list[Row]:
    """The model alone on each backend (and the served one with batches on one thread), in
    alternating blocks so all see the same load: batch encoding (as indexing does) and one
    query (as search does)."""
    served = services.memory_index.embedder

    def on(backend: Backend, batch_threads: int) -> Embedder:
        return Embedder(
            served.model_name,
            served.batch_size,
            served.threads,
            backend,
            served.cache_dir,
            batch_threads,
        )

    embedders = {f"{served.backend} (served)": served}
    if served.batch_threads > 1 and served.backend != "torch":
        embedders[f"{served.backend}, batches on 1 thread"] = on(served.backend, 1)
    for backend in get_args(Backend):
        if backend != served.backend:
            embedders[backend] = on(backend, served.batch_threads)
    texts = list(memory_texts(256, 5))
    asked = queries(40, 5)
    seconds = dict.fromkeys(embedders, 0.0)
    latencies: dict[str, list[float]] = {label: [] for label in embedders}
    log(f"embedding: {rounds} rounds of {len(texts)} texts and {len(asked)} queries per setting")
    for embedder in embedders.values():
        embedder.encode(texts[: embedder.batch_size])  # a full batch: both thread pools
    for _ in range(rounds):
        for label, embedder in embedders.items():
            start = time.perf_counter()
            embedder.encode(texts)
            seconds[label] += time.perf_counter() - start
            for query in asked:
                start = time.perf_counter()
                embedder.encode_query(query)
                latencies[label].append(time.perf_counter() - start)
    rows = []
    for label, embedder in embedders.items():
        p50, p95, _ = percentiles_ms(latencies[label])
        rows.append(
            Row(
                f"embedding alone, {label}, threads {threads(embedder)}",
                f"{rounds * len(texts) / seconds[label]:.2f} texts/s at batch "
                f"{served.batch_size}; one query p50 {p50:.2f} ms, p95 {p95:.2f} ms",
            )
        )
    return rows


def threads(embedder: Embedder) -> str:
    """CPU threads, 'for a batch/for a query'."""
    batch = embedder.threads if embedder.backend == "torch" else embedder.batch_threads
    return f"{batch}/{embedder.threads}"


# 2. Search latency


def search_rows(
    services: Services, label: str, instance_ids: list[UUID], sizes: Sizes, seed: int
) -> tuple[list[Row], float]:
    """The rows, and the searches' p50 in ms (what HTTP is compared with)."""
    index = services.memory_index
    index.embedder.load()
    rng = random.Random(seed)
    warm_queries = queries(len(instance_ids) + 5, seed + 1)
    log(f"search {label}: {len(warm_queries)} warm-ups, then {sizes.queries} searches")
    cold = []
    for n, query in enumerate(warm_queries):
        start = time.perf_counter()
        index.search(instance_ids[n % len(instance_ids)], query, K)
        cold.append(time.perf_counter() - start)
    timings, hits = [], 0
    for query in queries(sizes.queries, seed):
        instance_id = rng.choice(instance_ids)
        start = time.perf_counter()
        found = index.search(instance_id, query, K)
        timings.append(time.perf_counter() - start)
        hits += len(found)
    p50, p95, p99 = percentiles_ms(timings)
    per = f"{sizes.memories // len(instance_ids):,} each"
    steps = search_steps(index, instance_ids, sizes.queries, seed)
    halves = later_halves(index, instance_ids)
    within, found = [], 0
    for query in queries(sizes.queries, seed + 3):
        instance_id = rng.choice(instance_ids)
        start = time.perf_counter()
        found += len(index.search(instance_id, query, K, period=halves[instance_id]))
        within.append(time.perf_counter() - start)
    within_p50, within_p95, _ = percentiles_ms(within)
    hop_p50, hop_p95 = second_hop(index, instance_ids, sizes, seed)
    now, before = against_before(index, instance_ids, sizes, seed)
    rows = [
        Row(
            f"search, {label} ({per})",
            f"p50 {p50:.2f} ms, p95 {p95:.2f} ms, p99 {p99:.2f} ms "
            f"({hits / len(timings):.2f} hits a search)",
            f"p95 <= {SEARCH_P95_TARGET_MS:.2f} ms",
            checked(p95 <= SEARCH_P95_TARGET_MS),
        ),
        Row(
            "  first search of a collection",
            f"p50 {p50_ms(cold[: len(instance_ids)]):.2f} ms, max {max(cold) * 1000:.2f} ms",
        ),
        Row(
            "  steps, p50",
            ", ".join(f"{name} {value:.2f} ms" for name, value in steps.items()),
        ),
        Row(
            "  within a period (since: the later half)",
            f"p50 {within_p50:.2f} ms, p95 {within_p95:.2f} ms "
            f"({found / len(within):.2f} hits a search)",
        ),
        Row(
            f"  with the second hop (Weights.expansion={HOP}, a setting)",
            f"p50 {hop_p50:.2f} ms, p95 {hop_p95:.2f} ms",
        ),
        Row(
            "  the default against the ranking before (interleaved)",
            f"p50 {now[0]:.2f} against {before[0]:.2f} ms, "
            f"p95 {now[1]:.2f} against {before[1]:.2f} ms",
        ),
    ]
    return rows, p50


def second_hop(
    index: MemoryIndex, instance_ids: list[UUID], sizes: Sizes, seed: int
) -> tuple[float, float]:
    """p50 and p95 of the same searches with the second hop on (README, memory search)."""
    rng = random.Random(seed)
    serving = index.weights
    index.weights = replace(serving, expansion=HOP)
    timings = []
    try:
        for query in queries(sizes.queries, seed):
            instance_id = rng.choice(instance_ids)
            start = time.perf_counter()
            index.search(instance_id, query, K)
            timings.append(time.perf_counter() - start)
    finally:
        index.weights = serving
    p50, p95, _ = percentiles_ms(timings)
    return p50, p95


def against_before(
    index: MemoryIndex, instance_ids: list[UUID], sizes: Sizes, seed: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """p50 and p95 of the same searches under the default ranking and under the one before
    issue 15's last round (`BEFORE`: no content, one neighbour a side, none brought in), taking
    turns query by query so that both see the same load."""
    rng = random.Random(seed)
    serving = index.weights
    rankings = {"now": serving, "before": BEFORE}
    timings: dict[str, list[float]] = {name: [] for name in rankings}
    try:
        for n, query in enumerate(queries(sizes.queries, seed)):
            instance_id = rng.choice(instance_ids)
            order = list(rankings) if n % 2 else list(reversed(rankings))
            for name in order:
                index.weights = rankings[name]
                start = time.perf_counter()
                index.search(instance_id, query, K)
                timings[name].append(time.perf_counter() - start)
    finally:
        index.weights = serving
    now, before = (percentiles_ms(timings[name])[:2] for name in rankings)
    return now, before


def later_halves(index: MemoryIndex, instance_ids: list[UUID]) -> dict[UUID, Period]:
    """For each instance, the period from the middle of its memories' times on: a search within
    it filters out about half of them (the memory text, written now, is left out of the middle:
    the memories happened in sessions long before)."""
    halves = {}
    for instance_id in instance_ids:
        [(first, last)] = index.store.query(
            "SELECT MIN(occurred_at), MAX(occurred_at) FROM memory_docs "
            "WHERE generation = %s AND instance_id = %s AND kind = 'memory'",
            (index.generation, str(instance_id)),
        )
        since = moment(first) + (moment(last) - moment(first)) / 2
        halves[instance_id] = Period(since=since)
    return halves


def search_steps(
    index: MemoryIndex, instance_ids: list[UUID], count: int, seed: int
) -> dict[str, float]:
    """The p50 of each step of `MemoryIndex.search`, called one after the other (a search runs
    BM25 beside the embedding and Chroma's top-50)."""
    rng = random.Random(seed)
    generation = index.generation
    names = ["embed", "chroma", "bm25", "vectors of BM25's other hits", "docs"]
    times: dict[str, list[float]] = {name: [] for name in names}
    for query in queries(count, seed + 2):
        instance_id = rng.choice(instance_ids)
        start = time.perf_counter()
        vector = index.embedder.encode_query(query)
        embedded = time.perf_counter()
        dense = dict(index.vectors.nearest(generation, instance_id, vector, CANDIDATES))
        nearest = time.perf_counter()
        lexical, _ = index._bm25(generation, instance_id, query)
        scored = time.perf_counter()
        vectors(index.store, generation, [d for d in lexical if d not in dense])
        fetched = time.perf_counter()
        documents(index.store, generation, list(dense.keys() | lexical.keys()))
        loaded = time.perf_counter()
        marks = [start, embedded, nearest, scored, fetched, loaded]
        for name, (before, after) in zip(names, itertools.pairwise(marks), strict=True):
            times[name].append(after - before)
    return {name: p50_ms(values) for name, values in times.items()}


def filtered_rows(
    services: Services, instance_ids: list[UUID], sizes: Sizes, folder: Path
) -> list[Row]:
    """alma's layout (a collection per instance) against one collection filtered by metadata,
    on the same vectors and the same query vectors, dense step alone."""
    index = services.memory_index
    generation = index.generation
    client = chromadb.PersistentClient(
        path=str(folder), settings=ChromaSettings(anonymized_telemetry=False)
    )
    one = client.get_or_create_collection(
        "all-instances", embedding_function=None, configuration=COLLECTION
    )
    log(f"filtered comparison: copying {sizes.memories:,} vectors into one collection")
    batch = client.get_max_batch_size()
    for instance_id in instance_ids:
        source = index.vectors.client.get_collection(
            index.vectors.name(generation, instance_id), embedding_function=None
        )
        stored = source.get(include=["embeddings"])
        ids, vectors = stored["ids"], stored["embeddings"]
        assert vectors is not None
        for first in range(0, len(ids), batch):
            chunk = slice(first, first + batch)
            one.add(
                ids=ids[chunk],
                embeddings=vectors[chunk],
                metadatas=[{"instance": instance_id.hex}] * len(ids[chunk]),
            )
    rng = random.Random(7)
    asked = queries(sizes.queries, 7)
    vectors_asked = index.embedder.encode(asked)
    targets = [rng.choice(instance_ids) for _ in asked]
    log("filtered comparison: querying both layouts")
    per_instance, filtered = [], []
    for n, (vector, instance_id) in enumerate(zip(vectors_asked, targets, strict=True)):
        start = time.perf_counter()
        index.vectors.nearest(generation, instance_id, vector, CANDIDATES)
        middle = time.perf_counter()
        one.query(
            query_embeddings=np.asarray([vector], dtype=np.float32),
            n_results=CANDIDATES,
            where={"instance": instance_id.hex},
            include=["distances"],
        )
        end = time.perf_counter()
        if n >= 5:  # warm-up
            per_instance.append(middle - start)
            filtered.append(end - middle)
    rows = []
    for label, timings in (
        ("collection per instance (alma)", per_instance),
        ('one collection, where={"instance": id}', filtered),
    ):
        p50, p95, _ = percentiles_ms(timings)
        rows.append(Row(f"Chroma top-{CANDIDATES}, {label}", f"p50 {p50:.2f} ms, p95 {p95:.2f} ms"))
    return rows


# 3. Projection lag


@dataclass
class LagResult:
    written: int
    max_s: float
    p95_s: float
    p50_s: float
    max_events: int
    p95_events: float
    achieved_rate: float
    unindexed: int


def lag_test(services: Services, instance_ids: list[UUID], sizes: Sizes) -> LagResult:
    app, memory = services.app, services.memory
    log("lag: catching up the other read models before starting")
    for follower in (services.listings, services.conversation, services.memory_audit):
        follower.catch_up()
    memory.catch_up()
    services.start_projections()
    pending: deque[tuple[int, float]] = deque()
    lags_s: list[float] = []
    lags_events: list[int] = []
    latest = [memory.position()]
    writing = threading.Event()
    writing.set()
    lock = threading.Lock()
    rng = random.Random(3)
    texts = [fill(rng.choice(MESSAGE_TEMPLATES), rng) for _ in range(997)]
    total = int(sizes.lag_seconds * sizes.rate)
    interval = 1 / sizes.rate

    def writer() -> None:
        start = time.perf_counter()
        for i in range(total):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            instance_id = instance_ids[i % LAG_INSTANCES]
            role = "user" if i % 2 == 0 else "assistant"
            message = NewMessage(role, texts[i % len(texts)])
            app.import_messages(TENANT, instance_id, [message], ACTOR)
            written_at = time.perf_counter()
            notification = app.recorder.max_notification_id() or 0
            with lock:
                pending.append((notification, written_at))
                latest[0] = notification
        writing.clear()

    def sampler() -> None:
        deadline: float | None = None
        while True:
            position = memory.position()
            now = time.perf_counter()
            with lock:
                while pending and pending[0][0] <= position:
                    lags_s.append(now - pending.popleft()[1])
                lags_events.append(max(0, latest[0] - position))
                done = not pending
            if not writing.is_set():
                if done:
                    return
                deadline = deadline or now + 30
                if now > deadline:
                    return
            time.sleep(SAMPLE_EVERY_S)

    log(f"lag: {total:,} messages at {sizes.rate:.0f}/s over {LAG_INSTANCES} instances")
    threads = [threading.Thread(target=writer), threading.Thread(target=sampler)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    threads[0].join()
    write_seconds = time.perf_counter() - start
    threads[1].join()
    for follower in services.followers:
        follower.stop()
    p50, p95, _ = percentiles_ms(lags_s) if len(lags_s) > 1 else (0.0, 0.0, 0.0)
    events_sorted = sorted(lags_events)
    return LagResult(
        written=total,
        max_s=max(lags_s, default=0.0),
        p95_s=p95 / 1000,
        p50_s=p50 / 1000,
        max_events=max(lags_events, default=0),
        p95_events=events_sorted[int(0.95 * (len(events_sorted) - 1))] if events_sorted else 0,
        achieved_rate=total / write_seconds,
        unindexed=len(pending),
    )


def lag_rows(services: Services, instance_ids: list[UUID], sizes: Sizes) -> list[Row]:
    result = lag_test(services, instance_ids, sizes)
    value = (
        f"max {result.max_s:.2f} s, p95 {result.p95_s:.2f} s, p50 {result.p50_s:.2f} s "
        f"({result.written:,} messages at {result.achieved_rate:.2f}/s)"
    )
    if result.unindexed:
        value += f", {result.unindexed} never indexed"
    return [
        Row(
            f"projection lag, {sizes.rate:.0f} messages/s for {sizes.lag_seconds:.0f} s",
            value,
            f"max < {LAG_TARGET_S:.2f} s",
            checked(result.max_s < LAG_TARGET_S and not result.unindexed),
        ),
        Row(
            "  in events (sampled every 5 ms)",
            f"max {result.max_events}, p95 {result.p95_events:.2f}",
        ),
    ]


# 4. Rebuild


def rebuild_rows(services: Services, instance_ids: list[UUID], sizes: Sizes) -> list[Row]:
    index = services.memory_index
    before = index.generation
    building = max([before, *index.generations()]) + 1  # as rebuild_memory_index picks it
    total = services.app.recorder.max_notification_id() or 0
    log(f"rebuild: {total:,} events into generation {building}")
    done = threading.Event()

    def progress() -> None:
        while not done.wait(30):
            rows = index.store.query(
                "SELECT position FROM memory_positions WHERE generation = %s", (building,)
            )
            log(f"rebuild: position {int(rows[0][0]) if rows else 0:,} of {total:,}")

    reporter = threading.Thread(target=progress, daemon=True)
    reporter.start()
    start = time.perf_counter()
    try:
        generation = rebuild_memory_index(services)
    finally:
        done.set()
        reporter.join()
    seconds = time.perf_counter() - start
    hits = services.memory_index.search(instance_ids[0], "¿Dónde trabaja su hermana?", K)
    assert hits, "no hits after the rebuild"
    rate = sizes.memories / seconds
    return [
        Row(
            f"rebuild of the index, {sizes.memories:,} memories (generation {before} -> "
            f"{generation})",
            f"{seconds:.2f} s ({rate:.2f} memories/s)",
            f"< {REBUILD_TARGET_S / 60:.2f} min",
            checked(seconds < REBUILD_TARGET_S),
        )
    ]


# 5. A real `alma serve`


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def serve_rows(
    folder: Path, instance_ids: list[UUID], sizes: Sizes, in_process_p50: float
) -> list[Row]:
    """`alma serve` on the store: its start, HTTP searches against the in-process ones (each
    instance searched once first, as the in-process searches are: a collection's first search
    loads it from disk), a few writes, and its memory."""
    key = create_key(folder, TENANT)
    log("serve: starting `alma serve` and waiting for /health")
    started = time.perf_counter()
    with alma_serve(folder) as (server, base_url):
        ready = time.perf_counter() - started
        rss_ready = status_kb(server.pid, "VmRSS")
        headers = {"Authorization": f"Bearer {key}"}
        rng = random.Random(11)
        first, timings = [], []
        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as http:

            def search(instance_id: UUID, query: str) -> float:
                url = f"/v1/instances/{instance_id}/memories/search"
                start = time.perf_counter()
                http.get(url, params={"q": query, "k": K}).raise_for_status()
                return time.perf_counter() - start

            warm_up = queries(len(instance_ids), 12)
            for instance_id, query in zip(instance_ids, warm_up, strict=True):
                first.append(search(instance_id, query))
            for query in queries(sizes.http_queries, 11):
                timings.append(search(rng.choice(instance_ids), query))
            for text in memory_texts(20, 99):
                http.post(
                    f"/v1/instances/{instance_ids[0]}/memories", json={"text": text}
                ).raise_for_status()
            http.get(
                f"/v1/instances/{instance_ids[0]}/memories/search",
                params={"q": "¿Dónde trabaja su hermana?", "consistent": "true"},
            ).raise_for_status()
        peak = status_kb(server.pid, "VmHWM")
        rss = status_kb(server.pid, "VmRSS")
    p50, p95, _ = percentiles_ms(timings)
    ratio = p50 / in_process_p50
    return [
        Row(
            "alma serve: ready (/health 200) after", f"{ready:.2f} s, RSS {rss_ready / 1024:.2f} MB"
        ),
        Row(
            f"alma serve: HTTP search, {len(timings)} queries",
            f"p50 {p50:.2f} ms, p95 {p95:.2f} ms = {ratio:.2f}x in-process p50 "
            f"({in_process_p50:.2f} ms)",
            f"<= {HTTP_SEARCH_RATIO_TARGET:.1f}x",
            checked(ratio <= HTTP_SEARCH_RATIO_TARGET),
        ),
        Row(
            "  first search of a collection over HTTP",
            f"p50 {p50_ms(first):.2f} ms, max {max(first) * 1000:.2f} ms",
        ),
        Row(
            "alma serve: peak RSS (VmHWM)",
            f"{peak / 1024:.2f} MB (RSS now {rss / 1024:.2f} MB)",
        ),
    ]


# Command line


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 memories, a few minutes")
    parser.add_argument(
        "--no-filtered",
        action="store_true",
        help="skip the comparison with one metadata-filtered Chroma collection",
    )
    parser.add_argument(
        "--embedding-backend",
        choices=get_args(Backend),
        default=None,
        help="what-if: run the embedding model on this backend instead of alma's default",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    sizes = QUICK if args.quick else FULL
    print(
        f"alma memory benchmark ({'quick' if args.quick else 'full'}): "
        f"Python {platform.python_version()}, chromadb {metadata.version('chromadb')}, "
        f"torch {metadata.version('torch')}, {os.cpu_count()} CPUs, "
        f"{sizes.memories:,} memories per store, started {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    what_if = []
    if args.embedding_backend:
        global BACKEND
        BACKEND = args.embedding_backend
        what_if.append(f"embedding backend {args.embedding_backend}")
    print(f"what-if changes: {'; '.join(what_if) or 'none (the application as it is)'}")
    print(f"machine at start: {machine_load()}")
    with data_dir("spread") as spread_dir, data_dir("one") as one_dir:
        log("loading the embedding model")
        services = build_services(settings_for(spread_dir))
        services.memory_index.embedder.load()
        try:
            spread = f"{sizes.instances} instances"
            rows = embedding_rows(services)
            print_table("The embedding model alone (packaged MiniLM, CPU)", rows)
            instance_ids = build_store(services, "store A", sizes.instances, sizes)
            rows = index_rows(services, spread, sizes.memories)
            searched, in_process_p50 = search_rows(services, spread, instance_ids, sizes, seed=1)
            rows += searched
            if not args.no_filtered:
                with data_dir("filtered") as filtered_dir:
                    rows += filtered_rows(services, instance_ids, sizes, filtered_dir)
            rows += lag_rows(services, instance_ids, sizes)
            rows += rebuild_rows(services, instance_ids, sizes)
            rows.append(Row("machine at the end of this part", machine_load()))
        finally:
            services.close()
        print_table(f"Store A: {sizes.memories:,} memories over {spread}", rows)

        services = build_services(settings_for(one_dir))
        try:
            one_id = build_store(services, "store B", 1, sizes)
            rows = index_rows(services, "one instance", sizes.memories)
            rows += search_rows(services, "one instance", one_id, sizes, seed=2)[0]
            rows.append(Row("machine at the end of this part", machine_load()))
        finally:
            services.close()
        print_table(f"Store B: {sizes.memories:,} memories in one instance", rows)

        release_chroma()
        print_table(
            f"alma serve on store A ({sizes.memories:,} memories)",
            serve_rows(spread_dir, instance_ids, sizes, in_process_p50),
        )
    if not args.no_filtered:
        print(
            "\nChroma layout: alma keeps one collection per instance and generation, so a search"
            " never filters\nby metadata; the 'Chroma top-50' rows compare it with one collection"
            " filtered by instance."
        )


if __name__ == "__main__":
    main()
