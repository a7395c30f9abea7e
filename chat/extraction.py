"""What the memory process asks the model, and how it reads the answers strictly: memory
operations (add, revise, forget) from a stretch of conversation, and rolling summaries.

A hosted model gets the whole task (`operations_extraction`). The local model, a 1.5B, gets a
smaller one it can do (`fact_list_extraction`): a note on each thing the user stated, labelled
with its kind, shown how by examples in the user's language, its answer held to a JSON schema by
llama.cpp's grammar (`fact_list_format`); its notes but small talk are added."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, replace
from typing import Any

from alma.domain import InvalidInput
from alma.domain.rules import valid_importance, valid_snippet
from alma.language import guess_language
from alma.llm import tokens
from alma.llm.client import Messages, Sampling
from alma.projections.ranking import fold, terms

MAX_OPERATIONS = 50
FACTS_MAX_TOKENS = 800
SUMMARY_MAX_TOKENS = 400
_INSTRUCTIONS_ROOM = 700  # tokens for our own instructions and message framing
_FENCED = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL)
_EVERY_NOTE = {"usuar", "user"}  # the stems every note has ("El usuario", "The user")
_QUESTION = re.compile(r"¿[^¿?]*\?|[^.!?¡¿…\n]*\?")

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


FACT_LIST_MAX_TOKENS = 400  # six notes of 160 characters, labelled, fit
FACT_LIST_MAX = 6  # notes in one answer
FACT_MAX_CHARS = 160
# What a note is about. The model labels every sentence, small talk too, rather than leaving
# some out: a 1.5B labels far better than it omits. Small talk is then dropped here.
KINDS = ("small talk", "person", "work", "home", "pet", "health", "date", "plan", "taste")
SMALL_TALK = "small talk"
_LANGUAGES = {"es": "Spanish", "en": "English"}

FACT_LIST_INSTRUCTION = """\
You take notes about the user of a role-play chat. Note each thing the user says, as one short \
sentence in the user's language (Spanish notes for Spanish, English notes for English) that \
starts with whom it is about: "El usuario", "The user" or a person's name, and label it with \
its kind: "person" (family, friends, partners), "work", "home", "pet", "health", "date" \
(birthdays, anniversaries), "plan", "taste" (likes and dislikes), or "small talk" (greetings, \
the weather, questions, how they feel right now). Answer with a JSON list of notes."""

# Shown to the local model as earlier requests and its answers, in the language of the request
# (it follows examples better than rules, and with English ones it wrote a Spanish speaker's
# notes in English): what the user said, and the notes.
FACT_LIST_EXAMPLES: dict[str, tuple[tuple[str, list[tuple[str, str]]], ...]] = {
    "es": (
        (
            "Buenos días.\nMi padre Antonio es panadero en Écija y el domingo cumple setenta años.",
            [
                ("small talk", "El usuario saluda"),
                ("person", "El padre del usuario, Antonio, es panadero en Écija"),
                ("date", "Antonio, el padre del usuario, cumple setenta años el domingo"),
            ],
        ),
        (
            "¡Qué frío hace hoy!\nEstoy estudiando derecho en Granada y no soporto el pescado.",
            [
                ("small talk", "El usuario comenta el frío"),
                ("work", "El usuario estudia derecho en Granada"),
                ("taste", "Al usuario no le gusta el pescado"),
            ],
        ),
        ("Hola. Qué buen día hace.", [("small talk", "El usuario saluda")]),
    ),
    "en": (
        (
            "Morning! Cold out there.\nI work night shifts as a nurse, and I'm terrified of dogs.",
            [
                ("small talk", "The user mentions the cold"),
                ("work", "The user works night shifts as a nurse"),
                ("taste", "The user is terrified of dogs"),
            ],
        ),
        (
            "Great news: my son Leo starts school in September.\n"
            "And I'm learning to play the guitar.",
            [
                ("person", "The user's son Leo starts school in September"),
                ("plan", "The user is learning to play the guitar"),
            ],
        ),
        ("Hi! Sunny day today.", [("small talk", "The user says hi")]),
    ),
}


class Malformed(ValueError):
    """The model's answer is not what was asked for; nothing of it is used. `reason` names how,
    for the metrics: empty, not_json, wrong_shape, too_many."""

    def __init__(self, message: str, reason: str = "wrong_shape") -> None:
        super().__init__(message)
        self.reason = reason


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


@dataclass(frozen=True)
class Extraction:
    """One request for memory operations: what the model is sent, and how its answer is read
    (`read` gives the operations and how many were refused, or raises `Malformed`)."""

    messages: Messages
    max_tokens: int
    sampling: Sampling | None
    read: Callable[[str], tuple[list[Operation], int]]


def operations_extraction(
    name: str, memories: Sequence[tuple[str, str]], conversation: Sequence[Line], window: int
) -> Extraction:
    """A hosted model's: add, revise or forget, with the memories it may revise or forget."""
    speakers = {line.name for line in conversation if line.name}
    return Extraction(
        facts_prompt(name, memories, conversation, window),
        FACTS_MAX_TOKENS,
        None,
        lambda answer: read_operations(answer, {i for i, _ in memories}, speakers),
    )


def fact_list_extraction(name: str, conversation: Sequence[Line], window: int) -> Extraction | None:
    """The local model's: notes on what the user stated to `name` (`_statements`; the
    character's words are left out: in a live chat the local model wrote them itself, and read
    back they turned into facts of small talk), its answer held to `fact_list_format`. None: the
    user stated nothing."""
    said = [
        replace(line, content=statements)
        for line in conversation
        if line.role == "user" and (statements := _statements(line.content, name))
    ]
    if not said:
        return None
    return Extraction(
        fact_list_prompt(said, window),
        FACT_LIST_MAX_TOKENS,
        {"response_format": fact_list_format()},
        lambda answer: read_fact_list(
            answer, " ".join(line.content for line in said), _speaker(said)
        ),
    )


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


def fact_list_prompt(said: Sequence[Line], context_window: int) -> Messages:
    """The local model's task: notes on what the user `said` (their statements), after worked
    examples in the user's language. The instructions and examples come first and are the same
    for every request in one language, so llama.cpp reuses what it read of them."""
    language = guess_language(" ".join(line.content for line in said), "")
    shown: list[dict[str, str]] = [{"role": "system", "content": FACT_LIST_INSTRUCTION}]
    for words, notes in FACT_LIST_EXAMPLES.get(language, FACT_LIST_EXAMPLES["en"]):
        answer = [{"kind": kind, "text": text} for kind, text in notes]
        shown += [
            {"role": "user", "content": f"{_who(None, language)}:\n{words}"},
            {"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)},
        ]
    room = max(200, context_window - FACT_LIST_MAX_TOKENS - tokens.count_messages(shown) - 20)
    each = max(20, room // max(1, len(said)))
    words = "\n".join(_oneline(tokens.truncate(line.content, each)) for line in said)
    return [*shown, {"role": "user", "content": f"{_who(_speaker(said), language)}:\n{words}"}]


def fact_list_format() -> dict[str, Any]:
    """OpenAI's `response_format` that llama.cpp turns into a grammar: a short list of short
    notes, each labelled with one of `KINDS` before it is written."""
    note = {
        "type": "object",
        "properties": {
            "kind": {"enum": list(KINDS)},
            "text": {"type": "string", "minLength": 1, "maxLength": FACT_MAX_CHARS},
        },
        "required": ["kind", "text"],
        "additionalProperties": False,
    }
    schema = {"type": "array", "items": note, "maxItems": FACT_LIST_MAX}
    return {"type": "json_schema", "json_schema": {"name": "notes", "schema": schema}}


def read_fact_list(
    answer: str, stated: str, speaker: str | None = None
) -> tuple[list[Operation], int]:
    """The local model's notes on what the user `stated`, as `add` operations of `speaker` (the
    user's name, if any), checked as `read_operations` checks them. Left out: small talk (a note
    labelled so, and the same note under another label), a note said twice but once, and, as
    refused, a note with no word of what the user stated (the 1.5B made up "El usuario está
    sentado en su sofá" from "Gracias. Te cuento:")."""
    items = _json_array(answer)
    for item in items:
        if not (isinstance(item, dict) and set(item) == {"kind", "text"}):
            raise Malformed("a note is not an object with a kind and a text")
        if not (item["kind"] in KINDS and isinstance(item["text"], str)):
            raise Malformed("a note's kind is not one asked for, or its text is no string")
    small_talk = {fold(item["text"]) for item in items if item["kind"] == SMALL_TALK}
    notes: dict[str, str] = {}  # by their folded text
    for item in items:
        notes.setdefault(fold(item["text"]), item["text"])
    kept = [text for key, text in notes.items() if key not in small_talk]
    words = _stems(stated)
    grounded = [text for text in kept if (_stems(text) - _EVERY_NOTE) & words]
    operations, refused = _checked(
        [{"op": "add", "text": text, "speaker": speaker} for text in grounded],
        set(),
        {speaker} if speaker else set(),
    )
    return operations, refused + len(kept) - len(grounded)


def _stems(text: str) -> set[str]:
    """The first five letters of `text`'s words of four or more, folded, stopwords aside: one
    stem for "mudé" and "mudó", "alergia" and "alérgico"."""
    return {word[:5] for word in terms(text) if len(word) >= 4}


def _who(user: str | None, language: str) -> str:
    """Who said what follows, and in which language when it shows (told nothing, a 1.5B wrote
    a Spanish speaker's notes in English)."""
    said = f"{user} (the user) said" if user else "The user said"
    return f"{said}, in {_LANGUAGES[language]}" if language in _LANGUAGES else said


def _statements(text: str, name: str) -> str:
    """What the user stated: `text` without its questions (asked of the character, they came
    back as notes: "¿me preparas algo para la tos?") and without `name` where it addresses the
    character ("Rosa, mi hermana..."), which the model read as the subject of the user's facts."""
    named = re.escape(name)
    text = re.sub(rf"\b{named}\s*,\s*|\s*,\s*{named}\b", "", text, flags=re.IGNORECASE)
    return _QUESTION.sub("", text).strip()


def _speaker(said: Sequence[Line]) -> str | None:
    """The user's name, when all of `said` is one person's."""
    names = {line.name for line in said}
    return names.pop() if len(names) == 1 else None


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
    return _checked(_json_array(answer), offered, speakers)


def _checked(
    items: list[Any], offered: set[str], speakers: Set[str]
) -> tuple[list[Operation], int]:
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
        reason = "wrong_shape" if answer.strip() else "empty"
        raise Malformed(f"the summary is unusable: {error}", reason) from None


def _json_array(answer: str) -> list[Any]:
    text = answer.strip()
    if not text:
        raise Malformed("the answer is empty", "empty")
    fenced = _FENCED.fullmatch(text)
    if fenced:
        text = fenced[1]
    try:
        data = json.loads(text)
    except ValueError:
        raise Malformed("the answer is not JSON", "not_json") from None
    if isinstance(data, dict) and set(data) == {"operations"}:
        data = data["operations"]  # what models in JSON-object mode tend to send
    if not isinstance(data, list):
        raise Malformed("the answer is not a JSON array")
    if len(data) > MAX_OPERATIONS:
        raise Malformed(f"more than {MAX_OPERATIONS} operations", "too_many")
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
