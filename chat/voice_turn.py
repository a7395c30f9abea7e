"""The voice turn: the user's speech heard, answered as a chat turn, and spoken back in the
character's voice.

The speech engines come in through `Speech`, a port of this module's own (`voice.Speech` is the
one the app runs), so the chat layer imports nothing of them. The transcript is the user's
message, recorded with `source: voice`; nothing is recorded until it is known.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol
from uuid import UUID

from anyio import to_thread

from alma.chat.turns import Chat, TurnResult
from alma.domain import Actor, Character, DomainError, Instance
from alma.language import guess_language


class Heard(Protocol):
    """What the user said."""

    @property
    def text(self) -> str: ...

    @property
    def language(self) -> str: ...

    @property
    def seconds(self) -> float: ...


class Spoken(Protocol):
    """A reply as speech, and how it came to sound that way."""

    @property
    def audio(self) -> bytes: ...

    @property
    def engine(self) -> str: ...

    @property
    def language(self) -> str: ...

    @property
    def fallback(self) -> str | None: ...


class Speech(Protocol):
    """What a voice turn needs of the speech engines."""

    async def hear(self, data: bytes, language: str | None, *, likely: str | None) -> Heard:
        """The audio transcribed, in `language` or the one detected (`likely` when the detection
        is unsure); refuses audio that holds no speech to hear."""
        ...

    def speak(
        self, text: str, voice: Sequence[Mapping[str, Any] | None], response_format: str
    ) -> Spoken:
        """The text spoken in a voice given as layers, each over the ones before it."""
        ...


class NothingSaid(DomainError):
    """The speech had no words to answer."""


@dataclass(frozen=True)
class VoiceReply:
    """What was heard, the chat turn it made, and the reply as speech."""

    heard: Heard
    result: TurnResult
    spoken: Spoken


async def reply_by_voice(
    chat: Chat,
    speech: Speech,
    tenant: str,
    instance_id: UUID,
    audio: bytes,
    language: str | None,
    response_format: str,
    max_tokens: int,
    temperature: float,
    actor: Actor,
) -> VoiceReply:
    """The reply to the user's speech in `audio` (in `language`, or the one detected), spoken
    in the instance's voice: the character's, with the instance's overrides on top. When the
    detection is unsure, the speech is heard in the language the character speaks."""
    instance = await to_thread.run_sync(chat.app.instance, tenant, instance_id)
    character = await to_thread.run_sync(chat.app.character, tenant, instance.character_id)
    heard = await speech.hear(audio, language, likely=_likely_language(character, instance))
    if not heard.text:
        raise NothingSaid("no speech was recognized in the audio; nothing was recorded")
    turn = await to_thread.run_sync(
        chat.prepare, tenant, instance_id, heard.text, max_tokens, temperature
    )
    marker = {"source": "voice", "language": heard.language, "seconds": heard.seconds}
    result = await to_thread.run_sync(chat.complete, replace(turn, metadata=marker), actor)
    # A voice that names no language speaks the one the user spoke.
    voice = [{"language": heard.language}, character.voice, instance.voice]
    spoken = await to_thread.run_sync(speech.speak, result.reply, voice, response_format)
    return VoiceReply(heard, result, spoken)


def _likely_language(character: Character, instance: Instance) -> str | None:
    """The language a character is spoken to in: its voice's (the instance's over the
    character's), else Spanish or English as its persona is written; None when neither shows."""
    for voice in (instance.voice, character.voice):
        if voice and voice.get("language"):
            return str(voice["language"])
    persona = " ".join(filter(None, (character.name, character.description, character.greeting)))
    return guess_language(persona, "") or None
