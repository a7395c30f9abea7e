"""One chat turn with an instance: recall, assemble the prompt, ask the model, record it all.

Every turn leaves events on the instance: the user's message first (so it is never lost), then
either the reply (with the model, its usage and latency, the memories in the prompt and a hash
of the exact prompt) or the failure. A streamed reply that the client abandons is recorded as
far as it got, marked interrupted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx

from alma import metrics
from alma.chat.prompt import Persona, Prompt, Recollection, Turn, build_prompt
from alma.domain import Actor, Alma, InvalidInput, Reply
from alma.domain.rules import valid_message
from alma.llm import tokens
from alma.llm.client import Completion, ModelClient, ModelError
from alma.projections import Conversation, Hit, MemoryIndex

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedTurn:
    """Everything decided before the model is called; nothing is recorded yet."""

    tenant: str
    instance_id: UUID
    message: str
    prompt: Prompt
    recalled: dict[str, Hit]
    max_tokens: int
    temperature: float
    metadata: dict[str, Any] | None = None  # recorded with the user's message (source: voice)
    memories_unavailable: bool = False  # the vector store was down: answered without recall


@dataclass(frozen=True)
class TurnResult:
    reply: str
    version: int
    message_id: UUID
    reply_id: UUID
    model: str
    prompt_tokens: int
    completion_tokens: int
    memories_used: list[Hit]
    memories_unavailable: bool = False


class Chat:
    def __init__(
        self,
        app: Alma,
        index: MemoryIndex,
        conversation: Conversation,
        model: Callable[[], ModelClient],
        memories: int = 8,
        history_turns: int = 20,
    ) -> None:
        self.app = app
        self.index = index
        self.conversation = conversation
        self.model = model
        self.memories = memories
        self.history_turns = history_turns

    def prepare(
        self,
        tenant: str,
        instance_id: UUID,
        message: str,
        max_tokens: int,
        temperature: float,
        history: Sequence[Turn] | None = None,
    ) -> PreparedTurn:
        """Checks the input and builds the prompt. `history` replaces the recorded recent turns
        (an OpenAI-style client sends its own); otherwise they come from the conversation."""
        valid_message("user", message)
        model = self.model()
        if max_tokens >= model.context_window:
            raise InvalidInput(
                f"max_tokens must be below the model's context of {model.context_window}",
                "max_tokens",
            )
        instance = self.app.instance(tenant, instance_id)
        character = self.app.character(tenant, instance.character_id)
        if history is None:
            recent = self.conversation.recent_messages(instance_id, self.history_turns)
            history = [
                Turn(m.role, m.content, m.sent_at)
                for m in recent
                if m.role in ("user", "assistant")
            ]
            in_history = {str(m.id) for m in recent}
        else:
            in_history = set()
        try:
            found = self.index.search(instance_id, message, k=self.memories)
            unavailable = False
        except httpx.TransportError as error:  # the Chroma server is down: answer without recall
            log.warning("vector store unreachable, chatting without memories: %s", error)
            metrics.MEMORIES_UNAVAILABLE.inc()
            found, unavailable = [], True
        hits = [hit for hit in found if hit.doc.doc_id not in in_history]
        prompt = build_prompt(
            Persona(
                character=character.name,
                description=character.description,
                personality=character.personality,
                scenario=character.scenario,
                example_dialogue=character.example_dialogue,
                system_prompt=character.system_prompt,
            ),
            instance.name,
            instance.memory,
            [_recollection(hit) for hit in hits],
            history,
            message,
            datetime.now(UTC),
            context_window=model.context_window,
            max_tokens=max_tokens,
            count=tokens.count,
            count_messages=tokens.count_messages,
        )
        return PreparedTurn(
            tenant,
            instance_id,
            message,
            prompt,
            {hit.doc.doc_id: hit for hit in hits},
            max_tokens,
            temperature,
            memories_unavailable=unavailable,
        )

    def complete(self, turn: PreparedTurn, actor: Actor) -> TurnResult:
        started = time.perf_counter()
        message_id = self._record_message(turn, actor)
        try:
            completion = self.model().complete(
                turn.prompt.messages, turn.max_tokens, turn.temperature
            )
        except ModelError as error:
            self._record_failure(turn, message_id, error, actor)
            _observe_failure(started, error)
            raise
        result = self._record_reply(turn, message_id, completion, actor)
        _observe(started, completion)
        return result

    def stream(self, turn: PreparedTurn, actor: Actor) -> Generator[str | TurnResult, None, None]:
        """Text deltas, then the `TurnResult`. Closing it early records the partial reply."""
        clock = time.perf_counter()
        message_id = self._record_message(turn, actor)
        parts: list[str] = []
        started = datetime.now(UTC)
        finished = False
        try:
            for piece in self.model().stream(
                turn.prompt.messages, turn.max_tokens, turn.temperature
            ):
                if isinstance(piece, Completion):
                    finished = True
                    result = self._record_reply(turn, message_id, piece, actor)
                    _observe(clock, piece)
                    yield result
                else:
                    parts.append(piece)
                    yield piece
        except ModelError as error:
            finished = True  # the failure is the record, with what was streamed in its message
            self._record_failure(turn, message_id, error, actor)
            _observe_failure(clock, error)
            raise
        finally:
            if not finished:
                self._record_interrupted(turn, message_id, "".join(parts), started, actor)

    def _record_message(self, turn: PreparedTurn, actor: Actor) -> UUID:
        return self.app.record_message(
            turn.tenant, turn.instance_id, turn.message, actor, turn.metadata
        )

    def _record_reply(
        self, turn: PreparedTurn, message_id: UUID, completion: Completion, actor: Actor
    ) -> TurnResult:
        reply_id, version = self.app.record_reply(
            turn.tenant,
            turn.instance_id,
            Reply(
                in_reply_to=message_id,
                content=completion.text,
                model=completion.model,
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                latency_ms=round(completion.latency_ms),
                memory_ids=tuple(turn.prompt.memories_used),
                prompt_sha256=turn.prompt.sha256,
            ),
            actor,
        )
        return TurnResult(
            reply=completion.text,
            version=version,
            message_id=message_id,
            reply_id=reply_id,
            model=completion.model,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            memories_used=[turn.recalled[i] for i in turn.prompt.memories_used],
            memories_unavailable=turn.memories_unavailable,
        )

    def _record_failure(
        self, turn: PreparedTurn, message_id: UUID, error: ModelError, actor: Actor
    ) -> None:
        self.app.record_failure(
            turn.tenant, turn.instance_id, message_id, error.status, error.message, actor
        )

    def _record_interrupted(
        self, turn: PreparedTurn, message_id: UUID, partial: str, started: datetime, actor: Actor
    ) -> None:
        """The client went away mid-stream: keep what it was shown."""
        if not partial:
            return
        elapsed = (datetime.now(UTC) - started).total_seconds() * 1000
        self.app.record_reply(
            turn.tenant,
            turn.instance_id,
            Reply(
                in_reply_to=message_id,
                content=partial,
                model=self.model().model,
                prompt_tokens=turn.prompt.tokens,
                completion_tokens=tokens.count(partial),
                latency_ms=round(elapsed),
                memory_ids=tuple(turn.prompt.memories_used),
                prompt_sha256=turn.prompt.sha256,
                interrupted=True,
            ),
            actor,
        )


def _observe(started: float, completion: Completion) -> None:
    metrics.model_called(ok=True)
    metrics.CHAT_SECONDS.labels("ok").observe(time.perf_counter() - started)
    metrics.MODEL_SECONDS.labels("ok").observe(completion.latency_ms / 1000)
    metrics.TOKENS.labels("prompt").inc(completion.prompt_tokens)
    metrics.TOKENS.labels("completion").inc(completion.completion_tokens)


def _observe_failure(started: float, error: ModelError) -> None:
    elapsed = time.perf_counter() - started
    outcome = "timeout" if error.status == 504 else "error"
    metrics.model_called(ok=False)
    metrics.CHAT_SECONDS.labels(outcome).observe(elapsed)
    metrics.MODEL_SECONDS.labels(outcome).observe(elapsed)


def _recollection(hit: Hit) -> Recollection:
    doc = hit.doc
    role = doc.metadata.get("role") if doc.kind == "message" else None
    return Recollection(
        doc.text,
        doc.occurred_at,
        doc.kind,
        doc.doc_id,
        hit.score,
        str(role) if role else None,
    )
