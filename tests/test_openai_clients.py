"""LangChain, litellm and llama-index against a real `alma serve`, as their users would call them
(tests/openai_clients.py, run in the clients' own environment: ALMA_OPENAI_CLIENTS_PYTHON), with
the local stub server as the model, answering by what it is asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from alma.embeddings import Embedder
from tests.cli import create_key, free_port, running, wait_for_health
from tests.conftest import store_settings
from tests.openai_stub import Behaviour, OpenAIStub, Reply

pytestmark = pytest.mark.slow
DRIVER = Path(__file__).with_name("openai_clients.py")
LISBOA = (("weather", '{"city": "Lisboa"}'),)


class AnsweringStub(OpenAIStub):
    """Says back the user's words, calls a tool when asked with `[tool]`, answers JSON when
    asked with `[json]`, goes on from a tool's result or the start of a reply."""

    def answer(self, body: dict[str, Any], headers: dict[str, str]) -> Behaviour:
        super().answer(body, headers)
        last = (body.get("messages") or [{}])[-1]
        text = str(last.get("content") or "")
        if last.get("role") == "tool":
            return Reply("Hace sol.")
        if last.get("role") == "assistant":
            return Reply(" ciudad de la luz.")
        if text.startswith("[tool]") and body.get("tools"):
            return Reply("", "tool_calls", tool_calls=LISBOA)
        if text.startswith("[json]") and body.get("response_format"):
            return Reply('{"mood": "alegre", "intensity": 7}')
        return Reply(f"Sí: {text}")


@pytest.fixture
def clients_python() -> str:
    python = os.environ.get("ALMA_OPENAI_CLIENTS_PYTHON")
    if python and Path(python).is_file():
        return python
    message = (
        "NO OPENAI CLIENT LIBRARIES: set ALMA_OPENAI_CLIENTS_PYTHON to a Python with "
        "tests/openai-clients.txt installed"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    warnings.warn(message + " -- SKIPPING LANGCHAIN, LITELLM AND LLAMA-INDEX", stacklevel=1)
    pytest.skip(message)


@pytest.fixture
def stub() -> Iterator[AnsweringStub]:
    with AnsweringStub() as running_stub:
        yield running_stub


def test_langchain_litellm_and_llama_index_talk_to_a_character(
    clients_python: str, stub: AnsweringStub, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with store_settings("sqlite", tmp_path, request) as settings:
        _, key = create_key(settings, "acme")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        model_env = {
            "OPENAI_API_KEY": "sk-test-alma-0123456789",
            "OPENAI_BASE_URL": stub.base_url,
            "ALMA_MEMORY_FORMATION": "false",  # its model calls would reach the stub too
        }
        log = tmp_path / "serve.log"
        with running(settings, ["serve", "--port", str(port)], log, model_env) as process:
            wait_for_health(base, process, log)
            http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"})
            character = http.post(
                "/v1/characters", json={"name": "Doña Rosa", "description": "Curandera"}
            ).json()
            instance = http.post(
                f"/v1/characters/{character['id']}/instances", json={"name": "Rosa"}
            ).json()["id"]
            driven = subprocess.run(
                [clients_python, str(DRIVER), f"{base}/v1", key, instance],
                capture_output=True,
                text=True,
                timeout=600,
                env={**os.environ, "PYTHONPATH": ""},
                check=False,
            )
        assert driven.returncode == 0, driven.stderr[-3000:]
        got = json.loads(driven.stdout)
        size = len(Embedder(settings.embedding_model).encode(["hola"])[0])

    expected = {
        "langchain: plain": "Sí: Hola, Rosa",
        "langchain: streaming": "Sí: ¿Sigues ahí?",
        "langchain: async": "Sí: ¿Me oyes?",
        "langchain: history": "Sí: ¿Y Lucía?",
        "langchain: content parts": "Sí: Partes de texto",
        "langchain: sampling": "Sí: Con muestreo",
        "langchain: prefill": " ciudad de la luz.",
        "langchain: tools": {"call": ["weather", {"city": "Lisboa"}], "answer": "Hace sol."},
        "langchain: structured output": {"mood": "alegre", "intensity": 7},
        "langchain: responses: plain": "Sí: Hola, Rosa",
        "langchain: responses: streaming": "Sí: ¿Sigues ahí?",
        "langchain: responses: history": "Sí: ¿Y Lucía?",
        "langchain: responses: previous response": "Sí: ¿Cómo se llama mi gato?",
        "langchain: responses: tools": {
            "call": ["weather", {"city": "Lisboa"}],
            "answer": "Hace sol.",
        },
        "langchain: embeddings": size,
        "litellm: plain": "Sí: Hola, Rosa",
        "litellm: streaming": "Sí: ¿Sigues ahí?",
        "litellm: async": "Sí: ¿Me oyes?",
        "litellm: sampling": "Sí: Con muestreo",
        "litellm: tools": ["weather", {"city": "Lisboa"}],
        "litellm: embeddings": size,
        "litellm: completions": "Sí: Un texto",
        "llama-index: completions": "Sí: ¿Quién eres?",
        "llama-index: streaming": "Sí: Cuenta",
        "llama-index: plain": "Sí: Hola, Rosa",
        "llama-index: async": "Sí: ¿Me oyes?",
    }
    wrong = {
        step: got.get(step) for step, value in expected.items() if got.get(step) != {"ok": value}
    }
    assert not wrong, json.dumps(wrong, ensure_ascii=False, indent=1)
    sampled = [r for r in stub.requests if r["messages"][-1]["content"] == "Con muestreo"]
    assert [(r["top_p"], r["seed"], r["max_tokens"]) for r in sampled] == [(0.5, 3, 8192)] * 2
    # LangChain sent only the new message and the previous response's id: the turn before it
    # came from alma's record, as it was said (the recollections sit between them, as system).
    [going_on] = [
        r for r in stub.requests if r["messages"][-1]["content"] == "¿Cómo se llama mi gato?"
    ]
    said = [m for m in going_on["messages"] if m["role"] != "system"]
    assert said[-3:-1] == [
        {"role": "user", "content": "Mi gato se llama Tizón"},
        {"role": "assistant", "content": "Sí: Mi gato se llama Tizón"},
    ]
    assert sys.executable != clients_python  # they ran in their own environment
