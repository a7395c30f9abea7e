"""The composition root: builds the application, the read models and their followers."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from uuid import UUID

from alma.api.breaker import DatabaseBreaker
from alma.api.event_store import event_app
from alma.chat.cards import Cards
from alma.chat.formation import MemoryFormation
from alma.chat.turns import DEFAULT_REPLY_TOKENS, Chat
from alma.chat.warm import WARM_INSTANCES, Warmer
from alma.domain import Alma
from alma.embeddings import Embedder
from alma.llm.client import ModelClient, ModelError, OpenAIModel
from alma.llm.local import (
    DEFAULT_LOCAL_MODEL,
    TOKENIZER_MARGIN,
    LocalModelUnavailable,
    local_model_client,
    model_file,
    shared_server,
)
from alma.projections import (
    Conversation,
    Follower,
    Listings,
    MemoryAudit,
    MemoryIndex,
    ReadModel,
    Skips,
    VectorIndex,
    open_chroma,
)
from alma.projections.ranking import weights_for
from alma.settings import Settings
from alma.stores.idempotency import IdempotencyKeys, open_idempotency
from alma.stores.images import Images
from alma.stores.locks import AdvisoryLocks, LocalLocks, Locks
from alma.stores.sql import conninfo, creating_tables, open_store
from alma.voice import Speech

log = logging.getLogger(__name__)
# `Services.warm_soon`: (tenant, instances, character) -> None
WarmSoon = Callable[[str, Iterable[UUID], UUID | None], None]


@dataclass(frozen=True)
class ChatModelState:
    """Which chat model answers, and whether it can."""

    backend: Literal["hosted", "local"]
    name: str  # the model's name (hosted) or ALMA_LOCAL_MODEL's name or path (local)
    file: str | None  # the local model's GGUF file, once loaded
    available: bool
    error: str | None  # why it cannot answer: the file, and how to get it


@dataclass
class Services:
    settings: Settings
    app: Alma
    listings: Follower
    memory: Follower
    conversation: Follower
    memory_audit: Follower
    skips: Skips  # events the projections could not apply and went on without
    idempotency: IdempotencyKeys  # the first answers to requests sent with an Idempotency-Key
    locks: Locks  # which partitions this process owns
    formation: Follower | None = None  # the memory process, unless ALMA_MEMORY_FORMATION=false
    breaker: DatabaseBreaker | None = None  # on PostgreSQL: 503 at once while it is down
    # Reads instances' next prompts into the local model ahead of their chats (None: hosted).
    warmer: Warmer | None = None
    _model: ModelClient | None = None
    _memory_model: ModelClient | None = None
    _model_lock: threading.Lock = field(default_factory=threading.Lock)
    _model_unavailable: str | None = None  # the local model could not start: why
    _model_file: Path | None = None  # the local model's, once loaded
    _speech: Speech | None = None

    def _model_client(self) -> ModelClient:
        """The chat model, made on first use: OpenAI when a key is set (or any server at
        OPENAI_BASE_URL), otherwise the local model, started in this process. A local model that
        could not start is not tried again (a restart is): every call answers 503 with why."""
        with self._model_lock:
            if self._model is None and self._model_unavailable is None:
                try:
                    self._model = build_model(self.settings)
                    if not _remote(self.settings):  # in place by now: a lookup, for /health
                        self._model_file = model_file(
                            self.settings.local_model, self.settings.model_cache()
                        )
                except LocalModelUnavailable as error:
                    self._model_unavailable = str(error)
                    log.error("the chat model cannot answer: %s", error)
            if self._model is None:
                raise ModelError(
                    f"the chat model cannot answer: {self._model_unavailable}",
                    status=503,
                    code="chat_model_unavailable",
                )
            return self._model

    def start_model(self) -> None:
        """Loads the local model at start, so the first chat does not wait for it and a missing
        file is told at once (logged, then answered 503); a hosted one needs no start."""
        if not _remote(self.settings):
            with contextlib.suppress(ModelError):  # logged, and answered to every chat
                self._model_client()
                self._start_warmer()

    def _start_warmer(self) -> None:
        """Reads the next prompts of the instances chatted with last, and from now on of those
        created or edited (`warm_soon`), into the local model ahead of their chats."""
        settings = self.settings
        server = shared_server(
            settings.local_model,
            context=settings.local_context_window,
            cache_dir=settings.model_cache(),
        )
        chat = self.chat
        self.warmer = Warmer(
            lambda tenant, instance: chat.opening(tenant, instance, DEFAULT_REPLY_TOKENS),
            server.warm,
        )
        recent: dict[str, list[UUID]] = {}
        for tenant, instance in self.conversation_view.recent_instances(WARM_INSTANCES):
            recent.setdefault(tenant, []).append(instance)
        for tenant, instances in recent.items():
            self.warmer.soon(tenant, instances)

    def warm_soon(
        self, tenant: str, instances: Iterable[UUID] = (), character: UUID | None = None
    ) -> None:
        """Has the local model read these instances' next prompts (and, given a character, its
        instances') ahead of their chats; nothing with a hosted model."""
        if self.warmer is None:
            return
        instances = list(instances)
        if character is not None:
            listed = self.listings_view.select("instance", tenant, 0, WARM_INSTANCES, character)
            instances += [item.id for item in listed]
        self.warmer.soon(tenant, instances)

    def chat_model_state(self) -> ChatModelState:
        if _remote(self.settings):
            return ChatModelState("hosted", self.settings.chat_model, None, True, None)
        with self._model_lock:
            file, error = self._model_file, self._model_unavailable
        name = self.settings.local_model or DEFAULT_LOCAL_MODEL
        shown = None if file is None else str(file)
        return ChatModelState("local", name, shown, error is None, error)

    def _memory_model_client(self) -> ModelClient:
        """The model that forms memories: the chat model unless ALMA_MEMORY_MODEL names
        another one on the same server, through a client of its own that does not retry (the
        memory process paces and retries its windows itself: chat/pace.py). The local backend
        has only its own, which memory formation reaches as background work: after chats,
        giving way to them."""
        name = self.settings.memory_model or self.settings.chat_model
        if _remote(self.settings):
            update = {"chat_model": name, "model_max_retries": 0}
            settings, background = self.settings.model_copy(update=update), False
        else:
            self._model_client()  # the local model started, or why it cannot (503)
            settings, background = self.settings, True
        with self._model_lock:
            if self._memory_model is None:
                self._memory_model = build_model(settings, background)
            return self._memory_model

    def speech(self) -> Speech:
        """Text to speech and speech to text; their models load on first use."""
        with self._model_lock:
            if self._speech is None:
                self._speech = Speech.of(self.settings)
            return self._speech

    @property
    def chat(self) -> Chat:
        return Chat(
            self.app,
            self.memory_index,
            self.memory.wait,
            self._model_client,
            self.settings.chat_memories,
            self.settings.chat_history_turns,
            self.settings.chat_memory_wait_s,
        )

    @property
    def cards(self) -> Cards:
        return Cards(self.app, Images(self.settings.data_dir / "images"))

    @property
    def followers(self) -> list[Follower]:
        return [
            self.listings,
            self.memory,
            self.conversation,
            self.memory_audit,
            *([self.formation] if self.formation else []),
        ]

    @property
    def listings_view(self) -> Listings:
        listings = self.listings.model
        assert isinstance(listings, Listings)
        return listings

    @property
    def memory_index(self) -> MemoryIndex:
        index = self.memory.model
        assert isinstance(index, MemoryIndex)
        return index

    @property
    def conversation_view(self) -> Conversation:
        conversation = self.conversation.model
        assert isinstance(conversation, Conversation)
        return conversation

    @property
    def audit_view(self) -> MemoryAudit:
        audit = self.memory_audit.model
        assert isinstance(audit, MemoryAudit)
        return audit

    def start_projections(self) -> None:
        """Follow the log in this process (the embedded default; `alma worker` otherwise).
        The embedding model is loaded first, so the index does not start out lagging."""
        self.memory_index.embedder.load()
        for follower in self.followers:
            # Writes wake the other projections at once. The memory index waits for its next
            # poll (<= 0.2 s) or a reader that waits for it: woken at once, it embedded a chat
            # turn's messages while the turn was still recording (bench/chat_turn.py).
            if follower is not self.memory:
                self.app.listeners.append(follower.wake)
            follower.start()

    def close(self) -> None:
        if self.breaker is not None:
            self.breaker.stop()
        if self.warmer is not None:
            self.warmer.close()
        for follower in self.followers:
            follower.stop()
        self.listings_view.close()
        self.memory_index.close()
        self.conversation_view.close()
        self.audit_view.close()
        self.skips.close()
        if self.formation is not None:
            assert isinstance(self.formation.model, MemoryFormation)
            self.formation.model.close()
        self.locks.close()
        self.app.close()
        if self._speech is not None:
            self._speech.close()


def _remote(settings: Settings) -> bool:
    return settings.openai_api_key is not None or bool(settings.openai_base_url)


def model_context(settings: Settings) -> int:
    """The chat model's context window, in tiktoken tokens, known before the model starts."""
    if _remote(settings):
        return settings.context_window
    return int(settings.local_context_window / TOKENIZER_MARGIN)


def build_model(settings: Settings, background: bool = False) -> ModelClient:
    """The chat model's client; `background`: the local model's for background work."""
    if _remote(settings):
        # A server of one's own (Ollama, vLLM) may need no key; the SDK insists on one.
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "none"
        return OpenAIModel(
            api_key=key,
            base_url=settings.openai_base_url,
            model=settings.chat_model,
            timeout_s=settings.model_timeout_s,
            max_retries=settings.model_max_retries,
            context_window=model_context(settings),
        )
    return local_model_client(
        settings.local_model,
        context=settings.local_context_window,
        timeout_s=max(settings.model_timeout_s, 120.0),
        context_window=model_context(settings),
        queue_timeout_s=settings.local_queue_timeout_s,
        cache_dir=settings.model_cache(),
        background=background,
    )


def build_services(settings: Settings) -> Services:
    with creating_tables(settings.event_store_env("events")):
        return _services(settings)


def _services(settings: Settings) -> Services:
    app = event_app(settings)
    skips = Skips(open_store(settings.event_store_env("skips")))
    locks = build_locks(settings)

    def follower(model: ReadModel, skipping: bool = True, batch_size: int = 200) -> Follower:
        kept = skips if skipping else None
        return Follower(app, model, locks, settings.partitions, batch_size=batch_size, skips=kept)

    services = Services(
        settings=settings,
        app=app,
        listings=follower(Listings(open_store(settings.event_store_env(Listings.name)))),
        memory=follower(build_memory_index(settings), batch_size=settings.index_batch_size),
        conversation=follower(
            Conversation(open_store(settings.event_store_env(Conversation.name)))
        ),
        memory_audit=follower(MemoryAudit(open_store(settings.event_store_env(MemoryAudit.name)))),
        skips=skips,
        idempotency=open_idempotency(
            app.recorder, settings.idempotency_ttl_s, settings.idempotency_lease_s
        ),
        locks=locks,
    )
    env = settings.event_store_env("events")
    if "POSTGRES_HOST" in env:
        services.breaker = DatabaseBreaker(env)
    if settings.memory_formation:
        formation = MemoryFormation(
            app,
            open_store(settings.event_store_env("formation")),
            services.memory_index,
            services.memory.wait,
            services._memory_model_client,
            settings.summary_every,
            local=not _remote(settings),
            concurrency=settings.formation_concurrency,
        )
        # No skips: it waits out a model that is down (its errors are no store's), and it
        # writes events, so no rebuild could clear one.
        services.formation = follower(formation, skipping=False)
    return services


def build_locks(settings: Settings) -> Locks:
    """PostgreSQL's advisory locks decide which worker owns which partition; on SQLite the one
    process that follows the log owns them all."""
    env = settings.event_store_env("events")
    if env["PERSISTENCE_MODULE"] != "eventsourcing.postgres":
        return LocalLocks()
    schema = env.get("POSTGRES_SCHEMA", "public")
    return AdvisoryLocks(conninfo(env), schema, settings.partition_timeout_s)


def build_memory_index(settings: Settings, generation: int | None = None) -> MemoryIndex:
    return MemoryIndex(
        open_store(settings.event_store_env("memory")),
        VectorIndex(open_chroma(settings)),
        Embedder(
            settings.embedding_model,
            threads=settings.embedding_threads,
            batch_threads=settings.embedding_batch_threads or os.cpu_count(),
            backend=settings.embedding_backend,
            cache_dir=settings.model_cache(),
        ),
        weights=weights_for(settings.embedding_model),
        pinned_generation=generation,
    )


def rebuild_memory_index(services: Services) -> int:
    """Builds a new generation of the index beside the serving one, switches readers and
    followers to it, then drops the old one. Returns the new generation. The events the serving
    one skipped are tried again: those that still fail are skipped and recorded again."""
    serving = services.memory_index
    generation = max([serving.generation, *serving.generations()]) + 1
    builder = build_memory_index(services.settings, generation)
    services.skips.clear(serving.name)
    try:
        Follower(
            services.app,
            builder,
            services.locks,
            services.settings.partitions,
            batch_size=services.settings.index_batch_size,
            skips=services.skips,
        ).catch_up()
        previous = serving.switch_to(generation)
    finally:
        builder.close()
    serving.drop(previous)
    return generation
