"""Load benchmark: 50 concurrent clients against a real `alma serve` on PostgreSQL.

Run from the repository root: `python bench/load.py [--quick] [--database-url URL]`.

`alma serve` runs in a subprocess on loopback with its projections in process, its events in a
PostgreSQL schema of its own (`load_<random>`, dropped afterwards) on the server at
`--database-url` (default: the local test server), the embedded Chroma index under a temporary
folder, and as its model tests/openai_stub.py's OpenAI-compatible server, started here, which
answers at once. Ten instances; each client loops over: chat with a random instance (30 %), add a
memory (40 %), search its memories (30 %), for 60 s (`--quick`: 15 s).

Afterwards every acknowledged write is looked for: each memory answered 201 must be listed,
each chat answered 200 must have its user message and its reply in the conversation (both read
models wait for the index to catch up first). Prints p50/p95/p99 per route, the status counts,
the 5xx count and the lost writes; exits non-zero on any 5xx or loss.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import free_port
from bench.serve import wait_until_healthy
from tests.openai_stub import OpenAIStub

ALMA = str(Path(sys.executable).parent / "alma")
CLIENTS = 50
INSTANCES = 10
WORDS = [
    "río",
    "perro",
    "hermana",
    "café",
    "sierra",
    "lluvia",
    "mercado",
    "canción",
    "abuela",
    "tren",
    "faro",
    "viento",
]


def _sentence() -> str:
    return " ".join(random.choices(WORDS, k=8)).capitalize() + "."


class Tally:
    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.statuses: Counter[tuple[str, int | str]] = Counter()
        self.memories: dict[str, set[str]] = defaultdict(set)
        self.messages: dict[str, set[str]] = defaultdict(set)

    def note(self, route: str, started: float, status: int | str) -> None:
        self.latencies[route].append((time.perf_counter() - started) * 1000)
        self.statuses[(route, status)] += 1


async def _client(
    http: httpx.AsyncClient, instances: list[str], until: float, tally: Tally
) -> None:
    while time.monotonic() < until:
        instance = random.choice(instances)
        roll = random.random()
        started = time.perf_counter()
        try:
            if roll < 0.3:
                route = "POST /v1/instances/{id}/chat"
                response = await http.post(
                    f"/v1/instances/{instance}/chat", json={"message": _sentence()}
                )
                if response.status_code == 200:
                    turn = response.json()["turn"]
                    tally.messages[instance] |= {turn["message_id"], turn["reply_id"]}
            elif roll < 0.7:
                route = "POST /v1/instances/{id}/memories"
                response = await http.post(
                    f"/v1/instances/{instance}/memories", json={"text": _sentence()}
                )
                if response.status_code == 201:
                    tally.memories[instance].add(response.json()["id"])
            else:
                route = "GET /v1/instances/{id}/memories/search"
                response = await http.get(
                    f"/v1/instances/{instance}/memories/search", params={"q": _sentence()}
                )
            tally.note(route, started, response.status_code)
        except httpx.HTTPError as error:
            tally.note(route, started, type(error).__name__)


async def _listed(http: httpx.AsyncClient, path: str) -> set[str]:
    found: set[str] = set()
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        response = await http.get(path, params=params)
        response.raise_for_status()
        page = response.json()
        found |= {str(item["id"]) for item in page["items"]}
        cursor = page["next_cursor"]
        if cursor is None:
            return found


async def _run(base: str, key: str, seconds: float) -> tuple[Tally, int]:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=CLIENTS + 10)
    async with httpx.AsyncClient(
        base_url=base, headers=headers, timeout=120, limits=limits
    ) as http:
        character = await http.post(
            "/v1/characters", json={"name": "Doña Rosa", "description": "Curandera de la sierra"}
        )
        instances = []
        for n in range(INSTANCES):
            made = await http.post(
                f"/v1/characters/{character.json()['id']}/instances",
                json={"name": f"Rosa {n}", "memory": "Vive en la sierra."},
            )
            instances.append(made.json()["id"])
        tally = Tally()
        until = time.monotonic() + seconds
        await asyncio.gather(*(_client(http, instances, until, tally) for _ in range(CLIENTS)))
        lost = 0
        for instance in instances:  # the listings wait until the index has caught up
            memories = await _listed(http, f"/v1/instances/{instance}/memories")
            messages = await _listed(http, f"/v1/instances/{instance}/messages")
            lost += len(tally.memories[instance] - memories)
            lost += len(tally.messages[instance] - messages)
        return tally, lost


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _report(tally: Tally, lost: int, seconds: float) -> int:
    total = sum(len(v) for v in tally.latencies.values())
    print(f"{CLIENTS} clients, {seconds:.0f} s, {total} requests ({total / seconds:.0f}/s)")
    print(f"{'route':<42}{'n':>7}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}")
    for route, values in sorted(tally.latencies.items()):
        p50, p95, p99 = (_percentile(values, q) for q in (0.5, 0.95, 0.99))
        print(f"{route:<42}{len(values):>7}{p50:>9.1f}{p95:>9.1f}{p99:>9.1f}")
    statuses = ", ".join(
        f"{r.split()[-1]} {s}: {n}" for (r, s), n in sorted(tally.statuses.items(), key=str)
    )
    print(f"statuses: {statuses}")
    errors = sum(n for (_, s), n in tally.statuses.items() if not isinstance(s, int) or s >= 500)
    acknowledged = sum(map(len, tally.memories.values())) + sum(map(len, tally.messages.values()))
    print(f"5xx or no answer: {errors}")
    print(
        f"acknowledged writes: {acknowledged} (memories, chat messages and replies); lost: {lost}"
    )
    return 1 if errors or lost else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="15 s instead of 60")
    parser.add_argument(
        "--database-url", default="postgresql://postgres@127.0.0.1:5432/test", help="PostgreSQL"
    )
    args = parser.parse_args()
    seconds = 15.0 if args.quick else 60.0
    schema = f"load_{uuid.uuid4().hex[:12]}"
    admin = args.database_url.split("?")[0]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    folder = Path(tempfile.mkdtemp(prefix="alma-load-"))
    try:
        with OpenAIStub() as stub:
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("ALMA_", "OPENAI_"))},
                "ALMA_DATA_DIR": str(folder / "data"),
                "ALMA_DATABASE_URL": f"{admin}?schema={schema}",
                "ALMA_CONSISTENCY_WAIT_S": "300",
                "ALMA_MEMORY_FORMATION": "false",
                "OPENAI_API_KEY": "sk-load-0123456789",
                "OPENAI_BASE_URL": stub.base_url,
            }
            made = subprocess.run(
                [ALMA, "keys", "create", "--tenant", "load"],
                env=env,
                cwd=folder,
                capture_output=True,
                text=True,
                check=True,
            )
            key = made.stdout.strip()
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            with (folder / "serve.log").open("w") as log:
                server = subprocess.Popen(
                    [ALMA, "serve", "--port", str(port)],
                    env=env,
                    cwd=folder,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                try:
                    wait_until_healthy(server, base, timeout=120)
                    tally, lost = asyncio.run(_run(base, key, seconds))
                finally:
                    server.terminate()
                    server.wait(timeout=30)
        return _report(tally, lost, seconds)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    sys.exit(main())
