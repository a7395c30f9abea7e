"""Character Cards in and out, and the greeting a card opens a conversation with.

A card file (JSON, PNG or CHARX: `alma.domain.card_files`) becomes a character
(`alma.domain.cards`), its image kept in the image store (`alma.stores.images`) under the
character, and its `character_book` a lorebook attached to it (`alma.domain.lore_formats`); a
character, now or at a past version, goes out as a V2 or V3 card, as a PNG with both (its own
image, or a blank one), or as a CHARX (V3, with the files its CHARX came with, or its image as
the icon), its first attached lorebook (as it is now) as the card's book.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from alma.chat.macros import fill
from alma.domain import Actor, Alma, Character, InvalidInput, NewMessage
from alma.domain.card_files import (
    blank_png,
    charx_with_card,
    icon_path,
    png_with_cards,
    read_card_file,
)
from alma.domain.cards import V2, V3, card_document, card_fields
from alma.domain.lore_formats import from_character_book, to_character_book
from alma.domain.lorebook import Lorebook
from alma.stores.images import Images, digest_of

CardFormat = Literal["v2", "v3", "png", "charx"]
ASSET = ".asset"  # a CHARX's file in the image store
# Where a CHARX export puts the image when the card says no place (`ccdefault:`, the default).
_ICON = "assets/icon/images/main.png"


class Cards:
    def __init__(self, app: Alma, images: Images) -> None:
        self.app = app
        self.images = images

    def import_card(self, tenant: str, content: bytes, actor: Actor) -> Character:
        """A new character from a card file; nothing is written when the card is refused."""
        found = read_card_file(content)
        fields = card_fields(found.card)
        book = _book_of(tenant, fields, actor)  # checked before anything is written
        if found.image is not None:
            fields["image"] = digest_of(found.image)
        fields["assets"] = {path: digest_of(content) for path, content in found.assets.items()}
        character = self.app.create_character(tenant, fields, actor)
        if found.image is not None:
            self.images.keep(character.id, found.image)
        for content in found.assets.values():
            self.images.keep(character.id, content, ASSET)
        if book is not None:
            self.app.save(book)
            self.app.attach_lorebooks(tenant, Character, character.id, [book.id], actor)
        return character

    def export_card(
        self,
        tenant: str,
        character_id: UUID,
        card_format: CardFormat,
        version: int | None = None,
        at: datetime | None = None,
    ) -> bytes:
        """The character's card: V2 or V3 JSON, a PNG carrying both (`chara`, `ccv3`), or a
        CHARX."""
        character = self.app.character(tenant, character_id, version, at)
        attached = self.app.attached_lorebooks(tenant, Character, character_id)
        book = None
        if attached:
            lorebook = self.app.lorebook(tenant, attached[0])
            book = to_character_book(lorebook.settings, lorebook.in_order())
        if card_format in ("v2", "v3"):
            card = card_document(character, V2 if card_format == "v2" else V3, book)
            return json.dumps(card, ensure_ascii=False).encode("utf-8")
        image = None
        if character.image is not None:
            image = self.images.get(character.id, character.image)
        if card_format == "charx":
            return self._charx(character, book, image)
        cards = {
            "chara": json.dumps(card_document(character, V2, book), ensure_ascii=False),
            "ccv3": json.dumps(card_document(character, V3, book), ensure_ascii=False),
        }
        return png_with_cards(image or blank_png(), cards)

    def _charx(
        self, character: Character, book: dict[str, Any] | None, image: bytes | None
    ) -> bytes:
        card = card_document(character, V3, book)
        assets = {
            path: content
            for path, digest in character.assets.items()
            if (content := self.images.get(character.id, digest, ASSET)) is not None
        }
        if image is not None:
            assets.setdefault(icon_path(card) or _ICON, image)
        return charx_with_card(json.dumps(card, ensure_ascii=False), assets)

    def erase_character(self, tenant: str, character_id: UUID, actor: Actor) -> None:
        """Erases the character (`Alma.erase_character`), and its images with it."""
        self.app.erase_character(tenant, character_id, actor)
        self.images.forget(character_id)

    def greet(
        self, tenant: str, instance_id: UUID, index: int | None, actor: Actor
    ) -> tuple[UUID, int, str]:
        """Opens the instance's conversation with its character's greeting (`index` 0) or an
        alternate one (`index` n), or one of them at random (None), its macros filled, recorded
        as the character's message. Returns its id, index and text."""
        instance = self.app.instance(tenant, instance_id)
        character = self.app.character(tenant, instance.character_id)
        greetings = [character.greeting, *character.alternate_greetings]
        if index is None:
            choices = [n for n, text in enumerate(greetings) if text.strip()]
            if not choices:
                raise InvalidInput("the character has no greeting", "index")
            index = random.choice(choices)
        if index >= len(greetings) or not greetings[index].strip():
            raise InvalidInput(
                f"the character has no greeting {index} (0: greeting, 1 to "
                f"{len(greetings) - 1}: alternate greetings)",
                "index",
            )
        text = fill(greetings[index], instance.name, instance.user_name, datetime.now(UTC))
        message = NewMessage("assistant", text, metadata={"greeting": index})
        (message_id,) = self.app.import_messages(
            tenant, instance_id, [message], actor, opening=True
        )
        return message_id, index, text


def _book_of(tenant: str, fields: dict[str, Any], actor: Actor) -> Lorebook | None:
    """The lorebook of the card's `character_book`, taken out of what the character keeps
    verbatim (`card_extras`), checked but not saved; None when the card has none."""
    extras = fields.get("card_extras", {})
    given = extras.get("data", {}).pop("character_book", None)
    if given is None:
        return None
    if not extras["data"]:
        del extras["data"]
    if not extras:
        del fields["card_extras"]
    if not isinstance(given, dict) or not isinstance(given.get("entries"), list):
        raise InvalidInput("the card's `character_book` must be an object with `entries`", "file")
    settings, entries = from_character_book(given)
    return Lorebook.create(tenant, settings, entries, actor)
