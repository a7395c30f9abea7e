"""The chat model behind a small interface; OpenAI Chat Completions with our own retries.

`OpenAIModel` talks to OpenAI or any OpenAI-compatible server (vLLM, Ollama, llama.cpp, Azure,
alma's local model) through the official `openai` SDK. The SDK's own retries are off: this module
retries 429, 5xx and connection errors with exponential backoff and full jitter, honouring
`Retry-After`, and turns every failure into a `ModelError` that carries the HTTP status alma
answers with (502 upstream failure, 504 timeout) and a message that never holds the API key.
"""

from __future__ import annotations

import email.utils
import math
import random
import re
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, cast, runtime_checkable

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.chat_completion_chunk import ChoiceDeltaToolCall
from openai.types.completion_usage import CompletionUsage

from alma.llm import tokens
from alma.llm.turn import Turn

DEFAULT_MODEL = "gpt-3.5-turbo"
GPT35_CONTEXT_WINDOW = 16385
_KEY_LIKE = re.compile(r"\bsk-[A-Za-z0-9_*\-]{4,}")  # OpenAI-style keys, masked or not
_MIN_SECRET = 8  # shorter "keys" (e.g. "local") are not secrets; longer fragments are redacted
_MAX_DETAIL = 200

# OpenAI's chat messages: text, or a tool exchange (an assistant's `tool_calls`, a tool's result).
Messages = Sequence[Mapping[str, Any]]
# Fields beside max_tokens and temperature (stop, seed, top_p, the penalties, user, logit_bias,
# tools, response_format, ...), sent to the model server as they are.
Sampling = Mapping[str, Any]


@dataclass(frozen=True)
class Completion:
    """One finished reply and what it cost."""

    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    latency_ms: float
    attempts: int = 1
    tool_calls: tuple[dict[str, Any], ...] = ()  # OpenAI's shape: {id, type, function}
    # Of `prompt_tokens`, those the server had kept from an earlier request and did not read
    # again (OpenAI's prompt caching, llama.cpp's prompt cache), when it says.
    cached_tokens: int = 0


class ModelError(Exception):
    """The model could not answer; `status` is what alma answers with (502 or 504; 503 with a
    `code` of its own when the local model is missing or busy)."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        upstream_status: int | None = None,
        attempts: int = 1,
        partial: str = "",
        code: str | None = None,
        retry_after_s: int | None = None,
        upstream_retry_after_s: float | None = None,
    ) -> None:
        """`upstream_retry_after_s`: how long the model server asked to be left alone (its
        Retry-After), for background work that paces itself; never shown to a client."""
        super().__init__(message)
        self.message = message
        self.status = status
        self.upstream_status = upstream_status
        self.attempts = attempts
        self.partial = partial  # text streamed before the failure
        self.code = code
        self.retry_after_s = retry_after_s
        self.upstream_retry_after_s = upstream_retry_after_s


@runtime_checkable
class ModelClient(Protocol):
    """What chat needs from a model: a name, a context size, a reply, a streamed reply."""

    model: str
    context_window: int

    def complete(
        self,
        messages: Messages,
        max_tokens: int,
        temperature: float,
        sampling: Sampling | None = None,
    ) -> Completion: ...

    def stream(
        self,
        messages: Messages,
        max_tokens: int,
        temperature: float,
        sampling: Sampling | None = None,
    ) -> Iterator[str | Completion]:
        """Text deltas, then exactly one final `Completion`."""
        ...


@dataclass(frozen=True)
class _Failure:
    message: str
    status: int = 502
    upstream_status: int | None = None
    retryable: bool = False
    retry_after_s: float | None = None


class _Malformed(Exception):
    pass


class _GaveWay(Exception):
    """A background request (memory formation) stops mid-stream: a chat wants the model."""


class OpenAIModel:
    """`ModelClient` over the official `openai` SDK's Chat Completions."""

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        model: str = DEFAULT_MODEL,
        timeout_s: float = 30.0,
        max_retries: int = 4,
        context_window: int = GPT35_CONTEXT_WINDOW,
        *,
        backoff_base_s: float = 0.5,
        max_wait_s: float = 20.0,
        stream_usage: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        turn: Turn | None = None,
        turn_wait_s: float = 30.0,
    ) -> None:
        """`turn`: a server that answers one chat at a time (the local model); each call waits
        for it at most `turn_wait_s`, then fails with 503 `chat_model_busy`; a stream whose
        turn a chat wants stops and fails with `gave_way_to_chat` (background work)."""
        if not api_key:
            raise ValueError("OpenAIModel needs an API key; without one use the local model")
        self.model = model
        self.context_window = context_window
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.max_wait_s = max_wait_s
        self.stream_usage = stream_usage
        self._sleep = sleep
        self._turn = turn
        self.turn_wait_s = turn_wait_s
        self._secrets = [api_key] if len(api_key) >= _MIN_SECRET else []
        self._client = openai.OpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0
        )

    def __repr__(self) -> str:  # never the key
        return f"OpenAIModel(model={self.model!r}, base_url={self.base_url!r})"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OpenAIModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- complete ---------------------------------------------------------------------------

    def complete(
        self,
        messages: Messages,
        max_tokens: int,
        temperature: float,
        sampling: Sampling | None = None,
    ) -> Completion:
        started = time.perf_counter()
        attempt = 0
        with self._my_turn():
            while True:
                attempt += 1
                try:
                    answer = self._client.chat.completions.create(
                        **self._request(messages, max_tokens, temperature, sampling)
                    )
                    return self._completion(answer, messages, started, attempt)
                except Exception as exc:
                    self._wait_or_raise(self._classify(exc), attempt)

    @contextmanager
    def _my_turn(self) -> Iterator[None]:
        if self._turn is None:
            yield
            return
        if not self._turn.acquire(self.turn_wait_s):
            raise ModelError(
                f"the local model is answering other chats and none finished within "
                f"{self.turn_wait_s:g} s; try again shortly",
                status=503,
                code="chat_model_busy",
                retry_after_s=max(1, math.ceil(self.turn_wait_s)),
            )
        try:
            yield
        finally:
            self._turn.release()

    def _completion(
        self, answer: object, messages: Messages, started: float, attempt: int
    ) -> Completion:
        if not isinstance(answer, ChatCompletion):
            raise _Malformed("the model server did not answer with a chat completion")
        try:
            choices = answer.choices
            if not choices:
                raise _Malformed("the model server answered with no choices")
            choice = choices[0]
            text = choice.message.content or ""
            if not isinstance(text, str):
                raise _Malformed("the reply's content is not text")
            calls = tuple(
                call.model_dump(exclude_none=True) for call in choice.message.tool_calls or ()
            )
            prompt_tokens, completion_tokens = _usage(
                getattr(answer, "usage", None), messages, text
            )
            return Completion(
                text=text,
                model=getattr(answer, "model", None) or self.model,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                finish_reason=getattr(choice, "finish_reason", None) or "unknown",
                latency_ms=_elapsed_ms(started),
                attempts=attempt,
                tool_calls=calls,
                cached_tokens=_cached(getattr(answer, "usage", None)),
            )
        except (AttributeError, TypeError, IndexError) as exc:
            # The SDK builds models without validating them: missing fields show up here.
            raise _Malformed("the model server's answer is not a chat completion") from exc

    # -- stream -----------------------------------------------------------------------------

    def stream(
        self,
        messages: Messages,
        max_tokens: int,
        temperature: float,
        sampling: Sampling | None = None,
    ) -> Generator[str | Completion, None, None]:
        """Text deltas, then one `Completion`. Closing the generator early releases the HTTP
        stream (the server stops generating)."""
        started = time.perf_counter()
        attempt = 0
        with self._my_turn():
            while True:
                attempt += 1
                parts: list[str] = []
                calls: dict[int, dict[str, Any]] = {}  # by index, their pieces joined
                try:
                    request = self._request(messages, max_tokens, temperature, sampling)
                    if self.stream_usage:
                        request["stream_options"] = {"include_usage": True}
                    chunks = self._client.chat.completions.create(stream=True, **request)
                    model = self.model
                    finish_reason: str | None = None
                    usage: CompletionUsage | None = None
                    with chunks:
                        for chunk in chunks:
                            if self._turn is not None and self._turn.wanted():
                                raise _GaveWay  # closing the stream stops the server's work
                            if not isinstance(chunk, ChatCompletionChunk):
                                raise _Malformed("the model server streamed something else")
                            model = getattr(chunk, "model", None) or model
                            usage = getattr(chunk, "usage", None) or usage
                            for choice in getattr(chunk, "choices", None) or []:
                                if getattr(choice, "index", 0) != 0:
                                    continue
                                delta = getattr(choice, "delta", None)
                                content = getattr(delta, "content", None)
                                if content:
                                    parts.append(content)
                                    yield content
                                for call in getattr(delta, "tool_calls", None) or ():
                                    _join(calls.setdefault(call.index, {}), call)
                                finish_reason = (
                                    getattr(choice, "finish_reason", None) or finish_reason
                                )
                    if finish_reason is None:
                        raise _Malformed("the stream ended before the model finished its reply")
                    text = "".join(parts)
                    prompt_tokens, completion_tokens = _usage(usage, messages, text)
                    yield Completion(
                        text=text,
                        model=model,
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                        finish_reason=finish_reason,
                        latency_ms=_elapsed_ms(started),
                        attempts=attempt,
                        tool_calls=tuple(calls[i] for i in sorted(calls)),
                        cached_tokens=_cached(usage),
                    )
                    return
                except _GaveWay:
                    raise ModelError(
                        "gave the local model up to a chat", status=503, code="gave_way_to_chat"
                    ) from None
                except Exception as exc:
                    failure = self._classify(exc)
                    if parts:
                        # The caller has shown these tokens already: a retry would repeat them.
                        raise self._error(failure, attempt, partial="".join(parts)) from None
                    self._wait_or_raise(failure, attempt)

    # -- shared -----------------------------------------------------------------------------

    def _request(
        self, messages: Messages, max_tokens: int, temperature: float, sampling: Sampling | None
    ) -> dict[str, Any]:
        return {
            **(sampling or {}),
            "model": self.model,
            "messages": cast(Any, [dict(message) for message in messages]),
            "max_tokens": max_tokens,
            "temperature": temperature,
        }

    def _wait_or_raise(self, failure: _Failure, attempt: int) -> None:
        if not failure.retryable or attempt > self.max_retries:
            raise self._error(failure, attempt) from None
        self._sleep(self._backoff(attempt, failure.retry_after_s))

    def _backoff(self, attempt: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.max_wait_s)
        ceiling = min(self.max_wait_s, self.backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(0.0, ceiling)  # full jitter

    def _error(self, failure: _Failure, attempt: int, partial: str = "") -> ModelError:
        message = failure.message
        if partial:
            message += " (after the reply had begun)"
        elif failure.retryable:
            message += f" (gave up after {attempt} attempts)"
        return ModelError(
            self._redact(message),
            status=failure.status,
            upstream_status=failure.upstream_status,
            attempts=attempt,
            partial=partial,
            upstream_retry_after_s=failure.retry_after_s,
        )

    def _classify(self, exc: Exception) -> _Failure:
        if isinstance(exc, openai.APITimeoutError):
            return _Failure(f"the model did not answer within {self.timeout_s:g} s", status=504)
        if isinstance(exc, openai.APIConnectionError):
            return _Failure("could not reach the model server", retryable=True)
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            detail = self._redact(_detail(exc))[:_MAX_DETAIL]
            message = f"the model server answered {status}" + (f": {detail}" if detail else "")
            retryable = (status == 429 and _code(exc) != "insufficient_quota") or status >= 500
            return _Failure(
                message,
                upstream_status=status,
                retryable=retryable,
                retry_after_s=_retry_after(exc),
            )
        if isinstance(exc, openai.APIError):  # an error event inside a stream
            detail = self._redact(exc.message)[:_MAX_DETAIL]
            return _Failure(f"the model server reported an error: {detail}")
        if isinstance(exc, _Malformed):
            return _Failure(str(exc))
        if isinstance(exc, ValueError):  # invalid JSON, a body that failed validation
            return _Failure("the model server's answer is not valid JSON")
        return _Failure(f"unexpected failure talking to the model ({type(exc).__name__})")

    def _redact(self, message: str) -> str:
        for secret in self._secrets:
            message = message.replace(secret, "***")
            # Fragments too: a provider's own masking ("abcd1234...wxyz"), a message cut short.
            for start in range(len(secret) - _MIN_SECRET + 1):
                message = message.replace(secret[start : start + _MIN_SECRET], "***")
        return _KEY_LIKE.sub("***", message)


def _join(call: dict[str, Any], piece: ChoiceDeltaToolCall) -> None:
    """A streamed tool call's piece added to what came before: an id and a name once, the
    arguments a piece at a time."""
    if piece.id:
        call["id"] = piece.id
    call["type"] = piece.type or call.get("type", "function")
    if piece.function is not None:
        function = call.setdefault("function", {"name": "", "arguments": ""})
        function["name"] += piece.function.name or ""
        function["arguments"] += piece.function.arguments or ""


def _usage(usage: CompletionUsage | None, messages: Messages, text: str) -> tuple[int, int]:
    prompt = getattr(usage, "prompt_tokens", None)
    completion = getattr(usage, "completion_tokens", None)
    if isinstance(prompt, int) and isinstance(completion, int):
        return prompt, completion
    return tokens.count_messages(messages), tokens.count(text)


def _cached(usage: CompletionUsage | None) -> int:
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None)
    return cached if isinstance(cached, int) else 0


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _error_body(exc: openai.APIStatusError) -> Mapping[str, Any]:
    body = exc.body
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        body = body["error"]
    return cast(Mapping[str, Any], body) if isinstance(body, Mapping) else {}


def _detail(exc: openai.APIStatusError) -> str:
    message = _error_body(exc).get("message")
    return message if isinstance(message, str) else ""


def _code(exc: openai.APIStatusError) -> str | None:
    code = _error_body(exc).get("code")
    return code if isinstance(code, str) else None


def _retry_after(exc: openai.APIStatusError) -> float | None:
    headers = exc.response.headers
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return float(millis) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
