"""The Character (Personaje) aggregate: a persona that instances are variations of."""

from __future__ import annotations

from typing import Any, ClassVar, cast

from eventsourcing.domain import Aggregate, DomainEvent, event

from alma.domain.actor import Actor
from alma.domain.patch import merge_patch
from alma.domain.rules import valid_digest, valid_document, valid_name, valid_text, valid_texts

PERSONA_FIELDS = (
    "description",
    "personality",
    "scenario",
    "greeting",
    "example_dialogue",
    "system_prompt",
)
# What a Character Card carries besides the persona (they came with card import): texts, lists
# of texts, and `card_extras`, everything of a card alma does not use, kept verbatim so that an
# export gives it back. `image`: the sha256 of the card's image, kept in the image store;
# `assets`: a CHARX's other files, by their path in it, each a sha256 in the image store too.
CARD_TEXTS = (
    "post_history_instructions",
    "creator_notes",
    "creator",
    "character_version",
    "nickname",
)
CARD_LISTS = ("alternate_greetings", "tags")
EDITABLE_FIELDS = ("name", *PERSONA_FIELDS, *CARD_TEXTS, *CARD_LISTS, "voice", "card_extras")


class Character(Aggregate):
    Renamed: ClassVar[type[DomainEvent]]
    DescriptionChanged: ClassVar[type[DomainEvent]]
    Archived: ClassVar[type[DomainEvent]]
    Erased: ClassVar[type[DomainEvent]]
    erased = False
    # Characters created before cards were imported have none of these: their defaults.
    post_history_instructions = ""
    creator_notes = ""
    creator = ""
    character_version = ""
    nickname = ""
    image: str | None = None
    # Never changed in place (an event replaces them), so one shared default is safe; not
    # annotated, or the library would make them dataclass fields of the aggregate.
    alternate_greetings = cast("list[str]", [])
    tags = cast("list[str]", [])
    card_extras = cast("dict[str, Any]", {})
    assets = cast("dict[str, str]", {})  # a CHARX's files: path -> sha256, in the image store

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
        card: dict[str, Any] | None = None,
    ) -> None:
        """`card`: the card fields beside the persona (CARD_TEXTS, CARD_LISTS, `card_extras`,
        `image`, `assets`), when it was imported from one."""
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
        for field, value in (card or {}).items():
            setattr(self, field, value)

    @classmethod
    def create(cls, tenant: str, fields: dict[str, Any], actor: Actor) -> Character:
        values = {field: fields.get(field) or "" for field in PERSONA_FIELDS}
        for field, text in values.items():
            valid_text(text, field)
        card = {
            field: _valid(field, fields[field])
            for field in (*CARD_TEXTS, *CARD_LISTS, "card_extras")
            if fields.get(field)
        }
        if fields.get("image"):
            card["image"] = valid_digest(fields["image"], "image")
        if fields.get("assets"):
            card["assets"] = {
                path: valid_digest(digest, "assets") for path, digest in fields["assets"].items()
            }
        return cls(
            tenant=tenant,
            name=valid_name(fields["name"]),
            voice=fields.get("voice"),
            actor=actor,
            card=card or None,
            **values,
        )

    def edit(self, changes: dict[str, Any], actor: Actor) -> None:
        """`changes` is a merge patch (RFC 7396): null clears a text field to "", a list to
        [] and the voice settings to none, and `voice` and `card_extras` merge into the current
        ones. One event per field whose value really changes; an edit that changes nothing
        records nothing."""
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
            elif field in PERSONA_FIELDS:
                getattr(self, f"change_{field}")(valid_text(value or "", field), actor)
            else:
                getattr(self, f"change_{field}")(_valid(field, value), actor)

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

    @event("PostHistoryInstructionsChanged")
    def change_post_history_instructions(self, instructions: str, actor: Actor) -> None:
        self.post_history_instructions = instructions

    @event("CreatorNotesChanged")
    def change_creator_notes(self, creator_notes: str, actor: Actor) -> None:
        self.creator_notes = creator_notes

    @event("CreatorChanged")
    def change_creator(self, creator: str, actor: Actor) -> None:
        self.creator = creator

    @event("CharacterVersionChanged")
    def change_character_version(self, character_version: str, actor: Actor) -> None:
        self.character_version = character_version

    @event("NicknameChanged")
    def change_nickname(self, nickname: str, actor: Actor) -> None:
        self.nickname = nickname

    @event("AlternateGreetingsChanged")
    def change_alternate_greetings(self, alternate_greetings: list[str], actor: Actor) -> None:
        self.alternate_greetings = alternate_greetings

    @event("TagsChanged")
    def change_tags(self, tags: list[str], actor: Actor) -> None:
        self.tags = tags

    @event("CardExtrasChanged")
    def change_card_extras(self, card_extras: dict[str, Any], actor: Actor) -> None:
        self.card_extras = card_extras

    @event("ImageChanged")
    def change_image(self, image: str | None, actor: Actor) -> None:
        self.image = image

    @event("Archived")
    def archive(self, actor: Actor) -> None:
        self.archived = True

    @event("Erased")
    def erase(self, actor: Actor) -> None:
        """Its key is destroyed next: none of its events can be read."""
        self.archived = True
        self.erased = True


def _valid(field: str, value: Any) -> Any:
    """A card field's value as the character keeps it; null clears it."""
    if field in CARD_LISTS:
        return valid_texts(value or [], field)
    if field == "card_extras":
        return valid_document(value or {}, field)
    return valid_text(value or "", field)
