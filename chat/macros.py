"""The macros of Character Cards, filled in every text of a character that reaches the prompt.

`{{char}}` (or `<BOT>`) is the character's name as this instance goes by, `{{user}}` (or
`<USER>`) the user's name, and the date and time ones are the turn's, in UTC: `{{date}}`
(8 May 2023), `{{time}}` (13:56), `{{weekday}}` (Monday), `{{isodate}}` (2023-05-08),
`{{isotime}}` (13:56:00). Case and spaces inside the braces do not matter (`{{ Char }}`), as in
SillyTavern; a macro alma does not know is left as written.
"""

from __future__ import annotations

import re
from datetime import datetime

DEFAULT_USER = "User"
_MACRO = re.compile(r"\{\{\s*([A-Za-z]+)\s*\}\}|<(BOT|USER)>", re.IGNORECASE)
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def day(moment: datetime) -> str:
    """`8 May 2023`: a date no reader takes for another (nor month for day), in the prompt's
    language whatever the machine's locale."""
    return f"{moment.day} {_MONTHS[moment.month - 1]} {moment.year}"


def fill(text: str, char: str, user: str | None, now: datetime) -> str:
    """`text` with its macros filled; `user` None is DEFAULT_USER."""
    if "{{" not in text and "<" not in text:
        return text
    values = {
        "char": char,
        "bot": char,
        "user": user or DEFAULT_USER,
        "date": day(now),
        "time": now.strftime("%H:%M"),
        "weekday": _WEEKDAYS[now.weekday()],
        "isodate": now.strftime("%Y-%m-%d"),
        "isotime": now.strftime("%H:%M:%S"),
    }

    def value(found: re.Match[str]) -> str:
        name = (found.group(1) or found.group(2)).lower()
        if found.group(1) and name == "bot":  # {{bot}} is no macro; <BOT> is
            return found.group(0)
        return values.get(name, found.group(0))

    # A function, not a replacement string: a backslash in a name must not read as an escape.
    return _MACRO.sub(value, text)
