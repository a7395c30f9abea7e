"""The files a Character Card comes in: JSON, a PNG with the card in its text chunks, a CHARX.

As SillyTavern reads them: in a PNG, the `ccv3` chunk (base64 of a V3 card) wins over `chara`
(base64 of a V2 card, or of a V3 one) wherever each stands and whatever each says, each in a
`tEXt` chunk as front-ends write them or, as some image tools rewrite them, in a compressed
`zTXt` or an international `iTXt` one; a CHARX is a
zip with `card.json` at its root and its assets: the first `icon` asset is the card's image
(with no such asset, or one at `ccdefault:`, the first PNG under `assets/icon/`), every other
file is kept by its path and given back by a CHARX export. What
is read of a zip or a compressed chunk is bounded (`MAX_INFLATED`), so a small file that
inflates to gigabytes is refused, not inflated. Every refusal is an InvalidInput that says what
is wrong.
"""

from __future__ import annotations

import base64
import binascii
import io
import posixpath
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from alma.domain.cards import parse_card
from alma.domain.errors import InvalidInput

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ZIP_SIGNATURE = b"PK\x03\x04"
_CARD_KEYWORDS = ("ccv3", "chara")  # in the order they are preferred
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
MAX_INFLATED = 32 * 1024 * 1024  # what a CHARX may inflate to, card.json and its assets together
MAX_ASSETS = 1000
MAX_ASSET_PATH = 500


@dataclass(frozen=True)
class CardFile:
    """A card as read from a file: the card's JSON object, its image (a PNG without the card's
    chunks), if it came with one, and a CHARX's other files by their path in it."""

    card: dict[str, Any]
    image: bytes | None = None
    assets: Mapping[str, bytes] = field(default_factory=dict)


def read_card_file(content: bytes) -> CardFile:
    """The card in a JSON, PNG or CHARX file, told apart by their first bytes."""
    if content.startswith(PNG_SIGNATURE):
        return _read_png(content)
    if content.startswith(_ZIP_SIGNATURE):
        return _read_charx(content)
    if not content.strip():
        raise InvalidInput("the file is empty: send a card as JSON, PNG or CHARX", "file")
    if content.lstrip()[:1] != b"{":
        raise InvalidInput("the file is not a card: send JSON, a PNG or a CHARX (zip)", "file")
    return CardFile(parse_card(content))


def png_chunks(content: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk of a PNG, each checked against its CRC."""
    chunks = []
    at = len(PNG_SIGNATURE)
    while at < len(content):
        if at + 8 > len(content):
            raise InvalidInput(f"the PNG is cut short at byte {at}", "file")
        length, kind = struct.unpack(">I4s", content[at : at + 8])
        end = at + 12 + length
        if end > len(content):
            raise InvalidInput(f"the PNG's {_name(kind)} chunk at byte {at} is cut short", "file")
        data = content[at + 8 : end - 4]
        (crc,) = struct.unpack(">I", content[end - 4 : end])
        if zlib.crc32(kind + data) != crc:
            raise InvalidInput(
                f"the PNG's {_name(kind)} chunk at byte {at} is corrupt (its CRC does not match)",
                "file",
            )
        chunks.append((kind, data))
        at = end
        if kind == b"IEND":
            break
    return chunks


def png_with_cards(image: bytes, cards: dict[str, str]) -> bytes:
    """The PNG with a `tEXt` chunk per card (keyword: the card's JSON), before its end."""
    chunks = [c for c in png_chunks(image) if _keyword(c) not in _CARD_KEYWORDS]
    texts = [
        (b"tEXt", keyword.encode("latin-1") + b"\0" + base64.b64encode(card.encode("utf-8")))
        for keyword, card in cards.items()
    ]
    return _png([*chunks[:-1], *texts, chunks[-1]])


def blank_png() -> bytes:
    """A 1x1 transparent PNG, for a card exported without an image of its own."""
    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    pixels = zlib.compress(b"\0\0\0\0\0")
    return _png([(b"IHDR", header), (b"IDAT", pixels), (b"IEND", b"")])


def _read_png(content: bytes) -> CardFile:
    chunks = png_chunks(content)
    if not chunks or chunks[-1][0] != b"IEND":
        raise InvalidInput("the PNG has no end (IEND chunk): it is cut short", "file")
    texts = {_keyword(c): c for c in chunks if _keyword(c) in _CARD_KEYWORDS}
    keyword = next((k for k in _CARD_KEYWORDS if k in texts), None)
    if keyword is None:
        raise InvalidInput("the PNG holds no card (no `chara` or `ccv3` text chunk)", "file")
    encoded = _text(texts[keyword], keyword).strip()
    encoded += b"=" * (-len(encoded) % 4)  # some writers leave the padding out
    try:
        decoded = base64.b64decode(encoded, validate=False)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"the PNG's `{keyword}` chunk is not base64", "file") from None
    card = parse_card(decoded, f"the PNG's `{keyword}` chunk")
    image = _png([c for c in chunks if _keyword(c) not in _CARD_KEYWORDS])
    return CardFile(card, image)


def _read_charx(content: bytes) -> CardFile:
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
        names = set(archive.namelist())
    except (zipfile.BadZipFile, ValueError, OSError) as error:
        raise InvalidInput(f"the CHARX is not a valid zip: {error}", "file") from None
    if "card.json" not in names:
        raise InvalidInput("the CHARX has no card.json at its root", "file")
    budget = [MAX_INFLATED]
    card = parse_card(_inflate(archive, "card.json", budget), "the CHARX's card.json")
    files = [n for n in archive.namelist() if n != "card.json" and not n.endswith("/")]
    if len(files) > MAX_ASSETS:
        raise InvalidInput(f"the CHARX holds more than {MAX_ASSETS} files", "file")
    assets = {asset_path(name): _inflate(archive, name, budget) for name in files}
    path = icon_path(card)
    if path is None:  # the format's default icon: the first PNG among the icons
        icons = [p for p in assets if p.startswith("assets/icon/") and p.endswith(".png")]
        path = icons[0] if icons else None
    image = None
    icon = assets.get(path or "")
    if icon is not None and icon.startswith(PNG_SIGNATURE):  # only a PNG carries a card out
        image = _read_image(icon)
        if image is not None:
            assets.pop(path or "")  # the image, given back where the card says on export
    return CardFile(card, image, assets)


def icon_path(card: dict[str, Any]) -> str | None:
    """Where in a CHARX the card's first `icon` asset is (`embeded://<path>`); None when it
    has none there (`ccdefault:`, the format's default, or no `assets` at all)."""
    data = card.get("data")
    listed = data.get("assets") if isinstance(data, dict) else None
    for asset in listed if isinstance(listed, list) else []:
        if isinstance(asset, dict) and asset.get("type") == "icon":
            uri = str(asset.get("uri", ""))
            for scheme in ("embeded://", "embedded://"):
                if uri.startswith(scheme):
                    return uri.removeprefix(scheme)
            return None
    return None


def asset_path(name: object) -> str:
    """A file's path in a CHARX, refused when unzipping it could write outside the folder it is
    unzipped in (`../`, an absolute path) or when it is not a plain relative path."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_ASSET_PATH:
        raise InvalidInput(f"a CHARX path must be 1 to {MAX_ASSET_PATH} characters", "file")
    clean = posixpath.normpath(name)
    if clean != name or name.startswith("/") or clean.split("/")[0] == ".." or "\\" in name:
        raise InvalidInput(f"the CHARX path {name!r} is not a plain relative path", "file")
    return name


def charx_with_card(card: str, assets: Mapping[str, bytes]) -> bytes:
    """A CHARX: `card.json` and the assets at their paths."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as charx:
        charx.writestr("card.json", card)
        for path, content in assets.items():
            charx.writestr(path, content)
    return archive.getvalue()


def _read_image(content: bytes) -> bytes | None:
    """A PNG icon without any card chunks of its own; None when it is not a sound PNG."""
    try:
        chunks = png_chunks(content)
    except InvalidInput:
        return None
    return _png([c for c in chunks if _keyword(c) not in _CARD_KEYWORDS])


def _inflate(archive: zipfile.ZipFile, name: str, budget: list[int]) -> bytes:
    """A member's bytes, read no further than what is left of the budget: the sizes a zip
    declares can lie."""
    try:
        with archive.open(name) as member:
            content = member.read(budget[0] + 1)
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, OSError) as error:
        raise InvalidInput(f"the CHARX's {name} cannot be read: {error}", "file") from None
    if len(content) > budget[0]:
        raise InvalidInput(
            f"the CHARX inflates past {MAX_INFLATED} bytes (at {name}): refused", "file"
        )
    budget[0] -= len(content)
    return content


def _keyword(chunk: tuple[bytes, bytes]) -> str | None:
    kind, data = chunk
    if kind not in _TEXT_CHUNKS or b"\0" not in data:
        return None
    return data.split(b"\0", 1)[0].decode("latin-1").lower()


def _text(chunk: tuple[bytes, bytes], keyword: str) -> bytes:
    """The text of a `tEXt`, `zTXt` or `iTXt` chunk (after its keyword), inflated if need be."""
    kind, data = chunk
    text = data.split(b"\0", 1)[1]
    compressed = kind == b"zTXt"
    if kind == b"zTXt":
        text = text[1:]  # the compression method: 0, zlib, the only one PNG defines
    elif kind == b"iTXt":
        flag, text = text[:1], text[2:]  # then the language tag and the translated keyword
        compressed = flag == b"\1"
        parts = text.split(b"\0", 2)
        if len(parts) < 3:
            raise InvalidInput(f"the PNG's `{keyword}` iTXt chunk is malformed", "file")
        text = parts[2]
    if not compressed:
        return text
    inflater = zlib.decompressobj()
    try:
        inflated = inflater.decompress(text, MAX_INFLATED)
    except zlib.error:
        raise InvalidInput(f"the PNG's `{keyword}` chunk does not inflate", "file") from None
    if inflater.unconsumed_tail:
        raise InvalidInput(
            f"the PNG's `{keyword}` chunk inflates past {MAX_INFLATED} bytes", "file"
        )
    return inflated


def _png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = [PNG_SIGNATURE]
    for kind, data in chunks:
        crc = zlib.crc32(kind + data)
        out.append(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc))
    return b"".join(out)


def _name(kind: bytes) -> str:
    return kind.decode("latin-1") if kind.isalpha() else repr(kind)
