"""Chat benchmark: the overhead alma adds to a chat turn, the first streamed byte, concurrency.

Run from the repository root: `python bench/chat_turn.py [--quick]`.

Everything runs on the embedded default: SQLite files and embedded Chroma under a temporary
ALMA_DATA_DIR, the packaged MiniLM model. The model is tests/openai_stub.py's OpenAI-compatible
HTTP server, started in this process, which answers at once; alma reaches it through its real
client (the `openai` SDK over HTTP), as it would reach OpenAI.

Data: one character with a full persona; the main instance with 100,000 memories (Memory
aggregates, saved 1,000 at a time) and 10,000 past turns (conversation messages, user and
character alternating, recorded on the instance 1,000 a save); 50 more instances with 200
memories and 100 turns each for the concurrency test. `services.memory.catch_up()` then indexes
it all (several minutes at the full size).

1. Turn overhead, in process: `Chat.prepare` + `Chat.complete` on the main instance with varied
   Spanish and English messages, the `Chat` built as `Services.chat` builds it but with the model
   wrapped in a timing proxy, so the model call (the SDK, HTTP to the stub, the stub) is timed
   from inside and subtracted. Two passes: with the projections stopped (alma's own work
   alone); with them running in their threads as in `alma serve` (each turn's messages are
   embedded while the turn goes on; between turns the bench waits until every projection,
   the memory formation (on, as with any remote model) among them, has caught up with the
   whole log, the summaries formation writes included, as a user reads the reply before
   writing again). Breakdown per step, p50/p95: load
   (instance and character), retrieval (the recent turns from the instance's events, the wait
   for the index to hold the instance's latest write (none with the projections stopped) and
   the hybrid search) and the query embedding (computed in a thread from the turn's start,
   while the instance and its recent turns load, so it overlaps the load and retrieval steps);
   assembly (the rest of `prepare`: persona, tiktoken counting, the budget); recording (the
   message and the reply events); and the model call for reference.
2. First streamed byte through HTTP: `alma serve` in a subprocess on the same data, streaming
   chats (`stream: true`) with the main instance, one at a time. The stub streams a word every
   20 ms and notes when it wrote the first word; the client notes when the first
   `data: {"token": ...}` line arrived; the difference is alma's relay delay. Also: request sent
   -> the model request reaching the stub (auth, prepare and recording the message, via HTTP).
   Between chats the bench waits until `/health` shows no projection lag.
3. The OpenAI-compatible layer's cost: the same turns (non-streaming, the same message, on the
   main instance) through `POST /v1/instances/{id}/chat` and through `POST /v1/chat/completions`
   (the message as the one user message, the instance as the `model`), one route then the
   other, their order alternating, so that load and the instance's growth fall on both alike;
   latency at the client, p50/p95 of each, the difference of their p95s (the target) and of
   their p50s, and the median of each pair's difference (the least noisy of the three on a
   loaded machine). Between turns the bench waits until `/health` shows no projection lag.
4. 50 clients, each chatting (not streaming) with its own instance, back to back for 30 s:
   errors, turns/s, latency p50/p95.

Targets:
- turn overhead p95 <= 30 ms, with the projections running as shipped (the published
  reference, Mem0's search latency alone, is p50 148 ms / p95 200 ms);
- first streamed byte p95 <= 50 ms after the model's first token;
- the OpenAI-compatible route adds p95 <= 2 ms to a turn over the native one;
- 50 concurrent chats: no errors.

`--quick` uses 10,000 memories and 1,000 turns (20 memories and 10 turns on each of the 50
others), fewer samples (100 turns through each route) and 10 s of concurrency, and finishes in
a few minutes.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar, cast
from uuid import UUID, uuid4

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from chromadb.api.shared_system_client import SharedSystemClient
from pydantic import SecretStr

from alma.api.services import Services, build_model, build_services
from alma.chat.extraction import FACTS_INSTRUCTION
from alma.chat.turns import Chat
from alma.domain import Actor, Alma, Character, Instance, Memory
from alma.embeddings import Embedder
from alma.llm.client import Completion, Messages, ModelClient, Sampling
from alma.projections import Follower, Hit, MemoryIndex
from alma.settings import Settings
from bench.report import Row, checked, log, machine_load, percentiles_ms, print_table
from bench.serve import alma_serve
from tests.openai_stub import Behaviour, OpenAIStub, Reply

ROOT = Path(__file__).resolve().parents[1]
TENANT = "bench"
ACTOR = Actor(tenant=TENANT, key_id="bench", request_id="bench")
SAVE_BATCH = 1_000
PROGRESS_EVERY = 10_000
WARMUP = 20
CLIENTS = 50
MAX_TOKENS = 512
TEMPERATURE = 0.8
TOKEN_DELAY_S = 0.02  # the stub's pace while streaming: 50 words/s

OVERHEAD_P95_TARGET_MS = 30.0
FIRST_BYTE_P95_TARGET_MS = 50.0
COMPAT_P95_TARGET_MS = 2.0
MEM0_SEARCH = "Mem0 search p50 148 ms / p95 200 ms"

REPLY = (
    "Claro que me acuerdo, mi niña: aquel verano en Cádiz olía a sal y a churros, "
    "y tu hermana no paraba de reírse."
)

T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    memories: int
    turns: int
    other_memories: int
    other_turns: int
    samples: int
    probes: int
    pairs: int  # turns through each route, native and OpenAI-compatible
    seconds: float


FULL = Sizes(
    memories=100_000,
    turns=10_000,
    other_memories=200,
    other_turns=100,
    samples=1_000,
    probes=200,
    pairs=500,
    seconds=30.0,
)
QUICK = Sizes(
    memories=10_000,
    turns=1_000,
    other_memories=20,
    other_turns=10,
    samples=200,
    probes=50,
    pairs=100,
    seconds=10.0,
)


def spread(seconds: Sequence[float]) -> str:
    p50, p95, p99 = percentiles_ms(seconds)
    return f"p50 {p50:.2f} ms, p95 {p95:.2f} ms, p99 {p99:.2f} ms"


# Texts: Spanish and English, from templates


def words(text: str, separator: str | None = None) -> list[str]:
    return text.split(separator)


SLOTS: dict[str, list[str]] = {
    "name": words("Lucía María Carmen Sofía Elena Javier Carlos Miguel Emma Olivia James Henry"),
    "rel_es": words("hermana hermano prima primo tía tío abuela abuelo madre padre vecina"),
    "rel_en": words("sister brother cousin aunt uncle grandmother grandfather mother father"),
    "job_es": words("enfermera;profesora;cocinero;abogada;fontanero;veterinaria;panadero", ";"),
    "job_en": words("nurse;history teacher;chef;lawyer;plumber;vet;baker;architect", ";"),
    "city": words("Madrid;Sevilla;Bilbao;Cádiz;Lima;Bogotá;London;Dublin;Boston;Lisbon", ";"),
    "food_es": words("la paella;las lentejas;el gazpacho;la tortilla;el pulpo;los churros", ";"),
    "food_en": words("pancakes;fish and chips;apple pie;spicy curry;sushi;lemon cake", ";"),
    "pet": words("Rufo Canela Toby Luna Nieve Bruno Pipa Max Coco Pepper Biscuit"),
    "month_es": words("enero marzo mayo julio septiembre noviembre"),
    "month_en": words("January March May July September November"),
    "year": [str(y) for y in range(1968, 2024)],
    "age": [str(a) for a in range(6, 80)],
}

MEMORY_TEMPLATES = [
    "Su {rel_es} {name} trabaja de {job_es} en {city}.",
    "{name} le regaló un libro de poemas en {month_es}.",
    "Le encanta {food_es}, sobre todo la de su {rel_es}.",
    "Cuando tenía {age} años vivía en {city} con su {rel_es} {name}.",
    "Su perro se llama {pet} y le tiene miedo a las tormentas.",
    "Estudió en {city} y terminó la carrera en {year}.",
    "Her {rel_en} {name} works as a {job_en} in {city}.",
    "{name} gave her an old watch for her birthday in {month_en}.",
    "She loves {food_en} but can't stand coffee.",
    "When she was {age} she lived in {city} with her {rel_en} {name}.",
    "Her dog {pet} sleeps at the foot of her bed.",
    "She moved to {city} in {year} because of {name}'s job.",
]

MESSAGE_TEMPLATES = [
    "¿Te acuerdas de cuando {name} se mudó a {city}?",
    "Ayer fui a {city} con mi {rel_es} y comimos {food_es}.",
    "¿A qué se dedica tu {rel_es} {name}?",
    "¿Cómo se llamaba tu perro, el de {city}?",
    "Do you remember when {name} moved to {city}?",
    "My {rel_en} {name} starts as a {job_en} tomorrow.",
    "What did {name} give you in {month_en}?",
    "Tell me again about the summer in {city}.",
]

REPLY_TEMPLATES = [
    "¡Claro! {name} siempre decía que {city} le quedaba lejos de todo.",
    "Mi {rel_es} {name} era {job_es}; la echo de menos.",
    "Of course, {name} and I still talk about {city}.",
    "I remember {food_en} in {city}, and {pet} barking all night.",
]


def fill(template: str, rng: random.Random) -> str:
    values = {slot: rng.choice(options) for slot, options in SLOTS.items() if slot in template}
    return template.format(**values)


PERSONA: dict[str, Any] = {
    "name": "Rosa Benchmark",
    "description": (
        "Rosa is a retired schoolteacher from Cádiz, seventy-two, sharp and warm. She raised "
        "two children alone, taught history for forty years and still corrects everyone's "
        "dates. She keeps a notebook of family birthdays and never forgets a promise."
    ),
    "personality": "Warm, witty, a little stubborn; tells stories with vivid detail.",
    "scenario": "{{user}} visits Rosa on Sunday afternoons; they talk over coffee and cake.",
    "greeting": "¡Pasa, pasa! Que se enfría el café.",
    "example_dialogue": (
        "{{user}}: ¿Qué tal la semana?\n{{char}}: Larga, hija, larga. Pero el jueves vino tu "
        "primo con churros, así que no me quejo."
    ),
    "system_prompt": "",
}


# Building the data


def write_memories(app: Alma, instance_id: UUID, count: int, rng: random.Random) -> None:
    batch: list[Memory] = []
    for i in range(count):
        text = fill(rng.choice(MEMORY_TEMPLATES), rng)
        importance = round(rng.uniform(0.2, 0.9), 2)
        batch.append(Memory.add(TENANT, instance_id, text, ACTOR, {"n": i}, importance))
        if len(batch) == SAVE_BATCH:
            app.save(*batch)
            batch.clear()
    if batch:
        app.save(*batch)


def write_turns(app: Alma, instance_id: UUID, count: int, rng: random.Random) -> None:
    """`count` past messages, user and character alternating, one a minute up to an hour ago."""
    start = datetime.now(UTC) - timedelta(hours=1, minutes=count)
    written = 0
    while written < count:
        instance = app.repository.get(instance_id)
        assert isinstance(instance, Instance)
        for _ in range(min(SAVE_BATCH, count - written)):
            role = "user" if written % 2 == 0 else "assistant"
            template = rng.choice(MESSAGE_TEMPLATES if role == "user" else REPLY_TEMPLATES)
            sent_at = start + timedelta(minutes=written)
            instance.record_message(uuid4(), role, fill(template, rng), sent_at, {}, ACTOR)
            written += 1
        app.save(instance)


def memory_text(rng: random.Random) -> str:
    return "\n\n".join(fill(MEMORY_TEMPLATES[k], rng) for k in (0, 4, 6, 11))


@dataclass(frozen=True)
class World:
    main: UUID
    others: list[UUID]
    secret: str


def build_world(services: Services, sizes: Sizes) -> World:
    app = services.app
    rng = random.Random(7)
    character = app.create_character(TENANT, PERSONA, ACTOR)
    main = app.create_instance(TENANT, character.id, "rosa-main", memory_text(rng), ACTOR).id
    others = [
        app.create_instance(TENANT, character.id, f"rosa-{k}", memory_text(rng), ACTOR).id
        for k in range(CLIENTS)
    ]
    log(f"writing {sizes.memories:,} memories and {sizes.turns:,} turns on the main instance")
    start = time.perf_counter()
    write_memories(app, main, sizes.memories, rng)
    write_turns(app, main, sizes.turns, rng)
    log(
        f"writing {sizes.other_memories:,} memories and {sizes.other_turns:,} turns on each of "
        f"{CLIENTS} more instances"
    )
    for instance_id in others:
        write_memories(app, instance_id, sizes.other_memories, rng)
        write_turns(app, instance_id, sizes.other_turns, rng)
    log(f"written in {time.perf_counter() - start:.2f} s; indexing (catch_up)")
    start = time.perf_counter()
    events = catch_up(services.memory)
    log(f"memory index: {events:,} events in {time.perf_counter() - start:.2f} s")
    for follower in (services.listings, services.conversation, services.memory_audit):
        start = time.perf_counter()
        follower.catch_up()
        log(f"{follower.name}: caught up in {time.perf_counter() - start:.2f} s")
    _, secret = app.issue_key(TENANT, ACTOR)
    return World(main, others, secret)


def catch_up(follower: Follower) -> int:
    done = reported = 0
    while handled := follower.run_once():
        done += handled
        if done - reported >= PROGRESS_EVERY:
            reported = done
            log(f"indexed {done:,} events")
    return done


# 1. Turn overhead, in process


class Clock:
    """Seconds spent in each step of the current turn."""

    def __init__(self) -> None:
        self.steps: dict[str, float] = defaultdict(float)

    def reset(self) -> None:
        self.steps.clear()

    def timed(self, step: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            self.steps[step] += time.perf_counter() - start


class TimedModel:
    """The model client, its calls timed from inside so they can be taken out of the turn."""

    def __init__(self, inner: ModelClient, clock: Clock) -> None:
        self.inner = inner
        self.clock = clock
        self.model = inner.model
        self.context_window = inner.context_window

    def complete(
        self,
        messages: Messages,
        max_tokens: int,
        temperature: float,
        sampling: Sampling | None = None,
    ) -> Completion:
        return self.clock.timed(
            "model", self.inner.complete, messages, max_tokens, temperature, sampling
        )

    def stream(
        self,
        messages: Messages,
        max_tokens: int,
        temperature: float,
        sampling: Sampling | None = None,
    ) -> Iterator[str | Completion]:
        pieces = self.inner.stream(messages, max_tokens, temperature, sampling)
        while True:
            piece = self.clock.timed("model", next, pieces, None)
            if piece is None:
                return
            yield piece


class TimedApp:
    """The application with the reads and writes of a turn timed (all else passes through)."""

    def __init__(self, app: Alma, clock: Clock) -> None:
        self.app = app
        self.clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    def instance(self, *args: Any, **kwargs: Any) -> Instance:
        return self.clock.timed("load", self.app.instance, *args, **kwargs)

    def character(self, *args: Any, **kwargs: Any) -> Character:
        return self.clock.timed("load", self.app.character, *args, **kwargs)

    def last_messages(self, *args: Any, **kwargs: Any) -> list[Any]:
        return self.clock.timed("retrieval", self.app.last_messages, *args, **kwargs)

    def record_message(self, *args: Any, **kwargs: Any) -> UUID:
        return self.clock.timed("record", self.app.record_message, *args, **kwargs)

    def record_reply(self, *args: Any, **kwargs: Any) -> tuple[UUID, int]:
        return self.clock.timed("record", self.app.record_reply, *args, **kwargs)


class TimedIndex:
    """The memory index with the reads of a turn timed."""

    def __init__(self, index: MemoryIndex, clock: Clock) -> None:
        self.index = index
        self.clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self.index, name)

    def search(self, *args: Any, **kwargs: Any) -> list[Hit]:
        return self.clock.timed("retrieval", self.index.search, *args, **kwargs)


class TimedEmbedder:
    """The index's embedder with the query embedding timed (batch encoding passes through)."""

    def __init__(self, inner: Embedder, clock: Clock) -> None:
        self.inner = inner
        self.clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode_query(self, text: str) -> list[float]:
        return self.clock.timed("embedding", self.inner.encode_query, text)


STEPS = ("load", "retrieval", "embedding", "assembly", "recording", "model")
STEP_NAMES = {
    "load": "load (instance, character)",
    "retrieval": "retrieval (recent turns, index wait, hybrid search)",
    "embedding": "  query embedding (in a thread, beside load and retrieval)",
    "assembly": "assembly (persona, tiktoken, budget)",
    "recording": "recording (message and reply events)",
    "model": "model call (SDK + HTTP + stub; excluded)",
}


def timed_chat(services: Services, clock: Clock, wait: bool) -> Chat:
    """`Services.chat`, with timing proxies around the app, the index and the model. Without
    `wait` (the projections stopped) a turn does not wait for the index."""
    model = TimedModel(build_model(services.settings), clock)

    def index_wait(position: int, timeout: float) -> bool:
        if not wait:
            return True  # nothing follows the log: no write to wait for, none to warn about
        return clock.timed("retrieval", services.memory.wait, position, timeout)

    return Chat(
        cast(Alma, TimedApp(services.app, clock)),
        cast(MemoryIndex, TimedIndex(services.memory_index, clock)),
        index_wait,
        lambda: model,
        services.settings.chat_memories,
        services.settings.chat_history_turns,
        services.settings.chat_memory_wait_s,
    )


@dataclass
class TurnTimes:
    overhead: list[float]
    steps: dict[str, list[float]]
    memories: list[int]
    first: float


def settle(services: Services, timeout: float = 30.0) -> None:
    """Waits until every projection has processed the whole log, including what the memory
    formation wrote while processing it (a summary every 20 messages, which the index then
    embeds)."""
    while True:
        head = services.app.recorder.max_notification_id() or 0
        for follower in services.followers:
            follower.wait(head, timeout)
        if (services.app.recorder.max_notification_id() or 0) == head:
            return


def run_turns(
    services: Services, instance_id: UUID, samples: int, rng: random.Random, wait: bool
) -> TurnTimes:
    clock = Clock()
    chat = timed_chat(services, clock, wait)
    index = services.memory_index
    embedder = index.embedder
    index.embedder = cast(Embedder, TimedEmbedder(embedder, clock))
    times = TurnTimes([], {step: [] for step in STEPS}, [], 0.0)
    try:
        for n in range(WARMUP + samples):
            message = fill(rng.choice(MESSAGE_TEMPLATES), rng)
            clock.reset()
            start = time.perf_counter()
            turn = chat.prepare(TENANT, instance_id, message, MAX_TOKENS, TEMPERATURE)
            prepared = time.perf_counter()
            result = chat.complete(turn, ACTOR)
            done = time.perf_counter()
            steps = dict(clock.steps)
            overhead = done - start - steps["model"]
            if n == 0:
                times.first = overhead
            if n >= WARMUP:
                times.overhead.append(overhead)
                steps["assembly"] = prepared - start - steps["load"] - steps["retrieval"]
                steps["recording"] = steps.pop("record")
                for step in STEPS:
                    times.steps[step].append(steps[step])
                times.memories.append(len(result.memories_used))
            if wait:  # the user reads the reply: the projections catch up before the next message
                settle(services)
    finally:
        index.embedder = embedder
    return times


@dataclass(frozen=True)
class Pass:
    label: str
    projections: bool
    verdict: bool = False


def overhead_rows(services: Services, world: World, sizes: Sizes) -> list[Row]:
    rng = random.Random(11)
    passes = (
        Pass("projections stopped", projections=False),
        Pass("projections running, as alma serve", projections=True, verdict=True),
    )
    rows = []
    following = False
    for run in passes:
        if run.projections and not following:
            services.start_projections()
            following = True
        log(f"turn overhead, {run.label}: {WARMUP} warm-up turns, then {sizes.samples:,}")
        times = run_turns(services, world.main, sizes.samples, rng, wait=run.projections)
        p50, p95, p99 = percentiles_ms(times.overhead)
        rows.append(
            Row(
                f"turn overhead, {run.label}",
                f"p50 {p50:.2f} ms, p95 {p95:.2f} ms, p99 {p99:.2f} ms "
                f"({statistics.mean(times.memories):.2f} memories in the prompt)",
                f"p95 <= {OVERHEAD_P95_TARGET_MS:.2f} ms",
                checked(p95 <= OVERHEAD_P95_TARGET_MS) if run.verdict else "",
            )
        )
        for step in STEPS:
            s50, s95, _ = percentiles_ms(times.steps[step])
            rows.append(Row(f"  {STEP_NAMES[step]}", f"p50 {s50:.2f} ms, p95 {s95:.2f} ms"))
        if not run.projections:
            rows.append(Row("  first turn (collection from disk)", f"{times.first * 1000:.2f} ms"))
    rows.append(Row("reference", MEM0_SEARCH))
    embedder = services.memory_index.embedder
    rows.append(Row("embedding", f"{embedder.backend}, {embedder.threads} thread(s)"))
    rows.append(Row("machine", machine_load()))
    return rows


# The model server: the stub, noting when each request came and when its first token left


def user_message(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    return str(messages[-1].get("content", "")) if messages else ""


def system_message(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    return str(messages[0].get("content", "")) if messages else ""


FACTS_ASKED = FACTS_INSTRUCTION.split("{name}", 1)[0]
NOTHING_TO_REMEMBER = Reply("[]")


class TimingStub(OpenAIStub):
    """The stub, noting (by the user message) when a request arrived and when the first word
    of a streamed reply was written and flushed."""

    def __init__(self, default: Reply) -> None:
        super().__init__(default=default)
        self.arrived: dict[str, float] = {}
        self.first_token: dict[str, float] = {}

    def answer(self, body: dict[str, Any], headers: dict[str, str]) -> Behaviour:
        self.arrived[user_message(body)] = time.perf_counter()
        if system_message(body).startswith(FACTS_ASKED):
            return NOTHING_TO_REMEMBER  # memory formation: a valid answer, so it runs to the end
        return self.default  # nothing is kept: the benchmark sends tens of thousands

    def first_word_sent(self, body: dict[str, Any]) -> None:
        self.first_token[user_message(body)] = time.perf_counter()


# Through HTTP: `alma serve` in a subprocess


# 2. First streamed byte


def caught_up(http: httpx.Client, timeout: float = 30.0) -> None:
    """Waits until the server's projections have processed every event (`/health`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)  # polling harder would itself load the server
        if http.get("/health").json().get("projection_lag_events") == 0:
            return


def first_byte_rows(base_url: str, world: World, stub: TimingStub, sizes: Sizes) -> list[Row]:
    rng = random.Random(13)
    relay: list[float] = []
    before_model: list[float] = []
    to_first_token: list[float] = []
    headers = {"Authorization": f"Bearer {world.secret}"}
    url = f"/v1/instances/{world.main}/chat"
    log(f"first streamed byte: {WARMUP} warm-up streams, then {sizes.probes}")
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as http:
        for n in range(WARMUP + sizes.probes):
            message = f"probe {n}: {fill(rng.choice(MESSAGE_TEMPLATES), rng)}"
            body = {"message": message, "stream": True, "max_tokens": MAX_TOKENS}
            first: float | None = None
            ended = False
            start = time.perf_counter()
            with http.stream("POST", url, json=body) as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    if first is None and line.startswith('data: {"token"'):
                        first = time.perf_counter()
                    ended = ended or line == "event: turn"
            if first is None or not ended:
                raise RuntimeError(f"stream {n} brought no token or no turn")
            caught_up(http)  # the user reads the reply before writing again
            if n >= WARMUP:
                relay.append(first - stub.first_token[message])
                before_model.append(stub.arrived[message] - start)
                to_first_token.append(first - start)
    return [
        Row(
            "first streamed token after the model's first token (relay)",
            spread(relay),
            f"p95 <= {FIRST_BYTE_P95_TARGET_MS:.2f} ms",
            checked(percentiles_ms(relay)[1] <= FIRST_BYTE_P95_TARGET_MS),
        ),
        Row("  request sent -> model request at the stub", spread(before_model)),
        Row(
            f"  request sent -> first token at the client (the model's first after "
            f"{TOKEN_DELAY_S * 1000:.0f} ms)",
            spread(to_first_token),
        ),
    ]


# 3. The OpenAI-compatible layer


def compat_rows(base_url: str, world: World, sizes: Sizes) -> list[Row]:
    rng = random.Random(17)
    took: dict[str, list[float]] = {"native": [], "openai": []}
    headers = {"Authorization": f"Bearer {world.secret}"}
    model = str(world.main)

    def request(route: str, message: str) -> tuple[str, dict[str, Any]]:
        if route == "native":
            return f"/v1/instances/{model}/chat", {"message": message, "max_tokens": MAX_TOKENS}
        user = {"role": "user", "content": message}
        return "/v1/chat/completions", {
            "model": model,
            "messages": [user],
            "max_tokens": MAX_TOKENS,
        }

    log(f"OpenAI-compatible layer: {WARMUP} warm-up turns through each route, then {sizes.pairs}")
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as http:
        for n in range(WARMUP + sizes.pairs):
            message = fill(rng.choice(MESSAGE_TEMPLATES), rng)
            for route in ("native", "openai") if n % 2 == 0 else ("openai", "native"):
                url, body = request(route, message)
                start = time.perf_counter()
                response = http.post(url, json=body)
                elapsed = time.perf_counter() - start
                if response.status_code != 200:
                    raise RuntimeError(f"{url} answered {response.status_code}: {response.text}")
                caught_up(http)  # the user reads the reply before writing again
                if n >= WARMUP:
                    took[route].append(elapsed)
    native, openai = percentiles_ms(took["native"]), percentiles_ms(took["openai"])
    added = openai[1] - native[1]
    paired = statistics.median(b - a for a, b in zip(took["native"], took["openai"], strict=True))
    return [
        Row("turn through POST /v1/instances/{id}/chat", spread(took["native"])),
        Row("the same through POST /v1/chat/completions", spread(took["openai"])),
        Row(
            "  OpenAI-compatible layer: p95 difference",
            f"{added:+.2f} ms (p50 {openai[0] - native[0]:+.2f} ms; "
            f"median of the pairs' differences {paired * 1000:+.2f} ms)",
            f"<= {COMPAT_P95_TARGET_MS:.2f} ms",
            checked(added <= COMPAT_P95_TARGET_MS),
        ),
    ]


# 4. Concurrent chats


def concurrency_rows(base_url: str, world: World, sizes: Sizes) -> list[Row]:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(CLIENTS + 1)
    stop = threading.Event()
    headers = {"Authorization": f"Bearer {world.secret}"}

    def client(k: int) -> None:
        rng = random.Random(100 + k)
        url = f"/v1/instances/{world.others[k]}/chat"
        mine: list[float] = []
        bad: list[str] = []

        def turn() -> float:
            message = fill(rng.choice(MESSAGE_TEMPLATES), rng)
            start = time.perf_counter()
            try:
                response = http.post(url, json={"message": message, "max_tokens": MAX_TOKENS})
                if response.status_code != 200:
                    bad.append(f"{response.status_code} {response.text[:200]}")
            except httpx.HTTPError as error:
                bad.append(f"{type(error).__name__}: {error}")
            return time.perf_counter() - start

        with httpx.Client(base_url=base_url, headers=headers, timeout=60) as http:
            turn()  # the first search of a collection loads it from disk
            barrier.wait()
            while not stop.is_set():
                mine.append(turn())
        with lock:
            latencies.extend(mine)
            errors.extend(bad)

    log(f"{CLIENTS} concurrent clients, one instance each, {sizes.seconds:.0f} s")
    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(sizes.seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        log(f"{len(errors)} failed turns, first: {errors[0]}")
    p50, p95, _ = percentiles_ms(latencies)
    return [
        Row(
            f"{CLIENTS} concurrent chats, {CLIENTS} instances, {elapsed:.2f} s",
            f"{len(latencies):,} turns, {len(errors)} errors, {len(latencies) / elapsed:.2f} "
            f"turns/s, p50 {p50:.2f} ms, p95 {p95:.2f} ms",
            "0 errors",
            checked(not errors),
        ),
        Row("machine", machine_load()),
    ]


# Command line


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="10,000 memories, 1,000 turns, 10 s of concurrency"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    sizes = QUICK if args.quick else FULL
    print(
        f"alma chat benchmark ({'quick' if args.quick else 'full'}): "
        f"Python {platform.python_version()}, openai {metadata.version('openai')}, "
        f"{os.cpu_count()} CPUs; main instance: {sizes.memories:,} memories, "
        f"{sizes.turns:,} past turns; {CLIENTS} more: {sizes.other_memories:,} memories and "
        f"{sizes.other_turns:,} turns each; model: a local stub that answers at once"
    )
    stub = TimingStub(Reply(REPLY, chunk_delay_s=TOKEN_DELAY_S)).start()
    try:
        with tempfile.TemporaryDirectory(prefix="alma-bench-chat-") as tmp:
            folder = Path(tmp)
            settings = Settings(  # type: ignore[call-arg]
                openai_api_key=SecretStr("sk-bench"),
                openai_base_url=stub.base_url,
                data_dir=folder,
                database_url=None,
                chroma_url=None,
                _env_file=None,
            )
            services = build_services(settings)
            try:
                world = build_world(services, sizes)
                rows = overhead_rows(services, world, sizes)
            finally:
                services.close()
                SharedSystemClient.clear_system_cache()  # `alma serve` opens the folder next
            print_table("Turn overhead, in process (model time excluded)", rows)
            log("starting alma serve")
            extra = {"OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": stub.base_url}
            with alma_serve(folder, extra) as (_, base_url):
                rows = first_byte_rows(base_url, world, stub, sizes)
                rows += compat_rows(base_url, world, sizes)
                rows += concurrency_rows(base_url, world, sizes)
            print_table("Through HTTP (alma serve in a subprocess)", rows)
    finally:
        stub.stop()


if __name__ == "__main__":
    main()
