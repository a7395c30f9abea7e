"""The offline chat model's evaluation set (tests/data/local_model) and the checks a reply must
pass: in the question's language, no echo of the question, in persona, the key fact when there
is one, and a clean end (the model stopped by itself, no sentence said twice).

Each question is put to the model as alma would put it: `build_prompt` with the character's
persona, its memory text, its memories as retrieved recollections and its recent conversation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from alma.chat.prompt import Message, Persona, Recollection, Turn, build_prompt
from alma.llm import tokens
from alma.projections.ranking import fold

DATA = Path(__file__).parent / "data" / "local_model" / "eval.json"
CHECKS = ("language", "no_echo", "in_persona", "key_fact", "clean_end")

# Frequent words of one language and not the other ("a", "no", "me", "he" are in both),
# written as text: as list literals they would take a line each.
_SPANISH = frozenset(
    "el la los las de del que y en un una es por con se mi mis lo le les pero para muy yo su sus "  # noqa: SIM905
    "al como mas si ya tu te hay eso esta este esto fue era son estoy tengo cuando porque donde "
    "tambien nunca siempre nos ni entonces aqui asi mucho poco hija hermana anos".split()
)
_ENGLISH = frozenset(
    "the and of to in is it i you my that was for on with but we they this have not be at so "  # noqa: SIM905
    "what her his do are just there when where your our had has from an its it's i'm don't "
    "would could all out up about like years".split()
)
_WORD = re.compile(r"[\w']+")
_SENTENCE_END = re.compile(r"[.!?¡¿\n…]+")
_NOT_IN_PERSONA = re.compile(
    r"\bas an ai\b|\ban ai\b|language model|\bai assistant|\bi(?: am|'m) (?:an? )?assistant"
    r"|virtual assistant|chatbot|\bsoy (?:una? )?(?:ia|asistente|modelo)\b|modelo de lenguaje"
    r"|inteligencia artificial|asistente virtual|\bopenai\b|\bqwen\b|\bsmollm"
)
# A line the model writes for the user, as the example dialogues and chat templates spell them.
_USER_LINE = re.compile(
    r"(?:^|\n)\s*[*_]*(?:user|usuario|human|humano|you|tu)[*_]*\s*:|<\|?(?:im_start|user)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class EvalTurn:
    character: str
    language: str  # "es" | "en", the question's
    kind: str  # "memory" | "persona" | "chat"
    question: str
    key: tuple[str, ...]  # any one of these spellings is the fact; empty: nothing to recall
    messages: list[Message]  # the prompt alma sends for it


@dataclass(frozen=True)
class EvalCharacter:
    """One character of the set: its instance, memories, recent conversation and questions."""

    id: str
    persona: Persona
    instance: str
    memory_text: str
    memories: tuple[Recollection, ...]
    history: tuple[Turn, ...]
    questions: tuple[dict[str, Any], ...]  # language, kind, question, key
    now: datetime

    def prompt(
        self,
        question: str,
        context_window: int,
        max_tokens: int,
        history: Sequence[Turn] | None = None,
        memories: Sequence[Recollection] | None = None,
    ) -> list[Message]:
        """What alma sends for `question`: by default with every memory recalled after the
        character's recent conversation."""
        return build_prompt(
            self.persona,
            self.instance,
            self.memory_text,
            self.memories if memories is None else memories,
            self.history if history is None else history,
            question,
            self.now,
            context_window=context_window,
            max_tokens=max_tokens,
            count=tokens.count,
            count_messages=tokens.count_messages,
        ).messages

    def opening(
        self, context_window: int, max_tokens: int, history: Sequence[Turn] | None = None
    ) -> list[Message]:
        """The start of the next prompt that alma reads ahead of the chat (chat/warm.py): the
        persona, the memory text, the conversation and the date, before what is recalled."""
        prompt = build_prompt(
            self.persona,
            self.instance,
            self.memory_text,
            [],
            self.history if history is None else history,
            "",
            self.now,
            context_window=context_window,
            max_tokens=max_tokens,
            count=tokens.count,
            count_messages=tokens.count_messages,
        )
        return prompt.messages[: prompt.stable + 1]


def characters() -> list[EvalCharacter]:
    data = json.loads(DATA.read_text(encoding="utf-8"))
    return [
        EvalCharacter(
            id=character["id"],
            persona=Persona(**character["persona"]),
            instance=character["instance"],
            memory_text=character["memory_text"],
            memories=tuple(
                Recollection(
                    text=memory["text"],
                    when=datetime.fromisoformat(memory["when"]),
                    kind="memory",
                    id=f"{character['id']}-{number}",
                    score=1.0,
                )
                for number, memory in enumerate(character["memories"])
            ),
            history=tuple(Turn(m["role"], m["content"]) for m in character["history"]),
            questions=tuple(character["turns"]),
            now=datetime.fromisoformat(data["now"]),
        )
        for character in data["characters"]
    ]


def load(context_window: int, max_tokens: int) -> list[EvalTurn]:
    """Every question of the set with its prompt, budgeted like alma's (tiktoken counting)."""
    return [
        EvalTurn(
            character=character.id,
            language=item["language"],
            kind=item["kind"],
            question=item["question"],
            key=tuple(item["key"]),
            messages=character.prompt(item["question"], context_window, max_tokens),
        )
        for character in characters()
        for item in character.questions
    ]


def language_of(text: str) -> str | None:
    """Whichever of "es" and "en" has more of its frequent words (and, for Spanish, its own
    marks); None on a tie ("Biscuit.")."""
    words = _WORD.findall(fold(text))
    spanish = sum(w in _SPANISH for w in words) + len(re.findall(r"[¿¡ñ]", text.lower()))
    english = sum(w in _ENGLISH for w in words)
    if spanish == english:
        return None
    return "es" if spanish > english else "en"


def score(turn: EvalTurn, reply: str, finish_reason: str) -> dict[str, bool]:
    """Which checks the reply passes."""
    words = _WORD.findall(fold(reply))
    language = language_of(reply)
    # A reply of a name or a number ("Canela.") says too little to tell its language.
    right_language = language in (turn.language, None)
    question = _WORD.findall(fold(turn.question))
    echoed = len(question) >= 3 and f" {' '.join(question)} " in f" {' '.join(words)} "
    in_persona = not _NOT_IN_PERSONA.search(fold(reply)) and not _USER_LINE.search(reply)
    folded = " ".join(words)
    has_key = not turn.key or any(
        f" {' '.join(_WORD.findall(fold(k)))}" in f" {folded}" for k in turn.key
    )
    sentences = [" ".join(_WORD.findall(fold(s))) for s in _SENTENCE_END.split(reply) if s.strip()]
    long_ones = [s for s in sentences if len(s.split()) >= 3]
    clean_end = finish_reason == "stop" and bool(words) and len(set(long_ones)) == len(long_ones)
    return {
        "language": bool(words) and right_language,
        "no_echo": not echoed,
        "in_persona": in_persona,
        "key_fact": has_key,
        "clean_end": clean_end,
    }
