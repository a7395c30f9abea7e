"""Prompt assembly: the chat messages for one turn, filled by priority within the token budget.

The budget is the model's context window less the room kept for the reply (`max_tokens`). Parts
go in by priority: the persona (trimmed, longest fields first, only if it cannot fit whole; a
character's `post_history_instructions` are part of it, in a system message after the user's),
the new user message (always whole, or PromptTooLarge, with what follows it when the client sent
it: the start of the reply, or a tool exchange to go on from), the client's own instructions (an
OpenAI client's system message, a system message of their own after the persona's, trimmed to
what is left), the instance's own memory text (trimmed to what is left), the activated lorebook
entries (most important first, each whole or not at all; see chat/lore.py), the retrieved
recollections (most relevant first, each whole or not at all; in a system message of their own
just before the user's message) and the recent turns (newest first, whole, shown oldest first).
A part only gets room once every part above it is whole, so a lower priority never pushes out a
higher one.

Counting is injected (`count` for one text, `count_messages` for a message list, OpenAI's
accounting), which keeps this module pure. The persona is counted exactly; the parts below it are
priced one by one, which only guides the choices: BPE tokens can merge where parts are joined, so
the finished messages are counted with `count_messages` and trimmed from the lowest priority up
in the rare case the whole is over. Long texts are never encoded whole when a prefix settles it.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from alma.chat.macros import day as _day
from alma.chat.macros import fill
from alma.domain.errors import DomainError

CountText = Callable[[str], int]
CountMessages = Callable[[list[dict[str, Any]]], int]
Message = dict[str, Any]  # text, or a tool exchange's message (its `tool_calls`, `tool_call_id`)
_Priced = tuple[Message, int]  # a message with the tokens it adds to the request

ELLIPSIS = "…"
_ZWJ = "\u200d"
# A card's system prompt stands for the default instruction with this macro (V2 spec).
_ORIGINAL = re.compile(r"\{\{\s*original\s*\}\}", re.IGNORECASE)
_ROLES = ("user", "assistant")
_MEMORY_HEADING = "## Your own memory"
_RECOLLECTIONS_HEADING = "## Things you remember"
# What a message adds to a request beyond its content (OpenAI's accounting), for pricing.
_MESSAGE_OVERHEAD = 4
# Persona fields that may be trimmed when the persona alone does not fit.
_TRIMMABLE = (
    "system_prompt",
    "description",
    "personality",
    "scenario",
    "example_dialogue",
    "post_history_instructions",
)


@dataclass(frozen=True)
class Persona:
    """The character an instance is a variation of, as the prompt needs it."""

    character: str
    description: str = ""
    personality: str = ""
    scenario: str = ""
    example_dialogue: str = ""
    system_prompt: str = ""
    post_history_instructions: str = ""  # a card's: after the conversation, last in the prompt


@dataclass(frozen=True)
class Recollection:
    """One memory retrieved for this message (a snippet, a past message or a piece of the
    instance's memory text), with the relevance score the retrieval gave it."""

    text: str
    when: datetime
    kind: str  # "memory" | "message" | "memory_text", as the memory index's Doc.kind
    id: str
    score: float
    role: str | None = None  # who said it, for a past message ("user" | "assistant")
    speaker: str | None = None  # who said it by name, when known (shown instead of the role)


@dataclass(frozen=True)
class LoreEntry:
    """An activated lorebook entry: where it goes (before or after the character's description
    in the system message, or as a system message `depth` messages from the end of the
    conversation), its place among its neighbours (`order`, lower first) and how much it matters
    when room runs out (`priority`, higher kept first; constant entries before all)."""

    id: str
    content: str
    position: str  # "before_char" | "after_char" | "at_depth"
    depth: int = 4
    order: int = 100
    priority: int = 100
    constant: bool = False


@dataclass(frozen=True)
class Turn:
    """One message of the recent conversation."""

    role: str  # "user" | "assistant"
    content: str
    when: datetime | None = None


@dataclass(frozen=True)
class Prompt:
    """The messages to send, what went into them, and a hash the audit can quote."""

    messages: list[Message]
    tokens: int
    budget: int
    memories_used: list[str]
    turns_used: int
    lore_used: list[str]
    truncated: list[str]  # the parts that were cut short: persona field names, "memory_text"
    sha256: str
    # How many of `messages` come before the first that is this turn's own (the date, the
    # recollections, the message): the start the conversation's next turn shares with this one.
    stable: int = 1


class PromptTooLarge(DomainError):
    """The user's message cannot fit beside the smallest persona within the budget."""

    def __init__(self, limit: int, tokens: int, budget: int) -> None:
        super().__init__(
            f"the message has {tokens} tokens; at most {limit} fit in this model's context "
            f"({budget} tokens for the prompt once the reply's room is kept)"
        )
        self.limit = limit
        self.tokens = tokens
        self.budget = budget


@dataclass
class _Parts:
    """What the system message holds at one stage of the filling."""

    instance: str
    persona: Persona
    own_instruction: bool  # the character brings a system prompt: it replaces the default
    today: str
    last_talk: str | None
    instructions: str = ""  # the client's own system message, shown after the persona's
    memory_text: str = ""
    recollections: list[Recollection] = field(default_factory=list)
    lore: list[LoreEntry] = field(default_factory=list)


def build_prompt(
    persona: Persona,
    instance_name: str,
    memory_text: str,
    recollections: Sequence[Recollection],
    turns: Sequence[Turn],
    user_message: str,
    now: datetime,
    *,
    context_window: int,
    max_tokens: int,
    count: CountText,
    count_messages: CountMessages,
    user_name: str | None = None,
    instructions: str = "",
    after: Sequence[Message] = (),
    lore: Sequence[LoreEntry] = (),
) -> Prompt:
    """The messages for one turn; `tokens` (by `count_messages`) never exceeds
    `context_window - max_tokens`. `turns` are the recent conversation, oldest first, without the
    new message. The persona's macros (`alma.chat.macros`) are filled with the instance's name
    and `user_name` (default "User"). `instructions`: the client's own system message; `after`:
    what follows the new message, for the model to go on from (the start of the reply, or the
    model's tool calls and their results), both from an OpenAI client. Raises PromptTooLarge
    when the user message cannot fit even beside the smallest persona, and ValueError on a
    budget that is not positive or a turn with an unknown role."""
    budget = context_window - max_tokens
    if budget <= 0:
        raise ValueError(f"max_tokens ({max_tokens}) leaves no room in {context_window} tokens")
    for turn in turns:
        if turn.role not in _ROLES:
            raise ValueError(f"a turn's role must be user or assistant, not {turn.role!r}")

    persona = replace(
        persona,
        **{f: fill(getattr(persona, f), instance_name, user_name, now) for f in _TRIMMABLE},
    )
    last = next((t.when for t in reversed(turns) if t.when is not None), None)
    parts = _Parts(
        instance=instance_name,
        persona=persona,
        own_instruction=bool(persona.system_prompt.strip()),
        today=_day(now),
        last_talk=_day(last) if last is not None and _day(last) != _day(now) else None,
    )
    ending = [{"role": "user", "content": user_message}, *after]

    def exact(parts: _Parts, tail: Sequence[_Priced] = ()) -> int:
        return count_messages(_messages(parts, tail, ending))

    truncated: list[str] = []
    fitted = _fit_persona(parts, budget, count, exact, truncated)
    if fitted is None:
        smallest = replace(parts, persona=_bare(persona))
        empty = count_messages(_messages(smallest, [], [{"role": "user", "content": ""}]))
        raise PromptTooLarge(max(0, budget - empty), count(user_message), budget)
    parts, tokens = fitted
    left = budget - tokens
    persona_only = parts

    used: list[Recollection] = []
    tail: list[_Priced] = []
    if instructions.strip():
        parts, left = _add_instructions(parts, instructions, left, count, count_messages)
        if parts.instructions != instructions:
            truncated.append("instructions")
    if not truncated and memory_text.strip():
        parts, left = _add_memory_text(parts, memory_text, left, count)
        if parts.memory_text != memory_text:
            truncated.append("memory_text")
    if not truncated:
        parts, left = _add_lore(parts, lore, left, count)
        parts, used, left = _add_recollections(parts, recollections, left, count)
        tail = _add_turns(turns, left, count, count_messages)

    # The parts were priced one by one, and tokens can merge where parts are joined, so the whole
    # is counted; in the rare case it is over, it is trimmed from the lowest priority up.
    if parts is not persona_only or tail:
        tokens = exact(parts, tail)
    while tokens > budget:
        over = tokens - budget
        if tail:
            freed = 0
            while tail and freed < over:
                freed += tail.pop()[1]  # the oldest kept turn
        elif parts.recollections:
            dropped = parts.recollections[-1]
            del used[used.index(dropped) :]
            parts = replace(parts, recollections=parts.recollections[:-1])
        elif parts.lore:
            parts = replace(parts, lore=parts.lore[:-1])
        elif parts.memory_text:
            used = []  # pieces of the memory text may no longer be in it
            target = count(parts.memory_text) - over
            parts = replace(parts, memory_text=_fit_prefix(memory_text, target, count)[0])
            if "memory_text" not in truncated:
                truncated.append("memory_text")
        elif parts.instructions:
            target = count(parts.instructions) - over
            parts = replace(parts, instructions=_fit_prefix(instructions, target, count)[0])
            if "instructions" not in truncated:
                truncated.append("instructions")
        else:
            raise AssertionError("the persona alone was counted exactly")
        tokens = exact(parts, tail)

    messages = _messages(parts, tail, ending)
    stable = messages.index(_today(parts))
    text = json.dumps(messages, ensure_ascii=False, separators=(",", ":"))
    return Prompt(
        messages=messages,
        tokens=tokens,
        budget=budget,
        memories_used=[r.id for r in used],
        turns_used=len(tail),
        lore_used=[entry.id for entry in parts.lore],
        truncated=truncated,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        stable=stable,
    )


def default_instruction(instance: str, character: str) -> str:
    """How the model should speak when the character brings no system prompt of its own."""
    who = instance if _same(instance, character) else f"{instance}, a variation of {character}"
    return (
        f"You are {who}. You are not playing a role and you are not an assistant: you ARE "
        f"{instance}. Speak in the first person, in {instance}'s own voice, with the personality, "
        "way of speaking and quirks described below. Be personal and vivid: concrete details, "
        "feelings, opinions, the little things you remember. Stay consistent with your memories "
        "and with everything said in this conversation; never contradict them, and never invent "
        "shared history you do not remember. Answer in the language of the user's last message "
        "(Spanish or English). Never say you are an AI, a language model or a program, and never "
        "break character, unless the description below says that is what you are."
    )


def _system(parts: _Parts) -> Message:
    persona = parts.persona
    # A character's own system prompt replaces the default even when the budget cut it short
    # (or to nothing), so the smallest persona is never larger than the whole one.
    default = default_instruction(parts.instance, persona.character)
    instruction = default
    if parts.own_instruction:
        instruction = _ORIGINAL.sub(lambda _: default, persona.system_prompt)
    about = [f"Name: {parts.instance}"]
    if not _same(parts.instance, persona.character):
        about[0] += f" (a variation of {persona.character})"
    for label, text in (
        ("Description", persona.description),
        ("Personality", persona.personality),
        ("Scenario", persona.scenario),
    ):
        if text.strip():
            about.append(f"{label}: {text}")
    sections = [
        instruction,
        _lore_text(parts.lore, "before_char"),
        "## About you\n" + "\n".join(about),
        _lore_text(parts.lore, "after_char"),
    ]
    if parts.memory_text:
        sections.append(f"{_MEMORY_HEADING}\n{parts.memory_text}")
    if persona.example_dialogue.strip():
        sections.append(
            "## Example dialogue (how you talk; not part of this conversation)\n"
            + persona.example_dialogue
        )
    return {"role": "system", "content": "\n\n".join(s for s in sections if s.strip())}


def _today(parts: _Parts) -> Message:
    """The date, in a system message of its own late in the prompt: in the system message it
    would change the start of every conversation's prompt each day, and a server that keeps the
    prompt it read (llama.cpp) would read the persona again."""
    when = f"Today is {parts.today}."
    if parts.last_talk is not None:
        when += f" You last talked with the user on {parts.last_talk}."
    return {"role": "system", "content": when}


def _recalled(parts: _Parts) -> list[Message]:
    """The recollections, oldest first, as a system message of their own (none when there are
    none)."""
    if not parts.recollections:
        return []
    lines = [_line(r) for r in sorted(parts.recollections, key=lambda r: r.when)]
    return [{"role": "system", "content": _RECOLLECTIONS_HEADING + "\n" + "\n".join(lines)}]


def _line(r: Recollection) -> str:
    """`- [8 May 2023] Caroline: I went to the support group.`: when, who (when known) and
    what."""
    said = {"user": "The user said: ", "assistant": "You said: "}
    if r.speaker:
        prefix = f"{_oneline(r.speaker)}: "
    else:
        prefix = said.get(r.role or "", "") if r.kind == "message" else ""
    return f"- [{_day(r.when)}] {prefix}{_oneline(r.text)}"


def _messages(parts: _Parts, tail: Sequence[_Priced], ending: Sequence[Message]) -> list[Message]:
    """The system message and the client's instructions; the conversation up to the user's
    message, with the lore placed at a depth between its messages (depth 0: after the last;
    deeper than the conversation: before its first), and the date and the recollections just
    before the user's message; a card's post-history instructions; then what the model goes on
    from (a reply's start, tool calls).

    What changes from turn to turn (the recollections, found for each message; the date) comes
    late and what only grows (the persona, the conversation) first: a server that keeps the
    prompt it read (llama.cpp; OpenAI's prompt caching) reads again only the part after the
    first change."""
    said = [*(message for message, _ in reversed(tail)), ending[0]]
    deep = [e for e in parts.lore if e.position == "at_depth"]
    messages = [_system(parts)]
    if parts.instructions:
        messages.append({"role": "system", "content": parts.instructions})
    for n in range(len(said) + 1):
        here = [e for e in deep if min(e.depth, len(said)) == len(said) - n]
        if here:
            text = "\n".join(e.content for e in sorted(here, key=lambda e: e.order))
            messages.append({"role": "system", "content": text})
        if n == len(said) - 1:
            messages += [_today(parts), *_recalled(parts)]
        if n < len(said):
            messages.append(said[n])
    post = parts.persona.post_history_instructions
    if post.strip():
        messages.append({"role": "system", "content": post})
    return [*messages, *ending[1:]]


def _lore_text(lore: Sequence[LoreEntry], position: str) -> str:
    """The entries placed at `position` of the system message, by their order."""
    placed = sorted((e for e in lore if e.position == position), key=lambda e: e.order)
    return "\n".join(e.content for e in placed)


def _add_lore(
    parts: _Parts, lore: Sequence[LoreEntry], left: int, count: CountText
) -> tuple[_Parts, int]:
    """The activated entries in the order given (most important first), each whole, up to the
    first that does not fit."""
    kept: list[LoreEntry] = []
    for entry in lore:
        cost = _count_upto(entry.content + "\n\n", left, count) + (
            _MESSAGE_OVERHEAD if entry.position == "at_depth" else 0
        )
        if cost > left:
            break
        kept.append(entry)
        left -= cost
    return replace(parts, lore=kept), left


def _fit_persona(
    parts: _Parts,
    budget: int,
    count: CountText,
    exact: Callable[[_Parts], int],
    truncated: list[str],
) -> tuple[_Parts, int] | None:
    """The persona whole if it fits beside the user message; else with its longest fields cut
    (water-filling: every field over a common cap is cut to that cap); None if even the bare
    persona leaves no room for the user message. Counted exactly, with its token count."""
    fields = {f: getattr(parts.persona, f) for f in _TRIMMABLE}
    sizes: dict[str, int] = {}
    # Fields far longer than the budget are priced on their heads, not encoded whole.
    if sum(map(len, fields.values())) > 4 * budget:
        sizes = {f: _count_upto(text, budget, count) for f, text in fields.items()}
    if sum(sizes.values()) <= budget:
        whole = exact(parts)
        if whole <= budget:
            return parts, whole
    bare = replace(parts, persona=_bare(parts.persona))
    floor = exact(bare)
    if floor > budget:
        return None
    sizes = sizes or {f: count(text) for f, text in fields.items()}
    # The fields' labels and headings cost too: price them with one-token stand-ins for the
    # fields and take them off the room from the start.
    stand_ins = {f: "x" if text.strip() else "" for f, text in fields.items()}
    sketch = replace(parts, persona=replace(parts.persona, **stand_ins))
    labels = max(0, exact(sketch) - floor - sum(map(len, stand_ins.values())))
    room = budget - floor - labels
    while room > 0:
        cap = _cap(list(sizes.values()), room)
        cut = {
            f: _fit_prefix(text, cap, count)[0] if sizes[f] > cap else text
            for f, text in fields.items()
        }
        candidate = replace(parts, persona=replace(parts.persona, **cut))
        tokens = exact(candidate)
        if tokens <= budget:
            truncated.extend(f for f in _TRIMMABLE if cut[f] != fields[f])
            return candidate, tokens
        room -= tokens - budget
    truncated.extend(f for f in _TRIMMABLE if fields[f])
    return bare, floor


def _cap(sizes: list[int], room: int) -> int:
    """The largest cap c with sum(min(size, c)) <= room."""
    lo, hi = 0, max(sizes, default=0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(s, mid) for s in sizes) <= room:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _add_memory_text(
    parts: _Parts, memory_text: str, left: int, count: CountText
) -> tuple[_Parts, int]:
    """The memory text whole if it fits in what is left, else its beginning; with what is left."""
    room = left - count(f"\n\n{_MEMORY_HEADING}\n")
    if room <= 0:
        return parts, left
    kept, tokens = _fit_prefix(memory_text, room, count)
    return replace(parts, memory_text=kept), room - tokens if kept == memory_text else 0


def _add_instructions(
    parts: _Parts, instructions: str, left: int, count: CountText, count_messages: CountMessages
) -> tuple[_Parts, int]:
    """The client's instructions whole if they fit in what is left, else their beginning; with
    what is left."""
    room = left - (count_messages([{"role": "system", "content": ""}]) - count_messages([]))
    if room <= 0:
        return parts, left
    kept, tokens = _fit_prefix(instructions, room, count)
    if not kept:
        return parts, left
    return replace(parts, instructions=kept), room - tokens if kept == instructions else 0


def _add_recollections(
    parts: _Parts, recollections: Sequence[Recollection], left: int, count: CountText
) -> tuple[_Parts, list[Recollection], int]:
    """Most relevant first, each whole, up to the first that does not fit: relevance is a
    priority like any other, so a less relevant memory never stands where a more relevant one
    could not. A piece of the memory text that the prompt already holds whole is used without
    being repeated."""
    heading = count(f"{_RECOLLECTIONS_HEADING}\n") + _MESSAGE_OVERHEAD
    used: list[Recollection] = []
    shown: list[Recollection] = []
    seen: set[str] = set()
    for r in sorted(recollections, key=lambda r: -r.score):
        if r.id in seen or not r.text.strip():
            continue
        seen.add(r.id)
        if r.kind == "memory_text" and parts.memory_text and r.text.strip() in parts.memory_text:
            used.append(r)
            continue
        line = _line(r) + "\n"
        cost = _count_upto(line, left, count) + (0 if shown else heading)
        if cost > left:
            break
        used.append(r)
        shown.append(r)
        left -= cost
    return replace(parts, recollections=shown), used, left


def _add_turns(
    turns: Sequence[Turn], left: int, count: CountText, count_messages: CountMessages
) -> list[_Priced]:
    """The newest turns that fit, whole, newest first with their prices, stopping at the first
    that does not: a conversation with holes in it would read as something nobody said."""
    empty = count_messages([])
    overhead = {role: count_messages([{"role": role, "content": ""}]) - empty for role in _ROLES}
    kept: list[_Priced] = []
    for turn in reversed(turns):
        cost = overhead[turn.role] + _count_upto(turn.content, left, count)
        if cost > left:
            break
        kept.append(({"role": turn.role, "content": turn.content}, cost))
        left -= cost
    return kept


def _count_upto(text: str, limit: int, count: CountText) -> int:
    """count(text) when that is at most `limit`, else some number above `limit`, without
    encoding the whole of a text far too long to fit."""
    # A shortcut only: if a head of the text is already over the limit, so is the whole. Prose
    # averages 3-4.5 characters a token, so the head rarely falls short of the limit.
    head = 5 * max(limit, 0) + 64
    if len(text) > head:
        tokens = count(text[:head])
        if tokens > limit:
            return tokens
    return count(text)


def _fit_prefix(text: str, limit: int, count: CountText) -> tuple[str, int]:
    """`text` with its count if it fits in `limit` tokens; else nearly its longest beginning that
    does (within 1/64 of the limit, ending at a word when one is near, marked with …) with a
    close estimate of its count; ("", 0) when not even a character and the mark fit."""
    if limit <= 0 or count(ELLIPSIS) > limit:
        return "", 0

    def size(n: int) -> int:
        return count(_cut(text, n))

    # Bracket the cut between a length that fits (lo) and one that does not (hi), starting a
    # little past the limit so that a long text is never encoded whole, then interpolate (token
    # density is nearly even), aiming a little short so that the first guess usually lands
    # within tolerance, and halving whenever a guess narrows the bracket too little.
    lo, lo_tokens = 0, 0
    hi = min(len(text), 5 * limit + 64)
    hi_tokens = size(hi)
    while hi_tokens <= limit:
        if hi == len(text):
            return text, hi_tokens
        lo, lo_tokens = hi, hi_tokens
        hi = min(len(text), 2 * hi)
        hi_tokens = size(hi)
    slack = max(1, limit // 64)
    aim = limit - slack // 2
    halve = False
    while hi - lo > 1 and lo_tokens < limit - slack:
        width = hi - lo
        if halve:
            guess = lo + width // 2
        else:
            guess = lo + width * (aim - lo_tokens) // (hi_tokens - lo_tokens)
        guess = min(max(guess, lo + 1), hi - 1)
        tokens = size(guess)
        if tokens <= limit:
            lo, lo_tokens = guess, tokens
        else:
            hi, hi_tokens = guess, tokens
        halve = hi - lo > width // 2
    cut = _cut(text, lo)
    if lo == 0 or cut == ELLIPSIS:
        return "", 0
    # Backing off to a word drops a few characters; the final count of the whole checks it.
    return _cut(text, lo, at_word=True), lo_tokens


def _cut(text: str, n: int, at_word: bool = False) -> str:
    """text[:n] plus the mark (or all of text), never splitting a character from its accents,
    variation selector or emoji joiner."""
    if n >= len(text):
        return text
    while 0 < n < len(text) and (_joins(text[n]) or text[n - 1] == _ZWJ):
        n -= 1
    if at_word:
        space = max(text.rfind(" ", 0, n + 1), text.rfind("\n", 0, n + 1))
        if space > 0 and n - space < 40:
            n = space
    return text[:n].rstrip() + ELLIPSIS


def _joins(ch: str) -> bool:
    """Whether `ch` belongs to the character before it."""
    return (
        ch == _ZWJ
        or unicodedata.combining(ch) != 0
        or "\ufe00" <= ch <= "\ufe0f"  # variation selectors
        or "\U0001f3fb" <= ch <= "\U0001f3ff"  # skin tones
        or "\U000e0020" <= ch <= "\U000e007f"  # tag sequences (subdivision flags)
    )


def _bare(persona: Persona) -> Persona:
    return Persona(character=persona.character)


def _same(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()


def _oneline(text: str) -> str:
    # One recollection per line: a newline inside one would read as the start of another.
    return " ".join(text.split())
