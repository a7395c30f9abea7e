"""A chat turn sees everything the caller wrote before it (issue 14, #1), and its prompt holds
each thing once (#9): the prompts are read where the model meets them, at the local
OpenAI-compatible test server."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import SecretStr

from alma.settings import Settings
from tests.cli import running
from tests.conftest import Api, make_character, make_instance, running_api
from tests.openai_stub import OpenAIStub, Reply
from tests.test_chroma_server import chroma_url

__all__ = ["chroma_url"]  # a fixture: pytest finds it here

ROUNDS = 50
# Every earlier turn stays in the prompt's history, so none of them (all asked alike) competes
# with the new memory as a recollection: what is checked is that the turn sees the memory.
SEES_WRITES = {"chat_memory_wait_s": 30.0, "chat_history_turns": 2 * ROUNDS}
ANIMALS = [
    "dog",
    "cat",
    "parrot",
    "goat",
    "donkey",
    "horse",
    "cow",
    "rabbit",
    "hen",
    "duck",
    "goose",
    "turtle",
    "lizard",
    "frog",
    "owl",
    "crow",
    "canary",
    "pigeon",
    "mule",
    "sheep",
    "pig",
    "ferret",
    "hamster",
    "mouse",
    "bee",
    "snail",
    "hedgehog",
    "fox",
    "badger",
    "squirrel",
    "heron",
    "stork",
    "swan",
    "peacock",
    "turkey",
    "quail",
    "llama",
    "alpaca",
    "camel",
    "pony",
    "lamb",
    "calf",
    "kid",
    "foal",
    "piglet",
    "gecko",
    "iguana",
    "toad",
    "newt",
    "salmon",
    "trout",
]
# A recollection's line in the system message: "- [6 December 2026] The user said: text", or
# with the speaker's name ("Rosa: text", the character's replies).
_RECOLLECTION = re.compile(r"^- \[\d{1,2} [A-Z][a-z]+ \d{4}\] (The user said: |You said: |Rosa: )?")


def _stubbed(settings: Settings, stub: OpenAIStub, **more: Any) -> Settings:
    return settings.model_copy(
        update={
            "openai_api_key": SecretStr("sk-test-alma-0123456789"),
            "openai_base_url": stub.base_url,
            "model_timeout_s": 10.0,
            "model_max_retries": 1,
            **more,
        }
    )


def _sdk(api: Api) -> openai.OpenAI:
    key = api.acme["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(
        api_key=key, base_url="http://testserver/v1", http_client=api.client, max_retries=0
    )


def _instance(api: Api) -> str:
    character = make_character(api, name="Doña Rosa", description="Curandera de la sierra")
    return str(make_instance(api, character["id"], name="Rosa")["id"])


def _chat(api: Api, instance_id: str, message: str, way: int) -> dict[str, Any]:
    """One turn, by one of the ways in: native, native streamed, OpenAI-compatible (SDK).
    Returns alma's part of the answer."""
    if way == 0:
        response = api.client.post(
            f"/v1/instances/{instance_id}/chat", json={"message": message}, headers=api.acme
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body
    if way == 1:
        with api.client.stream(
            "POST",
            f"/v1/instances/{instance_id}/chat",
            json={"message": message, "stream": True},
            headers=api.acme,
        ) as response:
            assert response.status_code == 200
            lines = list(response.iter_lines())
        turn = lines[lines.index("event: turn") + 1]
        return dict(json.loads(turn.removeprefix("data: ")))
    completion = _sdk(api).chat.completions.create(
        model=instance_id, messages=[{"role": "user", "content": message}]
    )
    extra = completion.model_extra or {}
    return dict(extra["alma"])


def _memory_then_chat_each_time(api: Api, stub: OpenAIStub) -> None:
    """A memory added and a chat sent right after, ROUNDS times: every prompt holds that memory
    and the turn before it."""
    instance_id = _instance(api)
    previous: tuple[str, str] | None = None
    for n in range(ROUNDS):
        name = f"Kiro{n}x"
        memory = f"Rosa's {ANIMALS[n]} is called {name}."
        added = api.client.post(
            f"/v1/instances/{instance_id}/memories",
            json={"text": memory, "importance": 1.0},
            headers=api.acme,
        )
        assert added.status_code == 201, added.text
        message, reply = f"Tell me about {name}, please.", f"Reply number {n}: {name} is lovely."
        stub.script(Reply(reply))
        answer = _chat(api, instance_id, message, n % 3)
        assert answer["memories_behind"] is False
        messages = stub.requests[-1]["messages"]
        recalled = messages[-2]  # what is remembered: just before the user's message
        assert recalled["role"] == "system"
        assert memory in recalled["content"], f"round {n}: the memory is not in the prompt"
        if previous is not None:
            said, replied = previous
            assert messages[-5:-3] == [
                {"role": "user", "content": said},
                {"role": "assistant", "content": replied},
            ], f"round {n}: the turn before is not in the prompt"
        previous = (message, reply)


def test_a_chat_right_after_a_write_sees_it_with_projections_in_process(
    settings: Settings, openai_stub: OpenAIStub
) -> None:
    stubbed = _stubbed(settings, openai_stub, **SEES_WRITES)
    with running_api(stubbed) as api:
        _memory_then_chat_each_time(api, openai_stub)


@pytest.fixture
def worker_api(
    settings: Settings, openai_stub: OpenAIStub, chroma_url: str, tmp_path: Path
) -> Iterator[Api]:
    """alma without projections, beside an `alma worker` process that follows the log."""
    shared = settings.model_copy(update={"chroma_url": chroma_url})
    stubbed = _stubbed(shared, openai_stub, run_projections=False, **SEES_WRITES)
    with running_api(stubbed) as api:
        env = {"ALMA_CHROMA_URL": chroma_url, "ALMA_MEMORY_FORMATION": "false"}
        with running(shared, ["worker"], tmp_path / "worker.log", env):
            # The worker has loaded its embedding model and follows the log.
            head = api.services.app.recorder.max_notification_id() or 0
            assert api.services.memory.wait(head, 300), (tmp_path / "worker.log").read_text()
            yield api


@pytest.mark.slow
def test_a_chat_right_after_a_write_sees_it_with_a_separate_worker(
    worker_api: Api, openai_stub: OpenAIStub
) -> None:
    _memory_then_chat_each_time(worker_api, openai_stub)


def test_past_the_wait_a_turn_answers_and_says_its_memories_are_behind(
    settings: Settings, openai_stub: OpenAIStub
) -> None:
    """No projection follows the log here: the index never reaches the new memory."""
    stubbed = _stubbed(settings, openai_stub, run_projections=False, chat_memory_wait_s=0.2)
    with running_api(stubbed) as api:
        instance_id = _instance(api)
        api.client.post(
            f"/v1/instances/{instance_id}/memories",
            json={"text": "Rosa's parrot is called Paco."},
            headers=api.acme,
        )
        answer = _chat(api, instance_id, "Tell me about Paco.", 0)
        assert answer["memories_behind"] is True
        assert answer["reply"] == "Hello from the stub."
        completion = api.client.post(
            "/v1/chat/completions",
            json={"model": instance_id, "messages": [{"role": "user", "content": "Paco?"}]},
            headers=api.acme,
        )
        assert completion.headers["X-Alma-Memories-Behind"] == "true"
        assert completion.json()["alma"]["memories_behind"] is True
        prompt = openai_stub.requests[-1]["messages"]
        assert not any("parrot is called Paco" in m["content"] for m in prompt)


def test_a_turn_does_not_wait_for_the_index_to_hold_the_turns_its_prompt_already_holds(
    settings: Settings, openai_stub: OpenAIStub
) -> None:
    """No projection follows the log after the instance is indexed: the turns recorded since are
    in the next prompt as recent turns, so the next turn is not behind; a memory added is."""
    stubbed = _stubbed(settings, openai_stub, run_projections=False, chat_memory_wait_s=0.2)
    with running_api(stubbed) as api:
        instance_id = _instance(api)
        api.services.memory.catch_up()
        for n in range(3):
            openai_stub.script(Reply(f"Reply {n}: the sierra is quiet tonight."))
            answer = _chat(api, instance_id, f"¿Qué tal la sierra, {n}?", n % 3)
            assert answer["memories_behind"] is False, f"turn {n} waited for its own turns"
        assert {"role": "user", "content": "¿Qué tal la sierra, 1?"} in openai_stub.requests[-1][
            "messages"
        ]
        api.client.post(
            f"/v1/instances/{instance_id}/memories",
            json={"text": "Rosa's parrot is called Paco."},
            headers=api.acme,
        )
        assert _chat(api, instance_id, "Tell me about Paco.", 0)["memories_behind"] is True


PARROT = "Rosa's grey parrot Paco whistles the tango La Cumparsita every morning at seven."
QUESTIONS = [
    "Do you still have the parrot?",
    "What colour are the parrot's feathers?",
    "Does the parrot talk much?",
    "What songs does the parrot know?",
    "When does the parrot sing?",
    "Who taught the parrot to whistle?",
    "Is the parrot old now?",
    "What does the parrot eat?",
    "Where does the parrot sleep at night?",
    "Has the parrot ever escaped?",
    "Does the parrot like visitors?",
    "What is the parrot's favourite tune?",
    "Does the parrot bite?",
    "How loud is the parrot in the morning?",
    "Would the parrot whistle for me?",
    "Does the parrot get along with the cat?",
    "What do the neighbours say about the parrot?",
    "Does the parrot dance when it whistles?",
    "Will you ever teach the parrot a new song?",
    "Tell me one last thing about your parrot.",
]


def _lines(messages: list[dict[str, str]]) -> list[str]:
    """Every line the prompt holds, a recollection's as what it recalls, spaces evened."""
    found = []
    for message in messages:
        for text in message["content"].split("\n"):
            text = " ".join(_RECOLLECTION.sub("", text.strip()).split())
            if text:
                found.append(text)
    return found


def test_a_conversation_on_one_topic_keeps_its_memory_once_and_repeats_no_line(
    settings: Settings, openai_stub: OpenAIStub
) -> None:
    """Twenty turns about a parrot through the openai SDK, resending the history as every
    OpenAI client does: each prompt holds the parrot's memory exactly once and no line twice."""
    with running_api(_stubbed(settings, openai_stub)) as api:
        instance_id = _instance(api)
        added = api.client.post(
            f"/v1/instances/{instance_id}/memories", json={"text": PARROT}, headers=api.acme
        )
        assert added.status_code == 201, added.text
        # Indexed before the first turn: what is checked here is what the prompt keeps.
        assert api.services.memory.wait(api.written(), 60)
        sdk = _sdk(api)
        history: list[dict[str, str]] = []
        for n, question in enumerate(QUESTIONS):
            openai_stub.script(Reply(f"Turn {n}: the parrot, my dear, is a story of its own."))
            history.append({"role": "user", "content": question})
            completion = sdk.chat.completions.create(model=instance_id, messages=history)
            reply = completion.choices[0].message.content or ""
            history.append({"role": "assistant", "content": reply})
            prompt = openai_stub.requests[-1]["messages"]
            whole = "\n".join(m["content"] for m in prompt)
            assert whole.count(PARROT) == 1, f"turn {n}: the memory is in the prompt {whole!r}"
            twice = [line for line, times in Counter(_lines(prompt)).items() if times > 1]
            assert twice == [], f"turn {n}: lines in the prompt twice"
        recorded = api.client.get(
            f"/v1/instances/{instance_id}/messages", params={"limit": 100}, headers=api.acme
        )
        assert len(recorded.json()["items"]) == 2 * len(QUESTIONS)


def test_a_text_said_several_times_comes_back_as_one_recollection(
    settings: Settings, openai_stub: OpenAIStub
) -> None:
    """The same words as a memory and twice in the past conversation: recalled once."""
    with running_api(_stubbed(settings, openai_stub, chat_history_turns=0)) as api:
        instance_id = _instance(api)
        said = {"role": "user", "content": PARROT, "timestamp": "2025-03-01T10:00:00Z"}
        imported = api.client.post(
            f"/v1/instances/{instance_id}/messages",
            json={"messages": [said, {**said, "timestamp": "2025-04-01T10:00:00Z"}]},
            headers=api.acme,
        )
        assert imported.status_code == 201, imported.text
        api.client.post(
            f"/v1/instances/{instance_id}/memories", json={"text": PARROT}, headers=api.acme
        )
        assert api.services.memory.wait(api.written(), 60)
        answer = _chat(api, instance_id, "Which tango does Paco whistle?", 0)
        prompt = openai_stub.requests[-1]["messages"]
        assert len(answer["memories_used"]) >= 1
        assert Counter(_lines(prompt))[PARROT] == 1
