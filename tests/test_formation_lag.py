"""Memory formation under load: one instance's slow window holds back no other instance's
memories, the lag reported counts the windows still to form, and a model that answers 429
slows formation down without losing a window."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from alma.settings import Settings
from tests.conftest import Api, running_api
from tests.openai_stub import Behaviour, Fail, OpenAIStub, Reply
from tests.test_formation import FACTS, _forming, _instance, _memories, _requests, _settle
from tests.test_observability import _metric

SLOW = "tortuga"


class SlowForOne(OpenAIStub):
    """Chats at once; the memory process's window that mentions `SLOW` only once `release` is
    set (`asked` is set when it arrives), every other window at once."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = threading.Event()
        self.release = threading.Event()

    def answer(self, body: dict[str, Any], headers: dict[str, str]) -> Behaviour:
        super().answer(body, headers)
        if FACTS not in str(body["messages"][0]["content"]):
            return Reply("Mm-hm.")
        if SLOW in str(body["messages"]):
            self.asked.set()
            self.release.wait(60)
            return Reply(json.dumps([{"op": "add", "text": "Tiene una tortuga"}]))
        return Reply(json.dumps([{"op": "add", "text": "Toca el violonchelo"}]))


def _chat(api: Api, instance: str, message: str) -> None:
    response = api.client.post(
        f"/v1/instances/{instance}/chat", json={"message": message}, headers=api.acme
    )
    assert response.status_code == 200, response.text


def _until(done: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.1)


def _formation_lag(api: Api) -> tuple[int, float]:
    health = api.client.get("/health").json()
    return health["projections"]["memory-formation"], health["projection_lag_seconds"][
        "memory-formation"
    ]


def test_a_slow_window_holds_back_no_other_instances_memories_and_shows_in_the_lag(
    settings: Settings,
) -> None:
    with (
        SlowForOne() as stub,
        running_api(_forming(settings, stub, model_timeout_s=120.0)) as api,
    ):
        slow, quick = _instance(api, "Rosa"), _instance(api, "Lola")
        _chat(api, slow, f"Tengo una {SLOW} que se llama Manuela")
        assert stub.asked.wait(60)  # its window is with the model, which does not answer yet
        _chat(api, quick, "Toco el violonchelo")

        _until(lambda: bool(_memories(api, quick)))
        assert [m["text"] for m in _memories(api, quick)] == ["Toca el violonchelo"]
        assert _memories(api, slow) == []
        events, seconds = _formation_lag(api)
        assert events > 0 and seconds > 0  # the slow window is still to form: no lag 0
        assert api.services.formation is not None
        assert not api.services.formation.wait(api.written(), 0.5)

        stub.release.set()
        _settle(api)
        assert [m["text"] for m in _memories(api, slow)] == ["Tiene una tortuga"]
        _until(lambda: _formation_lag(api) == (0, 0.0))


def test_a_model_answering_429_slows_formation_and_drops_no_window(
    settings: Settings, openai_stub: OpenAIStub
) -> None:
    concurrency = 4
    forming = _forming(
        settings, openai_stub, model_max_retries=0, formation_concurrency=concurrency
    )
    with running_api(forming) as api:
        instance = _instance(api)
        limited = _limited(api)
        busy = Fail(429, "Rate limit reached", retry_after="1")
        openai_stub.script(
            Reply("Mm-hm."), busy, busy, Reply(json.dumps([{"op": "add", "text": "Tiene perro"}]))
        )
        _chat(api, instance, "Tengo un perro")
        _settle(api)
        openai_stub.script(Reply("Mm-hm."), Reply(json.dumps([{"op": "add", "text": "En Triana"}])))
        _chat(api, instance, "Vivo en Triana")
        _settle(api)

        assert sorted(m["text"] for m in _memories(api, instance)) == ["En Triana", "Tiene perro"]
        assert len(_requests(openai_stub, FACTS)) == 4  # the limited window, asked 3 times
        assert _limited(api) == limited + 2
        text = api.client.get("/metrics").text
        assert _metric(text, "alma_memory_formation_allowed_in_flight") < concurrency


def _limited(api: Api) -> float:
    text = api.client.get("/metrics").text
    try:
        return _metric(text, "alma_memory_formation_failed_windows_total", reason="rate_limited")
    except AssertionError:
        return 0.0  # not counted yet in this process
