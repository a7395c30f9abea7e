"""The offline model: the real SmolLM2-135M through xllamacpp, reached by the OpenAI client."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from alma.llm import tokens
from alma.llm.client import Completion, ModelClient, OpenAIModel
from alma.llm.local import (
    TOKENIZER_MARGIN,
    LocalModelServer,
    local_model_client,
    local_model_name,
    packaged_model_path,
)

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


def test_a_missing_or_foreign_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        LocalModelServer(str(tmp_path / "nothing.gguf"))
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"<html>not a model</html>")
    with pytest.raises(ValueError, match="not a GGUF"):
        LocalModelServer(str(not_gguf))


@pytest.fixture(scope="module")
def local() -> Iterator[OpenAIModel]:
    with local_model_client() as client:
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
    with local_model_client() as again:
        assert again.base_url == local.base_url


@pytest.mark.slow
def test_only_alma_may_use_the_port_and_close_stops_it() -> None:
    server = LocalModelServer(context=512)
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
