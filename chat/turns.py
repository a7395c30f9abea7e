"""One chat turn with an instance: recall, assemble the prompt, ask the model, record it all.

Every turn leaves events on the instance: the user's message first (so it is never lost), and
the tool results a client sent back after it (each once, however often it is resent), then
either the reply (with the model, its usage and latency, the memories in the prompt and a hash
of the exact prompt) or the failure. A streamed reply that the client abandons is recorded as
far as it got, marked interrupted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import httpx

from alma import metrics
from alma.chat import history as chat_history
from alma.chat.lore import Book, activate
from alma.chat.prompt import (
    LoreEntry,
    Message,
    Persona,
    Prompt,
    Recollection,
    Turn,
    build_prompt,
)
from alma.domain import Actor, Alma, Character, Instance, InvalidInput, Reply, ToolResult
from alma.domain.rules import valid_message
from alma.llm import tokens
from alma.llm.client import Completion, ModelClient, ModelError, Sampling
from alma.projections import Hit, MemoryIndex
from alma.projections.lore_meaning import Meaning

log = logging.getLogger(__name__)
# A client's resent history is matched to at most this many of the instance's recorded turns.
MATCHED_TURNS = 500
DEFAULT_REPLY_TOKENS = 512  # a turn's max_tokens when the client gives none


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
    name: str | None = None  # who says the user's message (OpenAI's field), if the client says
    memories_unavailable: bool = False  # the vector store was down: answered without recall
    memories_behind: bool = False  # the index lacked the instance's latest writes: without them
    sampling: Sampling | None = None  # stop, seed, top_p, ...: passed to the model as they are
    prefill: str = ""  # the start of the reply, written by the client: the model continues it
    # The user's message when it is already recorded: a reply the client has the model continue,
    # or a tool exchange it goes on from.
    answered: UUID | None = None
    lore: tuple[LoreEntry, ...] = ()  # the activated lorebook entries offered to the prompt
    tool_results: tuple[ToolResult, ...] = ()  # the exchange's, recorded after the message
    # The id the reply will be recorded with, known before the model answers (a streamed
    # Responses answer names it first).
    reply_id: UUID = field(default_factory=uuid4)

    @property
    def memory_scores(self) -> tuple[float, ...]:
        """The score each memory in the prompt was recalled with, in `memories_used`' order."""
        return tuple(self.recalled[i].score for i in self.prompt.memories_used)


@dataclass(frozen=True)
class TurnResult:
    reply: str  # the whole reply, with the start the client wrote (`PreparedTurn.prefill`)
    version: int
    message_id: UUID
    reply_id: UUID
    model: str
    prompt_tokens: int
    completion_tokens: int
    memories_used: list[Hit]
    memories_unavailable: bool = False
    memories_behind: bool = False
    finish_reason: str = "stop"  # the model's: "length" when max_tokens cut the reply short
    text: str = ""  # what the model wrote in this turn (the reply less the client's start)
    tool_calls: tuple[dict[str, Any], ...] = ()  # the tools the model called (OpenAI's shape)
    lore_used: list[LoreEntry] = field(default_factory=list)


class Chat:
    def __init__(
        self,
        app: Alma,
        index: MemoryIndex,
        index_wait: Callable[[int, float], bool],
        model: Callable[[], ModelClient],
        memories: int = 8,
        history_turns: int = 20,
        memory_wait_s: float = 2.0,
    ) -> None:
        """`index_wait(position, timeout)`: True once the index has processed the log up to
        `position`, False when `timeout` seconds pass first (`Follower.wait`)."""
        self.app = app
        self.index = index
        self.meaning = Meaning(index.embedder)
        self.index_wait = index_wait
        self.model = model
        self.memories = memories
        self.history_turns = history_turns
        self.memory_wait_s = memory_wait_s

    def prepare(
        self,
        tenant: str,
        instance_id: UUID,
        message: str,
        max_tokens: int,
        temperature: float,
        history: Sequence[Turn] | None = None,
        name: str | None = None,
        *,
        instructions: str = "",
        prefill: str = "",
        exchange: Sequence[Mapping[str, Any]] = (),
        tool_results: Sequence[ToolResult] = (),
        sampling: Sampling | None = None,
        instance: Instance | None = None,
    ) -> PreparedTurn:
        """Checks the input and builds the prompt. The recent turns are the instance's own, as
        recorded up to now; `history` (an OpenAI-style client sends its own) stands in for them,
        each turn matched to the recorded one. Retrieval waits, at most `memory_wait_s`, for the
        index to hold the instance's latest write, and leaves out what the prompt holds.
        `instructions` (the client's system message) follow the persona; `prefill` is the start
        of the reply, continued by the model; `exchange`, the model's tool calls since `message`
        and their results, which it goes on from (`tool_results`, those results, are recorded
        with the turn, each once). When `message` is the instance's last recorded message from
        the user, the reply then answers it and it is not recorded again. `instance`: the
        instance as the caller just loaded it (read again otherwise)."""
        valid_message("user", message)
        model = self.model()
        if max_tokens >= model.context_window:
            raise InvalidInput(
                f"max_tokens must be below the model's context of {model.context_window}",
                "max_tokens",
            )
        after = (
            [{"role": "assistant", "content": prefill}] if prefill else list(map(dict, exchange))
        )
        embedding = self.index.embed_soon(message)  # while the instance and its turns load
        instance = instance or self.app.instance(tenant, instance_id)
        character = self.app.character(tenant, instance.character_id)
        recent = max(self.history_turns, min(len(history or ()), MATCHED_TURNS))
        said = self.app.last_messages(instance_id, recent)
        held = chat_history.history(said, history, message)
        behind = not self.index_wait(
            self.app.written_up_to(instance_id, held.ids), self.memory_wait_s
        )
        if behind:
            log.warning("memory index behind instance %s: chatting without its newest", instance_id)
            metrics.MEMORIES_BEHIND.inc()
        try:
            hits = self.index.search(
                instance_id,
                message,
                k=self.memories,
                exclude=held.recall_filter(),
                embedding=embedding,
            )
            unavailable = False
        except httpx.TransportError as error:  # the Chroma server is down: answer without recall
            log.warning("vector store unreachable, chatting without memories: %s", error)
            metrics.MEMORIES_UNAVAILABLE.inc()
            hits, unavailable = [], True
        books = [
            Book(book.id, book.version, book.settings, list(book.entries.values()))
            for book in self.app.lorebooks_in_use(tenant, instance)
        ]
        lore = activate(
            books,
            [t.content for t in held.turns] + [message],
            tokens.count,
            lambda texts: self.meaning.scores(embedding.result(), texts),
            self.meaning.min_score,
        )
        prompt = build_prompt(
            _persona(character),
            instance.name,
            instance.memory,
            [_recollection(hit) for hit in hits],
            held.turns,
            message,
            datetime.now(UTC),
            context_window=model.context_window,
            max_tokens=max_tokens,
            count=tokens.count,
            count_messages=tokens.count_messages,
            user_name=name or instance.user_name,
            instructions=instructions,
            after=after,
            lore=lore,
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
            memories_behind=behind,
            name=name,
            sampling=sampling,
            prefill=prefill,
            answered=_last_from_user(said, message) if prefill or exchange else None,
            lore=tuple(lore),
            tool_results=tuple(tool_results),
        )

    def opening(self, tenant: str, instance_id: UUID, max_tokens: int) -> list[Message]:
        """The start of the instance's next prompt, which no message changes: the persona with
        the memory text, the conversation as recorded up to now, and today's date (what
        `prepare` builds before the recollections and the message; with no lorebook entries,
        which the message activates)."""
        model = self.model()
        instance = self.app.instance(tenant, instance_id)
        character = self.app.character(tenant, instance.character_id)
        said = self.app.last_messages(instance_id, self.history_turns)
        prompt = build_prompt(
            _persona(character),
            instance.name,
            instance.memory,
            [],
            chat_history.history(said, None, "").turns,
            "",
            datetime.now(UTC),
            context_window=model.context_window,
            max_tokens=max_tokens,
            count=tokens.count,
            count_messages=tokens.count_messages,
            user_name=instance.user_name,
        )
        return prompt.messages[: prompt.stable + 1]  # and the date, the same all day

    def complete(self, turn: PreparedTurn, actor: Actor) -> TurnResult:
        started = time.perf_counter()
        message_id = self._record_message(turn, actor)
        try:
            completion = self.model().complete(
                turn.prompt.messages, turn.max_tokens, turn.temperature, turn.sampling
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
                turn.prompt.messages, turn.max_tokens, turn.temperature, turn.sampling
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
        """The user's message (unless it is recorded already), then the tool results that
        follow it: the turn is on record before the model is asked."""
        message_id = turn.answered
        if message_id is None:
            message_id = self.app.record_message(
                turn.tenant, turn.instance_id, turn.message, actor, turn.metadata, turn.name
            )
        if turn.tool_results:
            self.app.record_tool_results(
                turn.tenant, turn.instance_id, message_id, turn.tool_results, actor
            )
        return message_id

    def _record_reply(
        self, turn: PreparedTurn, message_id: UUID, completion: Completion, actor: Actor
    ) -> TurnResult:
        reply = turn.prefill + completion.text
        if completion.tool_calls:  # recorded as what the character did, in words a reader follows
            reply = "\n".join([*filter(None, [reply]), *map(_called, completion.tool_calls)])
        reply_id, version = self.app.record_reply(
            turn.tenant,
            turn.instance_id,
            Reply(
                in_reply_to=message_id,
                content=reply,
                model=completion.model,
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                latency_ms=round(completion.latency_ms),
                memory_ids=tuple(turn.prompt.memories_used),
                memory_scores=turn.memory_scores,
                prompt_sha256=turn.prompt.sha256,
                lore_ids=tuple(turn.prompt.lore_used),
                tool_calls=completion.tool_calls,
                id=turn.reply_id,
            ),
            actor,
        )
        return TurnResult(
            reply=reply,
            version=version,
            message_id=message_id,
            reply_id=reply_id,
            model=completion.model,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            memories_used=[turn.recalled[i] for i in turn.prompt.memories_used],
            memories_unavailable=turn.memories_unavailable,
            memories_behind=turn.memories_behind,
            finish_reason=completion.finish_reason,
            text=completion.text,
            tool_calls=completion.tool_calls,
            lore_used=[e for e in turn.lore if e.id in turn.prompt.lore_used],
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
        partial = turn.prefill + partial
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
                memory_scores=turn.memory_scores,
                prompt_sha256=turn.prompt.sha256,
                interrupted=True,
                lore_ids=tuple(turn.prompt.lore_used),
                id=turn.reply_id,
            ),
            actor,
        )


def _observe(started: float, completion: Completion) -> None:
    metrics.model_called(ok=True)
    metrics.CHAT_SECONDS.labels("ok").observe(time.perf_counter() - started)
    metrics.MODEL_SECONDS.labels("ok").observe(completion.latency_ms / 1000)
    metrics.TOKENS.labels("prompt").inc(completion.prompt_tokens)
    metrics.TOKENS.labels("prompt_cached").inc(completion.cached_tokens)
    metrics.TOKENS.labels("completion").inc(completion.completion_tokens)


def _observe_failure(started: float, error: ModelError) -> None:
    elapsed = time.perf_counter() - started
    outcome = "timeout" if error.status == 504 else "error"
    metrics.model_called(ok=False)
    metrics.CHAT_SECONDS.labels(outcome).observe(elapsed)
    metrics.MODEL_SECONDS.labels(outcome).observe(elapsed)


def _persona(character: Character) -> Persona:
    return Persona(
        character=character.name,
        description=character.description,
        personality=character.personality,
        scenario=character.scenario,
        example_dialogue=character.example_dialogue,
        system_prompt=character.system_prompt,
        post_history_instructions=character.post_history_instructions,
    )


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
        doc.speaker,
    )


def _last_from_user(said: Sequence[Any], message: str) -> UUID | None:
    """The id of the instance's last recorded message from the user, if it says `message`."""
    for event in reversed(said):
        if getattr(event, "role", None) == "user":
            same = chat_history.line(event.content) == chat_history.line(message)
            return UUID(str(event.message_id)) if same else None
    return None


def _called(call: Mapping[str, Any]) -> str:
    """`weather({"city": "Lisboa"})`: a tool call as the reply records it."""
    function = call.get("function") or {}
    return f"{function.get('name', '')}({function.get('arguments', '')})"
