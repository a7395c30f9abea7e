"""Retries are safe. Every route that writes takes an `Idempotency-Key`: a repeat of a request
gets the first answer and writes nothing; the same key with another request is refused, and so is
a repeat while the first is under way; keys are per tenant, outlive a restart and expire. A write
whose commit reached PostgreSQL but whose answer a cut connection (or a server restart) lost is
answered as the success it was, and stored once: the faults are real, made by a TCP proxy
between alma and PostgreSQL (tests/pg_proxy.py) and by restarting a server of the test's own.
"""

from __future__ import annotations

import contextvars
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from alma.api.idempotency import fingerprint
from alma.domain import Actor, Alma
from alma.settings import Settings
from alma.stores.idempotency import CLAIM, Claim, ClaimLost, Found
from tests.conftest import (
    Api,
    PostgresServer,
    make_character,
    make_instance,
    running_api,
    stubbed_model,
)
from tests.openai_stub import Fail, OpenAIStub, Reply
from tests.pg_proxy import PostgresProxy
from tests.test_faults import ThrowawayPostgres, _until, postgres

__all__ = ["postgres"]  # a fixture: pytest finds it here

# POST routes that write nothing (speech, transcripts, vectors): no key to take.
WRITE_NOTHING = {
    "/v1/audio/speech",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/embeddings",
}


def _twice(api: Api, path: str, key: str, **request: Any) -> httpx.Response:
    """The request, then a repeat with the same key: the repeat is given the first answer, byte
    for byte, says it is a replay, and writes nothing."""
    headers = {**api.acme, "Idempotency-Key": key}
    first = api.client.post(path, headers=headers, **request)
    assert first.status_code in (200, 201), (path, first.text)
    assert "idempotent-replayed" not in first.headers
    written = _stored(api.services.app)
    repeat = api.client.post(path, headers=headers, **request)
    assert (repeat.status_code, repeat.content) == (first.status_code, first.content), path
    assert repeat.headers["content-type"] == first.headers["content-type"]
    assert repeat.headers["idempotent-replayed"] == "true"
    assert _stored(api.services.app) == written, f"the repeat of {path} wrote"
    return first


def _stored(app: Alma) -> int:
    """How many events the store holds (not the last position: PostgreSQL's sequence leaves
    gaps where an insert was refused)."""
    return len(app.recorder.select_notifications(start=1, limit=1_000_000))


def _memories(app: Alma, instance_id: str) -> Counter[str]:
    """How many times each memory text was added to the instance, read from the events."""
    added: Counter[str] = Counter()
    for notification in app.recorder.select_notifications(start=1, limit=1_000_000):
        if not notification.topic.endswith("Memory.Added"):
            continue
        event: Any = app.mapper.to_domain_event(notification)
        if str(event.instance_id) == instance_id:
            added[event.text] += 1
    return added


def test_every_route_that_writes_takes_an_idempotency_key(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            takes = any(p["name"] == "Idempotency-Key" for p in operation.get("parameters", []))
            writes = method == "post" and path not in WRITE_NOTHING
            assert takes == writes, (method, path)


def test_a_repeat_gets_the_first_answer_and_writes_nothing_on_every_route_that_creates(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    api = chat_api
    character = _twice(
        api, "/v1/characters", "c", json={"name": "Doña Rosa", "description": "Curandera"}
    ).json()
    card = {"spec": "chara_card_v2", "data": {"name": "Sera", "first_mes": "Bienvenida."}}
    carded = _twice(api, "/v1/characters/import", "card", content=json.dumps(card)).json()
    # An upload's retry comes with a new multipart boundary: the same form is still the same.
    upload = {"file": ("sera.json", json.dumps(card).encode(), "application/json")}
    _twice(api, "/v1/characters/import", "card-file", files=upload)
    instance = _twice(
        api, f"/v1/characters/{character['id']}/instances", "i", json={"name": "Rosa"}
    ).json()
    greeted = _twice(
        api, f"/v1/characters/{carded['id']}/instances", "i2", json={"name": "Sera"}
    ).json()
    _twice(api, f"/v1/instances/{greeted['id']}/greeting", "g", json={})
    at = f"/v1/instances/{instance['id']}"
    _twice(api, f"{at}/memories", "m", json={"text": "Su hermana Lucía es enfermera"})
    _twice(api, f"{at}/messages", "msg", json={"messages": [{"role": "user", "content": "Hola"}]})
    chat_file = b"\n".join(
        json.dumps(line).encode()
        for line in (
            {"user_name": "Ana", "character_name": "Rosa"},
            {"name": "Ana", "is_user": True, "mes": "Buenas", "send_date": "2024-05-01T10:00:00Z"},
        )
    )
    _twice(api, f"{at}/messages", "st", files={"file": ("chat.jsonl", chat_file, "text/plain")})
    book = _twice(api, "/v1/lorebooks", "l", json={"name": "Sierra"}).json()
    entry = {"keys": ["mezcal"], "content": "El mezcal de la sierra."}
    _twice(api, f"/v1/lorebooks/{book['id']}/entries", "e", json=entry)
    world = {"entries": {"0": {"uid": 0, "key": ["río"], "content": "El río crece en mayo."}}}
    _twice(api, "/v1/lorebooks/import", "li", json=world)
    _twice(api, f"{at}/fork", "f", json={"name": "Rosa bis"})

    asked = len(openai_stub.requests)
    _twice(api, f"{at}/chat", "t1", json={"message": "¿Te acuerdas de Lucía?"})
    _twice(api, f"{at}/chat", "t2", json={"message": "¿Y de su hija?", "stream": True})
    model = instance["id"]
    turn = {"model": model, "messages": [{"role": "user", "content": "¿Qué tal?"}]}
    _twice(api, "/v1/chat/completions", "o1", json=turn)
    _twice(api, "/v1/chat/completions", "o2", json={**turn, "stream": True})
    _twice(api, "/v1/completions", "o3", json={"model": model, "prompt": "Cuéntame"})
    _twice(api, "/v1/responses", "o4", json={"model": model, "input": "¿Y mañana?"})
    assert len(openai_stub.requests) == asked + 6  # one model call per turn, none per repeat


def test_the_same_key_with_another_body_or_route_is_refused_and_writes_nothing(api: Api) -> None:
    headers = {**api.acme, "Idempotency-Key": "alta-de-rosa"}
    first = api.client.post(
        "/v1/characters", json={"name": "Rosa", "description": ""}, headers=headers
    )
    assert first.status_code == 201, first.text
    written = _stored(api.services.app)
    for path, body in (
        ("/v1/characters", {"name": "Rosa", "description": "otra"}),
        ("/v1/lorebooks", {"name": "Rosa"}),
        (f"/v1/characters/{first.json()['id']}/instances", {"name": "Rosa"}),
    ):
        refused = api.client.post(path, json=body, headers=headers)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"] == "idempotency_key_reused"
    card = {"spec": "chara_card_v2", "data": {"name": "Sera"}}
    upload = {**api.acme, "Idempotency-Key": "carta"}
    sera = ("sera.json", json.dumps(card).encode(), "application/json")
    other = ("sera.json", json.dumps({**card, "data": {"name": "Otra"}}).encode(), "text/plain")
    assert api.client.post("/v1/characters/import", files={"file": sera}, headers=upload).is_success
    written = _stored(api.services.app)
    refused = api.client.post("/v1/characters/import", files={"file": other}, headers=upload)
    assert refused.json()["error"]["code"] == "idempotency_key_reused"
    assert _stored(api.services.app) == written
    again = api.client.post(
        "/v1/characters", json={"name": "Rosa", "description": ""}, headers=headers
    )
    assert again.json() == first.json()  # the first answer is still given to its repeats


def test_a_malformed_key_is_refused_before_anything_is_done(api: Api) -> None:
    written = _stored(api.services.app)
    for key in (b"x" * 256, "clave\u00f1".encode()):
        response = api.client.post(
            "/v1/characters",
            json={"name": "Rosa", "description": ""},
            headers={**api.acme, "Idempotency-Key": key},  # type: ignore[dict-item]
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["details"][0]["loc"] == ["header", "Idempotency-Key"]
    assert _stored(api.services.app) == written


def test_a_repeat_while_the_first_is_under_way_gets_409_then_the_first_answer(
    settings: Settings, openai_stub: OpenAIStub
) -> None:
    with running_api(stubbed_model(settings, openai_stub, model_timeout_s=30.0)) as api:
        _repeat_while_under_way(api, openai_stub)


def _repeat_while_under_way(api: Api, openai_stub: OpenAIStub) -> None:
    instance = make_instance(api, make_character(api)["id"])
    path = f"/v1/instances/{instance['id']}/chat"
    headers = {**api.acme, "Idempotency-Key": "turno-1"}
    body = {"message": "¿Sigues ahí?"}
    openai_stub.script(Reply("Aquí sigo.", delay_s=3))
    asked = len(openai_stub.requests)
    answers: list[httpx.Response] = []
    first = threading.Thread(
        target=lambda: answers.append(api.client.post(path, json=body, headers=headers))
    )
    first.start()
    _until(lambda: len(openai_stub.requests) > asked, "the first turn to reach the model", 30)
    written = _stored(api.services.app)

    repeat = api.client.post(path, json=body, headers=headers)

    assert repeat.status_code == 409, repeat.text
    assert repeat.json()["error"]["code"] == "idempotency_key_in_use"
    assert repeat.headers["retry-after"] == "1"
    assert _stored(api.services.app) == written
    first.join(timeout=60)
    (answer,) = answers
    assert answer.status_code == 200 and answer.json()["reply"] == "Aquí sigo."
    later = api.client.post(path, json=body, headers=headers)
    assert later.content == answer.content and later.headers["idempotent-replayed"] == "true"
    assert len(openai_stub.requests) == asked + 1


def test_a_key_outlives_a_restart_of_alma(settings: Settings) -> None:
    request = {"json": {"name": "Rosa", "description": "Curandera"}}
    with running_api(settings) as api:
        first = api.client.post(
            "/v1/characters", headers={**api.acme, "Idempotency-Key": "k"}, **request
        )
        assert first.status_code == 201, first.text
    with running_api(settings) as api:
        written = _stored(api.services.app)
        repeat = api.client.post(
            "/v1/characters", headers={**api.acme, "Idempotency-Key": "k"}, **request
        )
        assert repeat.content == first.content and repeat.headers["idempotent-replayed"] == "true"
        assert _stored(api.services.app) == written


def test_a_tenants_keys_are_its_own(api: Api) -> None:
    body = {"name": "Rosa", "description": ""}
    acme = api.client.post(
        "/v1/characters", json=body, headers={**api.acme, "Idempotency-Key": "k"}
    )
    rival = api.client.post(
        "/v1/characters", json=body, headers={**api.rival, "Idempotency-Key": "k"}
    )
    assert acme.status_code == rival.status_code == 201
    assert "idempotent-replayed" not in rival.headers
    assert rival.json()["id"] != acme.json()["id"]  # carried out for the rival, not replayed
    other = api.client.get(f"/v1/characters/{acme.json()['id']}", headers=api.rival)
    assert other.status_code == 404


def test_a_first_answer_is_kept_for_the_stated_time(settings: Settings) -> None:
    with running_api(settings.model_copy(update={"idempotency_ttl_s": 1})) as api:
        headers = {**api.acme, "Idempotency-Key": "k"}
        body = {"name": "Rosa", "description": ""}
        first = api.client.post("/v1/characters", json=body, headers=headers)
        assert api.client.post("/v1/characters", json=body, headers=headers).json() == first.json()
        time.sleep(1.2)
        after = api.client.post("/v1/characters", json=body, headers=headers)
        assert after.status_code == 201 and "idempotent-replayed" not in after.headers
        assert after.json()["id"] != first.json()["id"]


def test_an_error_that_wrote_nothing_is_not_kept(api: Api) -> None:
    """A refusal is no answer to keep: once the cause is gone, the same request with the same
    key is carried out."""
    character = make_character(api)
    taken = make_instance(api, character["id"], name="Rosa")
    path = f"/v1/characters/{character['id']}/instances"
    headers = {**api.acme, "Idempotency-Key": "k"}
    refused = api.client.post(path, json={"name": "Rosa"}, headers=headers)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "name_taken"
    renamed = api.client.patch(
        f"/v1/instances/{taken['id']}", json={"name": "Rosita"}, headers=api.acme
    )
    assert renamed.status_code == 200, renamed.text
    created = api.client.post(path, json={"name": "Rosa"}, headers=headers)
    assert created.status_code == 201 and "idempotent-replayed" not in created.headers
    # A voice turn's form is read before the key is looked at: a refused one is refused again.
    voice = {**api.acme, "Idempotency-Key": "voz"}
    for _ in range(2):
        refused = api.client.post(
            f"/v1/instances/{created.json()['id']}/voice",
            files={"file": ("hola.wav", b"no es audio", "audio/wav")},
            headers=voice,
        )
        assert refused.status_code == 415 and "idempotent-replayed" not in refused.headers


def test_an_answer_given_after_a_write_is_kept_even_when_it_is_an_error(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    """The turn recorded the user's message, then the model failed: that 502 is the turn's
    answer, and a repeat is given it rather than a second turn."""
    api = chat_api
    instance = make_instance(api, make_character(api)["id"])
    openai_stub.script(Fail(500), Fail(500))  # the first try and its one retry
    asked = len(openai_stub.requests)
    path = f"/v1/instances/{instance['id']}/chat"
    headers = {**api.acme, "Idempotency-Key": "turno-fallido"}
    failed = api.client.post(path, json={"message": "¿Me oyes?"}, headers=headers)
    assert failed.status_code == 502 and failed.json()["error"]["code"] == "model_unavailable"
    written = _stored(api.services.app)
    repeat = api.client.post(path, json={"message": "¿Me oyes?"}, headers=headers)
    assert (repeat.status_code, repeat.content) == (502, failed.content)
    assert repeat.headers["idempotent-replayed"] == "true"
    assert _stored(api.services.app) == written and len(openai_stub.requests) == asked + 2


def _as(claim: Claim, write: Callable[[], object]) -> None:
    """`write`, done by the request that holds `claim` (as its own route would)."""

    def held() -> None:
        CLAIM.set(claim)
        write()

    contextvars.copy_context().run(held)


def test_a_key_whose_request_died_before_writing_is_taken_over_and_that_request_is_fenced(
    settings: Settings, actor: Actor
) -> None:
    with running_api(settings.model_copy(update={"idempotency_lease_s": 0.5})) as api:
        body = json.dumps({"name": "Rosa", "description": ""}).encode()
        request = fingerprint("POST", "/v1/characters", "", body)
        dead = api.services.idempotency.claim("acme", "k", request)  # then its process died
        assert dead.found is Found.NEW and dead.claim is not None
        headers = {**api.acme, "Idempotency-Key": "k", "Content-Type": "application/json"}

        soon = api.client.post("/v1/characters", content=body, headers=headers)
        assert soon.status_code == 409 and soon.json()["error"]["code"] == "idempotency_key_in_use"
        time.sleep(0.6)
        taken = api.client.post("/v1/characters", content=body, headers=headers)
        assert taken.status_code == 201, taken.text

        # Had the first request lived on, it could no longer write: its write is refused whole.
        written = _stored(api.services.app)
        app = api.services.app
        with pytest.raises(ClaimLost):
            _as(dead.claim, lambda: app.create_character("acme", {"name": "Otra"}, actor))
        assert _stored(api.services.app) == written
        assert (
            api.client.post("/v1/characters", content=body, headers=headers).json() == taken.json()
        )


def test_a_key_whose_request_wrote_and_lost_its_answer_is_not_carried_out_again(
    settings: Settings, actor: Actor
) -> None:
    with running_api(settings.model_copy(update={"idempotency_lease_s": 0.5})) as api:
        body = json.dumps({"name": "Rosa", "description": ""}).encode()
        lost = api.services.idempotency.claim(
            "acme", "k", fingerprint("POST", "/v1/characters", "", body)
        )
        assert lost.claim is not None
        app = api.services.app
        _as(lost.claim, lambda: app.create_character("acme", {"name": "Rosa"}, actor))
        written = _stored(app)  # ... and its process died before it answered
        headers = {**api.acme, "Idempotency-Key": "k", "Content-Type": "application/json"}
        time.sleep(0.6)
        repeat = api.client.post("/v1/characters", content=body, headers=headers)
        assert repeat.status_code == 409, repeat.text
        assert repeat.json()["error"]["code"] == "idempotency_key_unanswered"
        assert _stored(app) == written


# PostgreSQL: commits whose answer never arrives.


@pytest.fixture
def proxied(
    postgres_server: PostgresServer, tmp_path: Path
) -> Iterator[tuple[PostgresProxy, Settings]]:
    """The machine's PostgreSQL behind a proxy of the test's own, in a schema of its own."""
    proxy = PostgresProxy(postgres_server.host, postgres_server.port)
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with postgres_server.connect() as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=tmp_path / "data",
        database_url=proxy.url(schema, postgres_server.user, postgres_server.dbname),
        memory_formation=False,
        read_model_wait_s=30.0,
        consistency_wait_s=60.0,
        postgres_pool_size=4,
    )
    try:
        yield proxy, settings
    finally:
        proxy.stop()
        with postgres_server.connect() as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_a_write_whose_commit_answer_was_lost_is_answered_as_done_and_stored_once(
    proxied: tuple[PostgresProxy, Settings],
) -> None:
    proxy, settings = proxied
    with running_api(settings) as api:
        app = api.services.app

        def cut(path: str, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
            """The request, its commit's answer cut off on the way back to alma."""
            dropped, written = proxy.dropped, _stored(app)
            proxy.drop_commits(1)
            headers = {**api.acme, **({"Idempotency-Key": key} if key else {})}
            response = api.client.post(path, json=body, headers=headers)
            assert response.status_code == 201, (path, response.text)
            assert proxy.dropped == dropped + 1, f"{path}: no commit was cut"
            assert _stored(app) > written
            if key:  # and a repeat still gets that answer
                repeat = api.client.post(path, json=body, headers=headers)
                assert repeat.content == response.content
            result: dict[str, Any] = response.json()
            return result

        character = cut("/v1/characters", {"name": "Rosa", "description": ""})
        assert len(list(app.events.get(uuid.UUID(character["id"])))) == 1
        instance = cut(f"/v1/characters/{character['id']}/instances", {"name": "Rosa"}, "i")
        at = f"/v1/instances/{instance['id']}"
        cut(f"{at}/memories", {"text": "Su hermana Lucía es enfermera"}, "m")
        assert _memories(app, instance["id"]) == {"Su hermana Lucía es enfermera": 1}
        said = {
            "messages": [
                {"role": "user", "content": "Hola"},
                {"role": "assistant", "content": "¿Qué tal?"},
            ]
        }
        cut(f"{at}/messages", said)
        messages = [
            e
            for e in app.events.get(uuid.UUID(instance["id"]))
            if type(e).__name__ == "MessageRecorded"
        ]
        assert [m.content for m in messages] == ["Hola", "¿Qué tal?"]
        cut("/v1/lorebooks", {"name": "Sierra"}, "l")


@pytest.mark.slow
def test_a_commit_whose_answer_is_lost_while_postgres_stays_down_is_not_carried_out_twice(
    proxied: tuple[PostgresProxy, Settings],
) -> None:
    """The worst case: the commit went through, and the database stays out of reach past the
    store's retries, so alma cannot tell; it answers 503. The client retries with its key once
    the database is back: it is told the request was carried out (409 unanswered), and the
    memory is stored once."""
    proxy, settings = proxied
    fast = settings.model_copy(update={"postgres_connect_timeout_s": 1, "idempotency_lease_s": 1.0})
    with running_api(fast) as api:
        instance = make_instance(api, make_character(api)["id"])
        path = f"/v1/instances/{instance['id']}/memories"
        body = {"text": "Su hermana Lucía es enfermera"}
        headers = {**api.acme, "Idempotency-Key": "recuerdo-1"}
        proxy.drop_commits(1, before=proxy.refuse)

        lost = api.client.post(path, json=body, headers=headers)

        assert lost.status_code == 503, lost.text
        proxy.refuse(False)
        _until(lambda: _event_store(api) == "ok", "the database")
        retried = api.client.post(path, json=body, headers=headers)
        assert retried.status_code == 409, retried.text
        assert retried.json()["error"]["code"] == "idempotency_key_unanswered"
        assert _memories(api.services.app, instance["id"]) == {body["text"]: 1}


class Writer(threading.Thread):
    """Adds memories one after another, each with a key of its own, retrying each (with its key)
    while it is answered 503 (the database is down) or 409 `idempotency_key_in_use`: what a
    client that retries as it is told does. Any other answer ends the memory's requests."""

    RETRIED = frozenset(
        {"database_unavailable", "event_store_unavailable", "idempotency_key_in_use"}
    )

    def __init__(self, api: Api, instance_id: str, name: str) -> None:
        super().__init__(daemon=True)
        self.api = api
        self.path = f"/v1/instances/{instance_id}/memories"
        self.name = name
        self.acknowledged: list[str] = []  # texts answered 201
        self.answers: Counter[str] = Counter()  # every answer, as its status or error code
        self._stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self._stopping.is_set():
            n += 1
            text = f"{self.name} recuerda {n}"
            headers = {**self.api.acme, "Idempotency-Key": f"{self.name}-{n}"}
            while True:
                response = self.api.client.post(self.path, json={"text": text}, headers=headers)
                error = response.json().get("error") if response.status_code >= 400 else None
                self.answers[error["code"] if error else str(response.status_code)] += 1
                if response.status_code == 201:
                    self.acknowledged.append(text)
                if error is None or error["code"] not in self.RETRIED:
                    break
                time.sleep(0.2)

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=120)
        assert not self.is_alive(), f"{self.name} is still retrying: {self.answers}"


@pytest.mark.slow
def test_a_postgres_restart_in_the_middle_of_a_commit_under_four_writers(
    postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    """PostgreSQL restarted right after it committed a memory, before the commit's answer got
    back, while four clients write: the write is answered 201 (or, at worst, the client's retry
    is told it was carried out), every acknowledged memory is there, and none is stored twice."""
    proxy = PostgresProxy("127.0.0.1", postgres.port)
    postgres.create_schema("alma")
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=tmp_path / "data",
        database_url=proxy.url("alma", "postgres", "postgres"),
        memory_formation=False,
        read_model_wait_s=30.0,
        consistency_wait_s=60.0,
    )

    def restart() -> None:
        postgres.stop("fast")
        postgres.start()

    started = _started_at(postgres)

    try:
        with running_api(settings) as api:
            instance = make_instance(api, make_character(api)["id"])
            writers = [Writer(api, instance["id"], f"w{n}") for n in range(4)]
            for writer in writers:
                writer.start()

            def acknowledged() -> int:
                return sum(len(w.acknowledged) for w in writers)

            _until(lambda: acknowledged() >= 40, "writes before the restart")
            proxy.drop_commits(1, before=restart)
            _until(lambda: proxy.dropped == 1, "a commit to be cut by the restart")
            before = acknowledged()
            _until(lambda: acknowledged() > before + 40, "writes after it")
            for writer in writers:
                writer.stop()
            stored = _memories(api.services.app, instance["id"])
            done = [text for writer in writers for text in writer.acknowledged]
            assert set(done) <= set(stored), "an acknowledged memory is missing"
            assert max(stored.values()) == 1, [t for t, n in stored.items() if n > 1]
            answers = sum((w.answers for w in writers), Counter())
            assert set(answers) <= {"201", *Writer.RETRIED}, answers
            assert len(stored) == len(done)  # every memory stored was answered 201 at last
            assert _event_store(api) == "ok"
            assert _started_at(postgres) > started, "the server was not restarted"
    finally:
        proxy.stop()


def _event_store(api: Api) -> str:
    state: str = api.client.get("/health").json()["event_store"]
    return state


def _started_at(server: ThrowawayPostgres) -> datetime:
    dsn = f"host=127.0.0.1 port={server.port} user=postgres dbname=postgres"
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
    assert row is not None
    started: datetime = row[0]
    return started
