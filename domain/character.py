"""The Character (Personaje) aggregate: a persona that instances are variations of."""

from __future__ import annotations

from typing import Any, ClassVar

from eventsourcing.domain import Aggregate, DomainEvent, event

from alma.domain.actor import Actor
from alma.domain.patch import merge_patch
from alma.domain.rules import valid_name, valid_text

PERSONA_FIELDS = (
    "description",
    "personality",
    "scenario",
    "greeting",
    "example_dialogue",
    "system_prompt",
)
EDITABLE_FIELDS = ("name", *PERSONA_FIELDS, "voice")


class Character(Aggregate):
    Renamed: ClassVar[type[DomainEvent]]
    DescriptionChanged: ClassVar[type[DomainEvent]]
    Archived: ClassVar[type[DomainEvent]]
    Erased: ClassVar[type[DomainEvent]]
    erased = False

    @event("Created")
    def __init__(
        self,
        tenant: str,
        name: str,
        description: str,
        personality: str,
        scenario: str,
        greeting: str,
        example_dialogue: str,
        system_prompt: str,
        voice: dict[str, Any] | None,
        actor: Actor,
    ) -> None:
        self.tenant = tenant
        self.name = name
        self.description = description
        self.personality = personality
        self.scenario = scenario
        self.greeting = greeting
        self.example_dialogue = example_dialogue
        self.system_prompt = system_prompt
        self.voice = voice
        self.archived = False

    @classmethod
    def create(cls, tenant: str, fields: dict[str, Any], actor: Actor) -> Character:
        values = {field: fields.get(field) or "" for field in PERSONA_FIELDS}
        for field, text in values.items():
            valid_text(text, field)
        return cls(
            tenant=tenant,
            name=valid_name(fields["name"]),
            voice=fields.get("voice"),
            actor=actor,
            **values,
        )

    def edit(self, changes: dict[str, Any], actor: Actor) -> None:
        """`changes` is a merge patch (RFC 7396): null clears a text field to "" and the voice
        settings to none, and `voice` merges into the current settings. One event per field
        whose value really changes; an edit that changes nothing records nothing."""
        for field in EDITABLE_FIELDS:
            if field not in changes:
                continue
            value = merge_patch(getattr(self, field), changes[field])
            if value == getattr(self, field):
                continue
            if field == "name":
                self.rename(valid_name(value), actor)
            elif field == "voice":
                self.change_voice(value, actor)
            else:
                getattr(self, f"change_{field}")(valid_text(value or "", field), actor)

    @event("Renamed")
    def rename(self, name: str, actor: Actor) -> None:
        self.name = name

    @event("DescriptionChanged")
    def change_description(self, description: str, actor: Actor) -> None:
        self.description = description

    @event("PersonalityChanged")
    def change_personality(self, personality: str, actor: Actor) -> None:
        self.personality = personality

    @event("ScenarioChanged")
    def change_scenario(self, scenario: str, actor: Actor) -> None:
        self.scenario = scenario

    @event("GreetingChanged")
    def change_greeting(self, greeting: str, actor: Actor) -> None:
        self.greeting = greeting

    @event("ExampleDialogueChanged")
    def change_example_dialogue(self, example_dialogue: str, actor: Actor) -> None:
        self.example_dialogue = example_dialogue

    @event("SystemPromptChanged")
    def change_system_prompt(self, system_prompt: str, actor: Actor) -> None:
        self.system_prompt = system_prompt

    @event("VoiceChanged")
    def change_voice(self, voice: dict[str, Any] | None, actor: Actor) -> None:
        self.voice = voice

    @event("Archived")
    def archive(self, actor: Actor) -> None:
        self.archived = True

    @event("Erased")
    def erase(self, actor: Actor) -> None:
        """Its key is destroyed next: none of its events can be read."""
        self.archived = True
        self.erased = True
