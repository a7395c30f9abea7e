"""A real local HTTP server that speaks OpenAI Chat Completions, with scripted behaviours.

Tests point the official `openai` SDK (or alma's model client) at `stub.base_url`, queue what the
next requests meet with `stub.script(...)` (a reply, tool calls, an error status with
`Retry-After`, a delay, malformed JSON, a stream that breaks) and assert on `stub.requests`, the
JSON bodies received.
A request that finds the queue empty gets `stub.default` (a plain reply). A subclass may answer
by content (`answer`) and note when a streamed reply's first word went out (`first_word_sent`),
as bench/chat_turn.py does.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import pytest

from alma.llm import tokens


@dataclass(frozen=True)
class Reply:
    """A chat completion; streamed as one delta per word when the request says `stream`."""

    text: str = "Hello from the stub."
    finish_reason: str | None = "stop"
    model: str | None = None  # None: echo the request's model
    prompt_tokens: int | None = None  # None: counted with tiktoken, as OpenAI does
    completion_tokens: int | None = None
    usage: bool = True  # non-streaming: send `usage`; streaming follows include_usage
    delay_s: float = 0.0  # before answering (longer than the client's timeout = a timeout)
    chunk_delay_s: float = 0.0  # streaming: between deltas
    break_after: int | None = None  # streaming: drop the connection after this many deltas
    done: bool = True  # streaming: end with `data: [DONE]`
    # Tools the model calls, as (name, arguments JSON); streamed with the arguments in two pieces.
    tool_calls: tuple[tuple[str, str], ...] = ()

    def calls(self) -> list[dict[str, Any]]:
        """The tool calls in OpenAI's shape, with ids."""
        return [
            {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
            for i, (n, a) in enumerate(self.tool_calls)
        ]


@dataclass(frozen=True)
class Fail:
    """An error status in OpenAI's error shape, optionally with `Retry-After`."""

    status: int = 500
    message: str = "The server had an error while processing your request."
    retry_after: str | None = None
    code: str | None = None
    delay_s: float = 0.0


@dataclass(frozen=True)
class Raw:
    """Any body at all: malformed JSON, a wrong shape, HTML from a proxy."""

    body: str | bytes
    status: int = 200
    content_type: str = "application/json"
    delay_s: float = 0.0


Behaviour = Reply | Fail | Raw


@dataclass
class OpenAIStub:
    """The server: `base_url`, `requests` (bodies received), `script()` to queue behaviours."""

    default: Behaviour = field(default_factory=Reply)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    _queue: deque[Behaviour] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "the stub is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def script(self, *behaviours: Behaviour) -> Self:
        """Queue what the next requests meet, one behaviour per request, in order."""
        with self._lock:
            self._queue.extend(behaviours)
        return self

    @property
    def pending(self) -> int:
        """Scripted behaviours not yet used."""
        with self._lock:
            return len(self._queue)

    def start(self) -> Self:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.stub = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="openai-stub"
        )
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers that are delaying
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def answer(self, body: dict[str, Any], headers: dict[str, str]) -> Behaviour:
        """What a request meets: it is noted in `requests`, then the next scripted behaviour or
        the default answers it."""
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            return self._queue.popleft() if self._queue else self.default

    def first_word_sent(self, body: dict[str, Any]) -> None:
        """Called once a streamed reply's first word has been written and flushed."""


@pytest.fixture
def openai_stub() -> Iterator[OpenAIStub]:
    """A running stub, stopped after the test."""
    with OpenAIStub() as stub:
        yield stub


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # clients that connect at once (bench/chat_turn.py has 50)
    stub: OpenAIStub

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up (a timeout test) is expected, not a failure


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # As a real server does: without it, a small write after another waits for the peer's
    # delayed ACK, which showed up as the model's time in bench/chat_turn.py.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._json(404, _error("Unknown path " + self.path, "invalid_request_error"))
            return
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"_unparsed": raw.decode("utf-8", errors="replace")}
        stub = self.server.stub
        behaviour = stub.answer(body, {k.lower(): v for k, v in self.headers.items()})
        if behaviour.delay_s and stub._stopping.wait(behaviour.delay_s):
            return
        if isinstance(behaviour, Fail):
            extra = {"Retry-After": behaviour.retry_after} if behaviour.retry_after else {}
            kind = "rate_limit_error" if behaviour.status == 429 else "server_error"
            payload = _error(behaviour.message, kind, behaviour.code)
            self._json(behaviour.status, payload, extra)
        elif isinstance(behaviour, Raw):
            data = behaviour.body.encode() if isinstance(behaviour.body, str) else behaviour.body
            self._send(behaviour.status, data, behaviour.content_type)
        elif body.get("stream"):
            self._stream(behaviour, body)
        else:
            self._json(200, _completion(behaviour, body))

    def _json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _send(
        self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, reply: Reply, body: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        options = body.get("stream_options") or {}
        with_usage = bool(options.get("include_usage"))
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": reply.model or body.get("model", "stub"),
            "system_fingerprint": "fp_stub",
        }

        def event(choices: list[dict[str, Any]], **more: Any) -> None:
            usage = {"usage": None} if with_usage else {}
            self._chunk(
                b"data: "
                + json.dumps({**base, "choices": choices, **usage, **more}).encode()
                + b"\n\n"
            )

        event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for sent, piece in enumerate(_pieces(reply.text)):
            if reply.break_after is not None and sent >= reply.break_after:
                self.close_connection = True  # no final chunk: the client sees a broken body
                return
            if reply.chunk_delay_s:
                time.sleep(reply.chunk_delay_s)
            event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
            if sent == 0:
                self.server.stub.first_word_sent(body)
        if reply.break_after is not None:
            self.close_connection = True
            return
        for index, call in enumerate(reply.calls()):
            arguments = call["function"]["arguments"]
            half = len(arguments) // 2
            first = {**call, "function": {**call["function"], "arguments": arguments[:half]}}
            for piece in (first, {"function": {"arguments": arguments[half:]}}):
                delta = {"tool_calls": [{"index": index, **piece}]}
                event([{"index": 0, "delta": delta, "finish_reason": None}])
        if reply.finish_reason is not None:
            event([{"index": 0, "delta": {}, "finish_reason": reply.finish_reason}])
        if with_usage:
            self._chunk(
                b"data: "
                + json.dumps({**base, "choices": [], "usage": _usage(reply, body)}).encode()
                + b"\n\n"
            )
        if reply.done:
            self._chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _pieces(text: str) -> list[str]:
    return re.findall(r"\s*\S+|\s+$", text)


def _usage(reply: Reply, body: dict[str, Any]) -> dict[str, int]:
    messages = body.get("messages") or []
    prompt = reply.prompt_tokens
    if prompt is None:
        prompt = tokens.count_messages([{k: str(v) for k, v in m.items()} for m in messages])
    completion = reply.completion_tokens
    if completion is None:
        completion = tokens.count(reply.text)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply.model or body.get("model", "stub"),
        "system_fingerprint": "fp_stub",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": reply.text or None,
                    "refusal": None,
                    **({"tool_calls": reply.calls()} if reply.tool_calls else {}),
                },
                "logprobs": None,
                "finish_reason": reply.finish_reason,
            }
        ],
    }
    if reply.usage:
        answer["usage"] = _usage(reply, body)
    return answer


def _error(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
