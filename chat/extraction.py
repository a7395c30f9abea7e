"""What the memory process asks the model, and how it reads the answers strictly: memory
operations (add, revise, forget) from a stretch of conversation, and rolling summaries."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, replace
from typing import Any

from alma.domain import InvalidInput
from alma.domain.rules import valid_importance, valid_snippet
from alma.llm import tokens
from alma.llm.client import Messages

MAX_OPERATIONS = 50
FACTS_MAX_TOKENS = 800
SUMMARY_MAX_TOKENS = 400
_INSTRUCTIONS_ROOM = 700  # tokens for our own instructions and message framing
_FENCED = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL)

FACTS_INSTRUCTION = """\
You keep the long-term memory of {name}, a role-play character, about the person {name} talks \
with and what happens between them.
Read the new conversation and decide what is worth remembering for months: who the user is, \
the people, places, dates, plans, promises, likes and dislikes, and what happened. Leave out \
greetings, small talk and what is only true for a moment.
Compare with the existing memories:
- "add" a durable fact that is not remembered yet;
- "revise" an existing memory that the conversation contradicts or updates: give its id and \
the whole corrected text;
- "forget" an existing memory the user asks to forget, or that stopped being true with \
nothing to replace it.
Write every memory as one short sentence that stands on its own, naming people instead of \
using pronouns, in the language of the conversation (Spanish stays Spanish, English stays \
English). importance goes from 0 to 1 (1: essential to who the user is). When an added fact \
is about one of the named speakers of the conversation (what they did, have, like, plan or \
said), give that name as its "speaker" (only on "add").
Answer with JSON only: an array of operations, [] when nothing changes. For example:
[{{"op": "add", "text": "Su hermana Lucía es enfermera en Triana", "importance": 0.7}},
 {{"op": "add", "text": "Caroline went to a support group", "speaker": "Caroline"}},
 {{"op": "revise", "id": "<an id from the existing memories>", "text": "Lives in Madrid now"}},
 {{"op": "forget", "id": "<an id from the existing memories>"}}]"""

SUMMARY_INSTRUCTION = """\
You keep the long-term memory of {name}, a role-play character. Summarise the stretch of \
conversation below in a short paragraph: what was said and done, names, places, dates, \
feelings and decisions, so that {name} could recall it months later. Write it in the \
language of the conversation (Spanish stays Spanish, English stays English). The previous \
summary is there for context only: summarise the new stretch. Answer with the summary alone."""


class Malformed(ValueError):
    """The model's answer is not what was asked for; nothing of it is used."""


@dataclass(frozen=True)
class Line:
    """One message of the conversation as the model sees it."""

    role: str
    content: str
    name: str | None = None  # who said it, when known


@dataclass(frozen=True)
class Operation:
    op: str  # "add" | "revise" | "forget"
    text: str | None = None
    memory_id: str | None = None  # one of the ids offered
    importance: float | None = None
    speaker: str | None = None  # whose fact it is: one of the conversation's named speakers

    def as_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "text": self.text,
            "memory_id": self.memory_id,
            "importance": self.importance,
            "speaker": self.speaker,
        }

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Operation:
        """An operation as `as_dict` stored it (earlier versions stored no speaker)."""
        return cls(
            data["op"], data["text"], data["memory_id"], data["importance"], data.get("speaker")
        )


_KEYS = {
    "add": ({"op", "text"}, {"importance", "speaker"}),
    "revise": ({"op", "id", "text"}, {"importance"}),
    "forget": ({"op", "id"}, set[str]()),
}


def facts_prompt(
    name: str,
    memories: Sequence[tuple[str, str]],
    conversation: Sequence[Line],
    context_window: int,
) -> Messages:
    """`memories` are (id, text) pairs the model may revise or forget."""
    room = max(200, context_window - FACTS_MAX_TOKENS - _INSTRUCTIONS_ROOM)
    each = max(20, room // 3 // max(1, len(memories)))
    remembered = "\n".join(f"{i}: {_oneline(tokens.truncate(t, each))}" for i, t in memories)
    return [
        {"role": "system", "content": FACTS_INSTRUCTION.format(name=name)},
        {
            "role": "user",
            "content": f"Existing memories (id: text):\n{remembered or '(none)'}\n\n"
            f"New conversation:\n{_transcript(name, conversation, room * 2 // 3)}",
        },
    ]


def summary_prompt(
    name: str, previous: str | None, conversation: Sequence[Line], context_window: int
) -> Messages:
    room = max(200, context_window - SUMMARY_MAX_TOKENS - _INSTRUCTIONS_ROOM)
    before = tokens.truncate(previous, room // 4) if previous else "(none)"
    return [
        {"role": "system", "content": SUMMARY_INSTRUCTION.format(name=name)},
        {
            "role": "user",
            "content": f"Previous summary:\n{before}\n\n"
            f"Conversation:\n{_transcript(name, conversation, room * 3 // 4)}",
        },
    ]


def read_operations(
    answer: str, offered: set[str], speakers: Set[str] = frozenset()
) -> tuple[list[Operation], int]:
    """The operations in the model's answer, and how many were refused: revising or forgetting
    a memory that was not offered, or a text the memory rules refuse. A speaker that is not one
    of `speakers` (the conversation's names) is left out, the fact kept. An answer that is not a
    JSON array of well-formed operations raises `Malformed`."""
    items = _json_array(answer)
    operations: list[Operation] = []
    refused = 0
    for item in items:
        operation = _operation(item)
        if operation.speaker is not None and operation.speaker not in speakers:
            operation = replace(operation, speaker=None)
        try:
            if operation.memory_id is not None and operation.memory_id not in offered:
                raise InvalidInput("not one of the memories offered", "id")
            if operation.text is not None:
                valid_snippet(operation.text)
            if operation.importance is not None:
                valid_importance(operation.importance)
        except InvalidInput:
            refused += 1
            continue
        operations.append(operation)
    return operations, refused


def read_summary(answer: str) -> str:
    try:
        return valid_snippet(answer.strip())
    except InvalidInput as error:
        raise Malformed(f"the summary is unusable: {error}") from None


def _json_array(answer: str) -> list[Any]:
    text = answer.strip()
    fenced = _FENCED.fullmatch(text)
    if fenced:
        text = fenced[1]
    try:
        data = json.loads(text)
    except ValueError:
        raise Malformed("the answer is not JSON") from None
    if isinstance(data, dict) and set(data) == {"operations"}:
        data = data["operations"]  # what models in JSON-object mode tend to send
    if not isinstance(data, list):
        raise Malformed("the answer is not a JSON array")
    if len(data) > MAX_OPERATIONS:
        raise Malformed(f"more than {MAX_OPERATIONS} operations")
    return data


def _operation(item: Any) -> Operation:
    if not isinstance(item, dict) or item.get("op") not in _KEYS:
        raise Malformed("an operation is not an object with op add, revise or forget")
    op = item["op"]
    required, optional = _KEYS[op]
    if not required <= set(item) <= required | optional:
        raise Malformed(f"a {op} operation has the wrong fields")
    text, memory_id, importance = item.get("text"), item.get("id"), item.get("importance")
    if text is not None and not isinstance(text, str):
        raise Malformed("a text is not a string")
    if memory_id is not None and not isinstance(memory_id, str):
        raise Malformed("an id is not a string")
    if importance is not None and (
        isinstance(importance, bool) or not isinstance(importance, int | float)
    ):
        raise Malformed("an importance is not a number")
    speaker = item.get("speaker")
    if speaker is not None and not isinstance(speaker, str):
        raise Malformed("a speaker is not a string")
    return Operation(op, text, memory_id, importance, speaker)


def _transcript(name: str, conversation: Sequence[Line], room: int) -> str:
    each = max(20, room // max(1, len(conversation)))
    speaker = {"user": "user", "assistant": name, "system": "narrator"}
    return "\n".join(
        f"{line.name or speaker.get(line.role, line.role)}: "
        f"{_oneline(tokens.truncate(line.content, each))}"
        for line in conversation
    )


def _oneline(text: str) -> str:
    return " ".join(text.split())
