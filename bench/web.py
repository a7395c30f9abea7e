"""The web app's speed, in a real browser (Debian's headless Chromium) against `alma serve` on
loopback: how soon the first view (the characters list) is drawn and usable with 1,000
characters, how soon a chat view with 10,000 past messages opens (it reads the last page, not
the conversation), and how many bytes the page's own files weigh compressed, as served.

Times are read in the page with the Performance API: from the start of the navigation (a full
load of the page, its scripts and its API calls) to the moment the list's first item, or the
conversation's messages and its message box, are in the document (a script Chromium runs
before the page's own, through DevTools, watches for them). Each is the median and the slowest
of ten loads after one to warm up.

    python -m bench.web            # prints the table; about a minute
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.report import Row, checked, log, machine_load, print_table
from bench.serve import alma_serve, create_key
from tests.openai_stub import OpenAIStub
from tests.web import browser, need_a_browser, sign_in

STATIC = Path(__file__).resolve().parents[1] / "api" / "static"
TARGET_S = 1.0
TARGET_KB = 300
# Run before the page's scripts: notes when each view's content first appears.
WATCH = """
window.__shown = {};
new MutationObserver(() => {
  const now = performance.now();
  if (!window.__shown.list && document.querySelector('#characters li a.name'))
    window.__shown.list = now;
  if (!window.__shown.chat && document.querySelector('#log .message') &&
      document.querySelector('#composer textarea')) window.__shown.chat = now;
}).observe(document, {childList: true, subtree: true});
"""


def seed(http: httpx.Client, characters: int, messages: int) -> str:
    """`characters` characters, and an instance of the last with `messages` past messages."""
    character: dict[str, Any] = {}
    for n in range(characters):
        body = {"name": f"Personaje {n:04d} ñ", "description": f"Descripción número {n}, ¿sí?"}
        character = http.post("/v1/characters", json=body).json()
    instance = http.post(
        f"/v1/characters/{character['id']}/instances", json={"name": "La de las 10.000"}
    ).json()
    for start in range(0, messages, 1000):
        batch = [
            {"role": "user" if n % 2 == 0 else "assistant", "content": f"Mensaje {n}: ¿qué tal?"}
            for n in range(start, min(start + 1000, messages))
        ]
        answer = http.post(f"/v1/instances/{instance['id']}/messages", json={"messages": batch})
        answer.raise_for_status()
    return str(instance["id"])


def caught_up(http: httpx.Client, timeout: float = 1800) -> None:
    """Until every projection has read the whole log (`/health`): the views are measured as a
    user meets them, not while alma embeds what was just imported."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http.get("/health").json().get("projection_lag_events") == 0:
            return
        time.sleep(1)
    raise RuntimeError(f"the projections did not catch up within {timeout} s")


def shown_after(driver: Any, url: str, view: str) -> float:
    """Seconds from the start of a full load of `url` until `view` is drawn."""
    driver.get("about:blank")
    driver.get(url)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        at = driver.execute_script(f"return window.__shown && window.__shown.{view}")
        if at:
            return float(at) / 1000
        time.sleep(0.02)
    raise RuntimeError(f"{view} was not drawn within 30 s at {url}")


def measure(driver: Any, url: str, view: str, loads: int) -> list[float]:
    shown_after(driver, url, view)  # warm-up: the server's caches, the browser's
    return [shown_after(driver, url, view) for _ in range(loads)]


def compressed_kb(base: str) -> tuple[float, float, int]:
    """The page's files as served to a browser that takes gzip: KB sent, KB unpacked, files."""
    paths = ["/"] + ["/web/" + str(p.relative_to(STATIC)) for p in STATIC.rglob("*") if p.is_file()]
    sent = unpacked = 0
    for path in paths:
        with httpx.stream("GET", base + path, headers={"Accept-Encoding": "gzip"}) as answer:
            answer.raise_for_status()
            sent += sum(len(chunk) for chunk in answer.iter_raw())
        unpacked += len(httpx.get(base + path).content)
    return sent / 1024, unpacked / 1024, len(paths) - 1  # "/" is index.html again


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--characters", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--loads", type=int, default=10)
    args = parser.parse_args()
    need_a_browser()
    with tempfile.TemporaryDirectory() as folder, OpenAIStub() as stub:
        root = Path(folder)
        model = {
            "OPENAI_API_KEY": "sk-bench",
            "OPENAI_BASE_URL": stub.base_url,
            "ALMA_MEMORY_FORMATION": "false",
        }
        key = create_key(root, "bench", model)
        with alma_serve(root, model) as (_, base):
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=base, headers=headers, timeout=120) as http:
                log(f"seeding {args.characters} characters and {args.messages} messages")
                instance = seed(http, args.characters, args.messages)
                log("waiting for the read models and the index to catch up")
                caught_up(http)
            sent, unpacked, files = compressed_kb(base)
            with browser(language="en") as driver:
                driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH})
                sign_in(driver, base, key)
                log("loading the characters list")
                listed = measure(driver, f"{base}/#/", "list", args.loads)
                log("loading the chat view")
                chat = measure(driver, f"{base}/#/instances/{instance}/chat", "chat", args.loads)
    rows = [
        Row(
            f"first view (characters list, {args.characters:,} characters): p50 / slowest",
            f"{statistics.median(listed):.3f} / {max(listed):.3f} s",
            f"<= {TARGET_S:.0f} s",
            checked(max(listed) <= TARGET_S),
        ),
        Row(
            f"chat view ({args.messages:,} past messages, last 50 shown): p50 / slowest",
            f"{statistics.median(chat):.3f} / {max(chat):.3f} s",
            f"<= {TARGET_S:.0f} s",
            checked(max(chat) <= TARGET_S),
        ),
        Row(
            f"the page's own files ({files}), gzip as served (unpacked)",
            f"{sent:.1f} KB ({unpacked:.1f} KB)",
            f"<= {TARGET_KB} KB",
            checked(sent <= TARGET_KB),
        ),
    ]
    print_table(f"web app, {args.loads} full loads each, loopback", rows)
    print(machine_load())


if __name__ == "__main__":
    main()
