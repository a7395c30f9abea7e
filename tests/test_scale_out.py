"""The compose topology for real, without Docker: PostgreSQL, `chroma run`, two `alma serve`
processes (projections off) and one `alma worker`. Traffic goes through both API processes at
once; every write is visible through the other, memories are found through both, and the log
holds exactly the events the acknowledged writes made."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from alma.api.event_store import open_app
from alma.api.services import build_services
from alma.domain import Actor
from alma.settings import Settings
from tests.cli import free_port, running, wait_for_health, wait_for_line
from tests.test_chroma_server import chroma_url

__all__ = ["chroma_url"]  # a fixture: pytest finds it here

MEMORIES = [
    "Su perro se llama Canelo",
    "Vive cerca del río Guadalquivir",
    "Toca la guitarra flamenca los domingos",
    "Trabaja de enfermera en el hospital de Triana",
    "Le encanta el gazpacho con pepino",
    "Nació en Cádiz durante una tormenta",
]


@pytest.fixture
def apis(settings: Settings, chroma_url: str, tmp_path: Path) -> Iterator[list[httpx.Client]]:
    """Two API processes and a worker on one PostgreSQL schema and one Chroma server, configured
    as in docker-compose.yml: through a `.env` file in their working folder. Each client sends
    a key of tenant acme, issued first (so no process makes a default key)."""
    app = open_app(settings)
    try:
        _, key = app.issue_key("acme", Actor("acme", "cli", "scale-out"))
    finally:
        app.close()
    (tmp_path / ".env").write_text(
        f"ALMA_CHROMA_URL={chroma_url}\n"
        "ALMA_RUN_PROJECTIONS=false\n"
        "ALMA_MEMORY_FORMATION=false\n"
        "ALMA_READ_MODEL_WAIT_S=60\n"
        "ALMA_CONSISTENCY_WAIT_S=60\n"
    )
    assert settings.data_dir.parent == tmp_path
    with ExitStack() as stack:
        worker_log = tmp_path / "worker.log"
        worker = stack.enter_context(running(settings, ["worker"], worker_log))
        wait_for_line(worker, worker_log, "following the event log")
        clients = []
        for n in range(2):
            port, log = free_port(), tmp_path / f"api{n}.log"
            process = stack.enter_context(running(settings, ["serve", "--port", str(port)], log))
            base = f"http://127.0.0.1:{port}"
            wait_for_health(base, process, log)
            bearer = {"Authorization": f"Bearer {key}"}
            client = httpx.Client(base_url=base, headers=bearer, timeout=90)
            clients.append(stack.enter_context(client))
        yield clients


def _created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.slow
@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
def test_two_api_processes_and_a_worker_share_one_store(
    settings: Settings, apis: list[httpx.Client]
) -> None:
    app = open_app(settings)
    pool = ThreadPoolExecutor(8)
    try:
        written = 1  # the key
        a = apis[0]

        def both(calls: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
            return list(pool.map(lambda call: call(), calls))

        # Characters, half through each process at once; each is read through the other.
        characters = [
            _created(r)
            for r in both(
                [
                    lambda n=n: apis[n % 2].post(
                        "/v1/characters",
                        json={"name": f"Rosa {n}", "description": ""},
                    )
                    for n in range(4)
                ]
            )
        ]
        written += len(characters)
        for n, character in enumerate(characters):
            other = apis[(n + 1) % 2]
            seen = other.get(f"/v1/characters/{character['id']}")
            assert seen.status_code == 200 and seen.json() == character
        for client in apis:
            listed = client.get("/v1/characters", params={"limit": 500})
            assert listed.status_code == 200, listed.text
            assert sorted(c["id"] for c in listed.json()["items"]) == sorted(
                c["id"] for c in characters
            )

        # One instance per character (with its name index entry), the other way round.
        instances = [
            _created(r)
            for r in both(
                [
                    lambda n=n, c=c: apis[(n + 1) % 2].post(
                        f"/v1/characters/{c['id']}/instances",
                        json={"name": f"Instancia {n}", "memory": "Vive en Sevilla"},
                    )
                    for n, c in enumerate(characters)
                ]
            )
        ]
        written += 2 * len(instances)

        # Edits with If-Match racing through both processes: exactly one wins each round.
        path = f"/v1/instances/{instances[0]['id']}"
        for round_ in range(3):
            version = a.get(path).json()["version"]
            if_match = {"If-Match": str(version)}
            answers = both(
                [
                    lambda c=c, body={"memory": f"Ronda {round_} por {n}"}, h=if_match: c.patch(
                        path, json=body, headers=h
                    )
                    for n, c in enumerate(apis)
                ]
            )
            assert sorted(r.status_code for r in answers) == [200, 409], [r.text for r in answers]
            (winner,) = [r.json() for r in answers if r.status_code == 200]
            written += 1
            for client in apis:
                assert client.get(path).json() == winner

        # Memories and imported messages, spread over both processes.
        added = both(
            [
                lambda n=n, i=i, text=text: apis[n % 2].post(
                    f"/v1/instances/{i['id']}/memories", json={"text": text}
                )
                for i in instances
                for n, text in enumerate(MEMORIES)
            ]
        )
        memories = [_created(r) for r in added]
        written += len(memories)
        turns = [{"role": "user", "content": "¿Y el río?"}, {"role": "assistant", "content": "Sí"}]
        imported = both(
            [
                lambda c=c, i=i: c.post(
                    f"/v1/instances/{i['id']}/messages", json={"messages": turns}
                )
                for i in instances
                for c in apis
            ]
        )
        message_ids = [m for r in imported for m in _created(r)["ids"]]
        written += len(message_ids)

        for client in apis:
            for instance in instances:
                base = f"/v1/instances/{instance['id']}"
                ours = [m for m in memories if m["instance_id"] == instance["id"]]
                listed = client.get(f"{base}/memories", params={"limit": 500})
                assert sorted(m["id"] for m in listed.json()["items"]) == sorted(
                    m["id"] for m in ours
                )
                for memory in ours:
                    found = client.get(
                        f"{base}/memories/search",
                        params={"q": memory["text"], "consistent": "true", "k": 3},
                    )
                    assert found.status_code == 200, found.text
                    assert found.json()["results"][0]["id"] == memory["id"]
                messages = client.get(f"{base}/messages", params={"limit": 500})
                assert len(messages.json()["items"]) == 2 * len(turns)
            seen_messages = {
                m["id"]
                for i in instances
                for m in client.get(
                    f"/v1/instances/{i['id']}/messages", params={"limit": 500}
                ).json()["items"]
            }
            assert seen_messages == {str(m) for m in message_ids}

        # Nothing lost, nothing twice: the log holds exactly what the acknowledged writes made.
        logged = app.recorder.select_notifications(start=1, limit=10 * written)
        assert len(logged) == written
        assert len({(n.originator_id, n.originator_version) for n in logged}) == written
    finally:
        pool.shutdown()
        app.close()


def _open_services(settings: Settings, ready: Any, outcome: Any) -> None:
    ready.wait()
    try:
        build_services(settings).close()
        outcome.put("opened")
    except Exception as error:
        outcome.put(repr(error))


@pytest.mark.slow
@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
def test_processes_started_together_on_a_new_database_all_open(settings: Settings) -> None:
    """docker compose starts the API and the worker at once on an empty database: each creates
    the tables it needs, and none may crash on the others doing the same."""
    spawn = multiprocessing.get_context("spawn")
    ready, outcome = spawn.Barrier(3), spawn.Queue()
    processes = [
        spawn.Process(target=_open_services, args=(settings, ready, outcome)) for _ in range(3)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [outcome.get(timeout=5) for _ in processes] == ["opened"] * 3
