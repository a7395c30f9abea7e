"""SillyTavern's chat files (`.jsonl`): a header line, then one `{name, is_user, mes, send_date,
...}` line per message; read into conversation turns to import, and written from them.

`send_date` is read as SillyTavern's `parseTimestamp` reads it (public/scripts/utils.js): epoch
milliseconds (a number or digits), `June 19, 2023 2:20pm`, `2024-7-12@01h31m37s` or
`2024-6-5 @14h 56m 50s 682ms` (text dates carry no zone: read as UTC), and ISO 8601 besides.
It is written as epoch milliseconds, which every version reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from alma.domain.application import NewMessage
from alma.domain.errors import InvalidInput
from alma.domain.rules import valid_message, valid_speaker

MAX_LINES = 10_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MONTHS = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
]
_MERIDIEM = re.compile(r"(\w+)\s(\d{1,2}),\s(\d{4})\s(\d{1,2}):(\d{1,2})(am|pm)", re.IGNORECASE)
_HUMANIZED = (
    re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})@(\d{1,2})h(\d{1,2})m(\d{1,2})s()"),
    re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2}) @(\d{1,2})h (\d{1,2})m (\d{1,2})s (\d{1,3})ms"),
)


def read_chat_file(data: bytes) -> list[NewMessage]:
    """The messages of a chat file, in order; InvalidInput naming the line of the first fault."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("the chat file is not UTF-8 text", "file") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if len(lines) > MAX_LINES + 1:
        raise InvalidInput(f"the chat file has more than {MAX_LINES} messages", "file")
    messages = []
    for n, line in lines:
        try:
            said = json.loads(line)
        except json.JSONDecodeError as error:
            raise InvalidInput(f"line {n}: not JSON ({error.msg})", "file") from None
        if not isinstance(said, dict):
            raise InvalidInput(f"line {n}: a line must be a JSON object", "file")
        if n == lines[0][0] and "mes" not in said:
            continue  # the header: who chatted, and when the chat began
        try:
            messages.append(_message(said))
        except InvalidInput as error:
            raise InvalidInput(f"line {n}: {error}", "file") from None
    if not messages:
        raise InvalidInput("the chat file has no messages", "file")
    return messages


def _message(said: dict[str, Any]) -> NewMessage:
    is_user, is_system = said.get("is_user", False), said.get("is_system", False)
    if not isinstance(is_user, bool) or not isinstance(is_system, bool):
        raise InvalidInput("is_user and is_system must be true or false")
    role = "user" if is_user else "system" if is_system else "assistant"
    role, content = valid_message(role, said.get("mes"))
    name = said.get("name")
    if name is not None and not isinstance(name, str):
        raise InvalidInput("name must be text")
    sent_at = None if said.get("send_date") in (None, "") else send_date(said["send_date"])
    return NewMessage(role, content, sent_at, name=valid_speaker(name or None, "name"))


def send_date(value: Any) -> datetime:
    """A message's `send_date` in any of the forms SillyTavern has written."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return _from_ms(value)
    if isinstance(value, str):
        if value.isdigit():
            return _from_ms(int(value))
        moment = _text_date(value)
        if moment is not None:
            return moment
    raise InvalidInput(f"send_date {value!r} is not a date SillyTavern writes", "send_date")


def _from_ms(ms: float) -> datetime:
    try:
        return _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        raise InvalidInput(f"send_date {ms} is out of range", "send_date") from None


def _text_date(text: str) -> datetime | None:
    try:
        found = _MERIDIEM.search(text)
        if found and found.group(1).lower() in _MONTHS:
            month, day, year, hour, minute, meridiem = found.groups()
            hour24 = int(hour) % 12 + (12 if meridiem.lower() == "pm" else 0)
            number = _MONTHS.index(month.lower()) + 1
            return datetime(int(year), number, int(day), hour24, int(minute), tzinfo=UTC)
        for pattern in _HUMANIZED:
            found = pattern.search(text)
            if found:
                year, month, day, hour, minute, second, ms = (int(g or 0) for g in found.groups())
                moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
                return moment + timedelta(milliseconds=ms)
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def write_chat_file(messages: Iterable[Any], user_name: str, character_name: str) -> str:
    """The conversation as a chat file: `messages` have role, content, name and sent_at (the
    conversation read model's); a message without a name gets the user's or the character's."""
    lines = []
    for message in messages:
        if message.role == "tool":
            continue  # a chat file has no tool results: the reply's line says the call
        is_user = message.role == "user"
        lines.append(
            {
                "name": message.name or (user_name if is_user else character_name),
                "is_user": is_user,
                "is_system": message.role == "system",
                "send_date": (message.sent_at - _EPOCH) // timedelta(milliseconds=1),
                "mes": message.content,
                "extra": {},
            }
        )
    header = {
        "user_name": user_name,
        "character_name": character_name,
        "create_date": _began(lines),
        "chat_metadata": {},
    }
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in [header, *lines])


def _began(lines: list[dict[str, Any]]) -> str:
    """SillyTavern's `create_date` (its humanized form) of the first message, or of now."""
    first = _from_ms(lines[0]["send_date"]) if lines else datetime.now(UTC)
    return first.strftime("%Y-%m-%d@%Hh%Mm%Ss")
