"""alma's one settings object, read from the environment or a `.env` file (prefix `ALMA_`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, unquote, urlparse

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ALMA_", env_file=".env", extra="ignore", populate_by_name=True
    )

    data_dir: Path = Path(".alma")
    database_url: str | None = Field(
        default=None,
        description="sqlite:///path or postgresql://user@host:port/db?schema=name; "
        "unset means a SQLite file under data_dir",
    )
    chroma_url: str | None = Field(
        default=None, description="a Chroma server (http://host:8000); unset = embedded"
    )
    embedding_model: str = Field(
        default="all-MiniLM-L6-v2",
        description="any sentence-transformers name or path; the default ships in a package, "
        "and so do intfloat/multilingual-e5-small and all-mpnet-base-v2 (README)",
    )
    embedding_backend: Literal["onnx-smooth-int8", "onnx", "onnx-int8", "torch"] = Field(
        default="onnx-smooth-int8", description="how the embedding model runs (see embeddings.py)"
    )
    # Each memory-index batch writes once to every instance's collection it touches, and a Chroma
    # write has a fixed cost however small (bench/memory.py): big batches keep indexing fast when
    # writes spread over many instances; a quiet log still gives small ones.
    index_batch_size: int = Field(default=5000, ge=1, le=100_000, description="events per batch")
    embedding_threads: int = Field(default=1, ge=1, le=64, description="CPU threads per query")
    embedding_batch_threads: int | None = Field(
        default=None, ge=1, le=64, description="CPU threads per indexing batch; unset = all cores"
    )
    consistency_wait_s: float = Field(default=5.0, gt=0)
    openai_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_API_KEY", "ALMA_OPENAI_API_KEY"),
        description="unset = the local model answers",
    )
    openai_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_BASE_URL", "ALMA_OPENAI_BASE_URL"),
        description="any OpenAI-compatible server (vLLM, Ollama, llama.cpp, Azure)",
    )
    chat_model: str = "gpt-3.5-turbo"
    context_window: int = Field(default=16_385, ge=512, description="of the chat model, tokens")
    model_timeout_s: float = Field(default=30.0, gt=0)
    model_max_retries: int = Field(default=4, ge=0)
    local_model: str | None = Field(
        default=None,
        description="the local backend's model: qwen2.5-coder-1.5b (unset), smollm2-135m, "
        "qwen2.5-coder-0.5b (from packages, README) or a GGUF file's path",
    )
    local_context_window: int = Field(default=2048, ge=512)
    local_queue_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="how long a chat waits for the local model, which answers one at a time, "
        "before 503 chat_model_busy",
    )
    chat_memories: int = Field(default=8, ge=0, le=100, description="memories retrieved per turn")
    chat_history_turns: int = Field(default=20, ge=0, le=500)
    chat_memory_wait_s: float = Field(
        default=2.0,
        ge=0,
        description="how long a chat turn waits for the memory index to hold the instance's "
        "latest write; past it the turn answers with `memories_behind: true`",
    )
    chat_client_instructions: bool = Field(
        default=True,
        description="an OpenAI client's system messages enter the prompt after the persona",
    )
    memory_formation: bool = Field(
        default=True,
        description="turn conversations into memories after each turn (and rolling summaries, "
        "with a hosted model); the local model's runs after chats and gives way to them",
    )
    memory_model: str | None = Field(
        default=None, description="the model that forms memories; unset = ALMA_CHAT_MODEL"
    )
    summary_every: int = Field(default=20, ge=2, le=1000, description="messages per summary")
    host: str = "127.0.0.1"
    port: int = Field(default=8011, ge=1, le=65535)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    run_projections: bool = Field(
        default=True,
        description="follow the event log inside `alma serve`; false with `alma worker`",
    )
    partitions: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="partitions of each projection's work, shared by the workers; fixed: "
        "changing it needs every worker stopped first (README, scaling out)",
    )
    partition_timeout_s: float = Field(
        default=10.0,
        ge=2,
        le=600,
        description="a worker silent this long (paused, cut off) loses its partitions to others",
    )
    worker_metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="`alma worker` serves its Prometheus metrics (memory formation's) on this port",
    )
    formation_concurrency: int = Field(
        default=32,
        ge=1,
        le=1024,
        description="model calls the memory process keeps in flight per worker, across instances",
    )
    postgres_pool_size: int = Field(default=5, ge=1)
    postgres_max_overflow: int = Field(default=10, ge=0)
    postgres_lock_timeout_s: int = Field(default=5, ge=1)
    postgres_connect_timeout_s: int = Field(
        default=2,
        ge=1,
        description="how long a statement waits for a pooled connection; the store retries 10 "
        "times, so a request caught by a database outage answers within about 10x this",
    )
    read_model_wait_s: float = Field(default=2.0, gt=0)
    idempotency_ttl_s: int = Field(
        default=86_400,
        ge=1,
        description="how long the first answer to a request sent with an Idempotency-Key is "
        "kept and given again to a repeat of it (24 h)",
    )
    idempotency_lease_s: float = Field(
        default=30.0,
        gt=0,
        description="a request that holds an Idempotency-Key and has neither answered nor "
        "written within this long (its process died, or lost the database) gives the key up to "
        "a repeat",
    )
    aggregate_cache_size: int = Field(default=10_000, ge=0)
    rate_limit: int | None = Field(
        default=None, ge=1, description="requests a minute per API key, per replica; unset = off"
    )
    cors_origins: str | None = Field(
        default=None, description="comma-separated origins allowed by CORS; unset = CORS off"
    )
    tts_engine: Literal["gtts", "espeak"] = Field(
        default="gtts",
        description="preferred text-to-speech engine; espeak-ng (offline) answers when it fails",
    )
    tts_language: str = Field(
        default="en", description="speech language when no request, voice or text tells"
    )
    tts_online_timeout_s: float = Field(default=5.0, gt=0)
    tts_online_retry_s: float = Field(
        default=60.0, ge=0, description="after an online failure, offline only for this long"
    )
    stt_model: str = Field(
        default="base",
        description="base or tiny.en (from packages), a model folder, or a faster-whisper name",
    )
    stt_workers: int | None = Field(
        default=None, ge=1, le=16, description="concurrent transcriptions; unset = cores - 1"
    )
    stt_threads: int = Field(default=1, ge=1, le=64, description="CPU threads per transcription")
    stt_beam_size: int = Field(default=5, ge=1, le=10, description="1 is ~2x faster, less exact")
    stt_max_pending: int = Field(
        default=8, ge=1, description="transcriptions running or queued before 503"
    )
    audio_max_bytes: int = Field(default=25 * 1024 * 1024, ge=1024, description="upload limit")
    import_max_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=1024,
        description="the body limit of an import: a Character Card (a PNG card is often 1-5 MB),"
        " a lorebook, a conversation (months of chat)",
    )
    audio_max_seconds: float = Field(default=600.0, gt=0, description="duration limit")
    log_format: Literal["json", "text"] = Field(
        default="text", description="json: one JSON object per line (time, level, request_id...)"
    )
    metrics: bool = Field(default=True, description="serve Prometheus metrics at /metrics")
    model_cache_dir: Path | None = Field(
        default=None, description="exported and assembled models; unset = ~/.cache/alma"
    )

    @field_validator("database_url")
    @classmethod
    def _known_scheme(cls, url: str | None) -> str | None:
        if url and not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("ALMA_DATABASE_URL must start with sqlite:/// or postgresql://")
        return url

    def transcription_workers(self) -> int:
        """All cores but one (at least one): the API keeps a core while speech is transcribed
        (with a worker on every core, /health slowed down under transcriptions: bench/speech.py)."""
        return self.stt_workers or max(1, (os.cpu_count() or 1) - 1)

    def model_cache(self) -> Path:
        """Exported and assembled models are the same for every data folder: one copy per user."""
        if self.model_cache_dir is not None:
            return self.model_cache_dir
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "alma"

    def event_store_env(self, purpose: str) -> dict[str, str]:
        """eventsourcing settings for one store; `purpose` names its SQLite file."""
        if self.database_url and self.database_url.startswith("postgres"):
            return self._postgres_env()
        if self.database_url:
            path = Path(unquote(self.database_url.removeprefix("sqlite:///")))
            folder = path.parent
        else:
            folder = self.data_dir
        folder.mkdir(parents=True, exist_ok=True)
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(folder / f"{purpose}.sqlite3"),
            "SQLITE_LOCK_TIMEOUT": "10",
            **self._cache_env(),
        }

    def _cache_env(self) -> dict[str, str]:
        # Reads fast-forward a cached aggregate from the store, so the cache stays correct with
        # several processes writing; commands start from the cached copy and, should another
        # process have moved on, lose the save race and retry on fresh state.
        return {"AGGREGATE_CACHE_MAXSIZE": str(self.aggregate_cache_size)}

    def _postgres_env(self) -> dict[str, str]:
        assert self.database_url is not None
        url = urlparse(self.database_url)
        query = parse_qs(url.query)
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": unquote(url.path.lstrip("/")) or "postgres",
            "POSTGRES_HOST": url.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(url.port or 5432),
            "POSTGRES_USER": unquote(url.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(url.password or ""),
            "POSTGRES_POOL_SIZE": str(self.postgres_pool_size),
            "POSTGRES_MAX_OVERFLOW": str(self.postgres_max_overflow),
            "POSTGRES_LOCK_TIMEOUT": str(self.postgres_lock_timeout_s),
            "POSTGRES_CONNECT_TIMEOUT": str(self.postgres_connect_timeout_s),
            # No pre-ping: the library retries a statement on a broken connection itself.
            "POSTGRES_PRE_PING": "n",
            **self._cache_env(),
        }
        if "schema" in query:
            env["POSTGRES_SCHEMA"] = query["schema"][0]
        return env
