"""The model client against a real OpenAI-compatible HTTP server, through the real `openai` SDK."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from alma.llm import tokens
from alma.llm.client import Completion, ModelClient, ModelError, OpenAIModel
from tests.openai_stub import Fail, OpenAIStub, Raw, Reply

KEY = "sk-test-S3CRET-do-not-leak-0123456789"
MESSAGES = [
    {"role": "system", "content": "You are Aria, a pirate captain."},
    {"role": "user", "content": "Where is the treasure?"},
]
SPANISH = "¡Hola, Muñoz! ¿Qué tal el niño? Año añejo, corazón 💖🏴‍☠️ — «ñandú»"


class Sleeps:
    """Records the waits the client asks for instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(openai_stub: OpenAIStub, sleeps: Sleeps) -> Iterator[OpenAIModel]:
    with OpenAIModel(
        KEY, openai_stub.base_url, timeout_s=5, max_retries=4, backoff_base_s=0.05, sleep=sleeps
    ) as model:
        yield model


def drain(events: Iterator[str | Completion]) -> tuple[list[str], list[Completion]]:
    deltas: list[str] = []
    finals: list[Completion] = []
    for event in events:
        if isinstance(event, Completion):
            finals.append(event)
        else:
            assert not finals, "a delta after the final Completion"
            deltas.append(event)
    return deltas, finals


def test_is_a_model_client(client: OpenAIModel) -> None:
    assert isinstance(client, ModelClient)
    assert client.model == "gpt-3.5-turbo"
    assert client.context_window == 16385


def test_reply_usage_and_request_body(openai_stub: OpenAIStub, client: OpenAIModel) -> None:
    openai_stub.script(Reply("Arr, under the palm.", prompt_tokens=111, completion_tokens=22))
    answer = client.complete(MESSAGES, max_tokens=64, temperature=0.7)
    assert answer.text == "Arr, under the palm."
    assert (answer.prompt_tokens, answer.completion_tokens) == (111, 22)
    assert answer.finish_reason == "stop"
    assert answer.model == "gpt-3.5-turbo"
    assert answer.attempts == 1
    assert answer.latency_ms >= 0
    [body] = openai_stub.requests
    assert body["model"] == "gpt-3.5-turbo"
    assert body["messages"] == MESSAGES
    assert body["max_tokens"] == 64
    assert body["temperature"] == 0.7
    assert not body.get("stream")
    assert openai_stub.headers[0]["authorization"] == f"Bearer {KEY}"


def test_one_client_serves_many_threads(openai_stub: OpenAIStub, client: OpenAIModel) -> None:
    def ask(n: int) -> str:
        messages = [{"role": "user", "content": f"question {n}"}]
        if n % 2:
            return client.complete(messages, max_tokens=8, temperature=0).text
        *_, final = client.stream(messages, max_tokens=8, temperature=0)
        assert isinstance(final, Completion)
        return final.text

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(50)))
    assert answers == ["Hello from the stub."] * 50
    asked = sorted(body["messages"][0]["content"] for body in openai_stub.requests)
    assert asked == sorted(f"question {n}" for n in range(50))


def test_an_api_key_is_required() -> None:
    with pytest.raises(ValueError, match="API key"):
        OpenAIModel("", "http://127.0.0.1:9/v1")


def test_model_name_is_configurable(openai_stub: OpenAIStub) -> None:
    with OpenAIModel(KEY, openai_stub.base_url, model="llama3:8b", context_window=8192) as model:
        answer = model.complete(MESSAGES, max_tokens=8, temperature=0)
    assert openai_stub.requests[0]["model"] == "llama3:8b"
    assert answer.model == "llama3:8b"


def test_usage_counted_when_the_server_sends_none(
    openai_stub: OpenAIStub, client: OpenAIModel
) -> None:
    openai_stub.script(Reply("Two words.", usage=False))
    answer = client.complete(MESSAGES, max_tokens=16, temperature=0)
    assert answer.prompt_tokens == tokens.count_messages(MESSAGES)
    assert answer.completion_tokens == tokens.count("Two words.")


def test_429_with_retry_after_then_success(openai_stub: OpenAIStub, sleeps: Sleeps) -> None:
    openai_stub.script(Fail(429, "Rate limit reached", retry_after="0"), Reply("At last."))
    with OpenAIModel(KEY, openai_stub.base_url, max_retries=4) as model:  # real sleep of 0 s
        answer = model.complete(MESSAGES, max_tokens=16, temperature=0)
    assert answer.text == "At last."
    assert answer.attempts == 2
    assert len(openai_stub.requests) == 2


def test_retry_after_is_the_wait(
    openai_stub: OpenAIStub, client: OpenAIModel, sleeps: Sleeps
) -> None:
    openai_stub.script(Fail(429, retry_after="1"), Fail(503, retry_after="3600"), Reply("ok"))
    assert client.complete(MESSAGES, max_tokens=16, temperature=0).text == "ok"
    assert sleeps.waits == [1.0, client.max_wait_s]  # honoured, and capped
    assert len(openai_stub.requests) == 3


def test_500_twice_then_success(
    openai_stub: OpenAIStub, client: OpenAIModel, sleeps: Sleeps
) -> None:
    openai_stub.script(Fail(500), Fail(502), Reply("Recovered."))
    answer = client.complete(MESSAGES, max_tokens=16, temperature=0)
    assert answer.text == "Recovered."
    assert answer.attempts == 3
    assert len(openai_stub.requests) == 3
    assert len(sleeps.waits) == 2
    for attempt, wait in enumerate(sleeps.waits, start=1):  # full jitter within the ceiling
        assert 0 <= wait <= client.backoff_base_s * 2 ** (attempt - 1)


def test_500_always_gives_up_with_502(openai_stub: OpenAIStub, client: OpenAIModel) -> None:
    openai_stub.default = Fail(500)
    with pytest.raises(ModelError) as caught:
        client.complete(MESSAGES, max_tokens=16, temperature=0)
    assert caught.value.status == 502
    assert caught.value.upstream_status == 500
    assert caught.value.attempts == client.max_retries + 1
    assert len(openai_stub.requests) == client.max_retries + 1


def test_timeout_is_504_and_not_retried(openai_stub: OpenAIStub, sleeps: Sleeps) -> None:
    openai_stub.script(Reply("too late", delay_s=5))
    with (
        OpenAIModel(KEY, openai_stub.base_url, timeout_s=0.3, sleep=sleeps) as model,
        pytest.raises(ModelError) as caught,
    ):
        model.complete(MESSAGES, max_tokens=16, temperature=0)
    assert caught.value.status == 504
    assert len(openai_stub.requests) == 1


@pytest.mark.parametrize(
    "body",
    [
        Raw('{"id": "chatcmpl-1", "choices": [{"index": 0, "mess'),  # cut JSON
        Raw('{"id": "chatcmpl-1", "object": "chat.completion", "choices": []}'),  # no choices
        Raw("{}"),
        Raw('{"choices": "nope"}'),
        Raw("<html>Bad gateway</html>", content_type="text/html"),
    ],
    ids=["cut-json", "no-choices", "empty-object", "wrong-shape", "html"],
)
def test_malformed_answer_is_502(openai_stub: OpenAIStub, client: OpenAIModel, body: Raw) -> None:
    openai_stub.script(body)
    with pytest.raises(ModelError) as caught:
        client.complete(MESSAGES, max_tokens=16, temperature=0)
    assert caught.value.status == 502
    assert len(openai_stub.requests) == 1


def test_400_is_not_retried(openai_stub: OpenAIStub, client: OpenAIModel) -> None:
    openai_stub.script(Fail(400, "max_tokens is too large"))
    with pytest.raises(ModelError) as caught:
        client.complete(MESSAGES, max_tokens=16, temperature=0)
    assert caught.value.status == 502
    assert caught.value.upstream_status == 400
    assert "max_tokens is too large" in str(caught.value)
    assert len(openai_stub.requests) == 1


def test_exhausted_quota_is_not_retried(openai_stub: OpenAIStub, client: OpenAIModel) -> None:
    openai_stub.script(Fail(429, "You exceeded your current quota", code="insufficient_quota"))
    with pytest.raises(ModelError):
        client.complete(MESSAGES, max_tokens=16, temperature=0)
    assert len(openai_stub.requests) == 1


def test_unreachable_server_is_retried_then_502(sleeps: Sleeps) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with (
        OpenAIModel(KEY, f"http://127.0.0.1:{port}/v1", max_retries=2, sleep=sleeps) as model,
        pytest.raises(ModelError) as caught,
    ):
        model.complete(MESSAGES, max_tokens=16, temperature=0)
    assert caught.value.status == 502
    assert caught.value.attempts == 3
    assert len(sleeps.waits) == 2


@pytest.mark.parametrize("key", [KEY, "9f2c4e61b7a04d3c8e5f1a2b3c4d5e6f"], ids=["openai", "azure"])
def test_the_api_key_never_appears_in_errors(
    openai_stub: OpenAIStub, sleeps: Sleeps, key: str
) -> None:
    openai_stub.script(
        Fail(401, f"Incorrect API key provided: {key}. Find yours at platform.openai.com"),
        Fail(403, f"Key {key[:12]}...{key[-4:]} is not allowed"),
        Fail(400, "x" * 190 + f" {key} " + "y" * 50),  # the key across the length cut
    )
    openai_stub.default = Fail(500, f"upstream said {key}")
    with OpenAIModel(key, openai_stub.base_url, max_retries=1, sleep=sleeps) as model:
        errors = []
        for _ in range(4):
            with pytest.raises(ModelError) as caught:
                model.complete(MESSAGES, max_tokens=16, temperature=0)
            errors.append(caught.value)
        assert key not in repr(model)
    assert len(openai_stub.requests) == 5
    for error in errors:
        assert error.status == 502
        for text in (str(error), repr(error), error.message):
            assert not any(key[i : i + 8] in text for i in range(len(key) - 7)), text


def test_spanish_and_emoji_round_trip(openai_stub: OpenAIStub, client: OpenAIModel) -> None:
    openai_stub.script(Reply(SPANISH), Reply(SPANISH))
    messages = [{"role": "user", "content": SPANISH}]
    assert client.complete(messages, max_tokens=64, temperature=0.2).text == SPANISH
    deltas, [final] = drain(client.stream(messages, max_tokens=64, temperature=0.2))
    assert "".join(deltas) == final.text == SPANISH
    assert [body["messages"] for body in openai_stub.requests] == [messages, messages]
    assert final.completion_tokens == tokens.count(SPANISH)


# -- streaming ------------------------------------------------------------------------------


def test_stream_deltas_then_one_completion_with_usage(
    openai_stub: OpenAIStub, client: OpenAIModel
) -> None:
    openai_stub.script(Reply("Arr, the map is mine.", prompt_tokens=77, completion_tokens=7))
    deltas, finals = drain(client.stream(MESSAGES, max_tokens=32, temperature=0.5))
    assert deltas == ["Arr,", " the", " map", " is", " mine."]
    [final] = finals
    assert final.text == "Arr, the map is mine."
    assert (final.prompt_tokens, final.completion_tokens) == (77, 7)
    assert final.finish_reason == "stop"
    assert final.model == "gpt-3.5-turbo"
    [body] = openai_stub.requests
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["messages"], body["max_tokens"], body["temperature"]) == (MESSAGES, 32, 0.5)


def test_stream_usage_counted_when_not_sent(openai_stub: OpenAIStub) -> None:
    openai_stub.script(Reply("Counted here.", prompt_tokens=999, completion_tokens=999))
    with OpenAIModel(KEY, openai_stub.base_url, stream_usage=False) as model:
        _, [final] = drain(model.stream(MESSAGES, max_tokens=32, temperature=0))
    assert "stream_options" not in openai_stub.requests[0]
    assert final.prompt_tokens == tokens.count_messages(MESSAGES)
    assert final.completion_tokens == tokens.count("Counted here.")


def test_stream_failure_before_the_first_token_is_retried(
    openai_stub: OpenAIStub, client: OpenAIModel
) -> None:
    openai_stub.script(
        Fail(503), Reply("lost", break_after=0), Fail(429, retry_after="0"), Reply("Second try.")
    )
    deltas, [final] = drain(client.stream(MESSAGES, max_tokens=32, temperature=0))
    assert "".join(deltas) == final.text == "Second try."
    assert final.attempts == 4
    assert len(openai_stub.requests) == 4


def test_stream_broken_after_tokens_raises(openai_stub: OpenAIStub, client: OpenAIModel) -> None:
    openai_stub.script(Reply("one two three four five", break_after=2))
    deltas: list[str] = []
    with pytest.raises(ModelError) as caught:
        for event in client.stream(MESSAGES, max_tokens=32, temperature=0):
            assert isinstance(event, str)
            deltas.append(event)
    assert deltas == ["one", " two"]
    assert caught.value.status == 502
    assert caught.value.partial == "one two"
    assert len(openai_stub.requests) == 1  # shown tokens are never repeated by a retry


def test_stream_that_ends_without_finishing_raises(
    openai_stub: OpenAIStub, client: OpenAIModel
) -> None:
    openai_stub.script(Reply("cut short", finish_reason=None, done=False))
    with pytest.raises(ModelError) as caught:
        drain(client.stream(MESSAGES, max_tokens=32, temperature=0))
    assert caught.value.partial == "cut short"


def test_stream_timeout_is_504(openai_stub: OpenAIStub, sleeps: Sleeps) -> None:
    openai_stub.script(Reply("slow", delay_s=5))
    with (
        OpenAIModel(KEY, openai_stub.base_url, timeout_s=0.3, sleep=sleeps) as model,
        pytest.raises(ModelError) as caught,
    ):
        drain(model.stream(MESSAGES, max_tokens=32, temperature=0))
    assert caught.value.status == 504
    assert len(openai_stub.requests) == 1


def test_stream_stopped_by_the_caller(openai_stub: OpenAIStub, client: OpenAIModel) -> None:
    openai_stub.script(Reply("a b c d e f g h", chunk_delay_s=0.01), Reply("next"))
    events = client.stream(MESSAGES, max_tokens=32, temperature=0)
    assert next(events) == "a"
    events.close()  # a client that disconnected: the HTTP stream is released
    assert client.complete(MESSAGES, max_tokens=8, temperature=0).text == "next"
