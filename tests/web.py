"""Driving the web app in a real browser: Debian's headless Chromium through Selenium, against a
real `alma serve` whose chat model is the scripted OpenAI-compatible stub. Shared by the browser
tests and bench/web.py."""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from alma.settings import Settings
from tests.cli import KEY_RE, bearer, free_port, running, wait_for_health
from tests.openai_stub import Behaviour, OpenAIStub, Reply

T = TypeVar("T")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
RECOLLECTIONS = "## Things you remember"


def need_a_browser() -> None:
    """Skips loudly when Chromium or its driver is missing; under CI (`CI=true`) fails."""
    missing = [
        name for name, path in (("chromium", CHROMIUM), ("chromium-driver", DRIVER)) if not path
    ]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    if not missing:
        return
    message = f"NO BROWSER: {', '.join(missing)} missing; install them (see .ci/run)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    warnings.warn(message + " -- SKIPPING the web app's browser tests", stacklevel=2)
    pytest.skip(message)


class EchoStub(OpenAIStub):
    """The stub model, answering (when nothing is scripted) with what its prompt made it
    remember, so the page shows which memories reached the model."""

    def answer(self, body: dict[str, Any], headers: dict[str, str]) -> Behaviour:
        behaviour = super().answer(body, headers)
        if behaviour is not self.default:
            return behaviour
        return Reply(f"Recuerdo: {' | '.join(remembered(body)) or 'nada'}")


def remembered(body: dict[str, Any]) -> list[str]:
    """The recollection lines of a chat request: the system message that starts with the
    recollections' heading."""
    systems = [m["content"] for m in body.get("messages", []) if m["role"] == "system"]
    section = next((s for s in systems if s.startswith(RECOLLECTIONS)), "")
    return [line.split("] ", 1)[-1] for line in section.splitlines() if line.startswith("- [")]


@dataclass
class Served:
    """`alma serve` on SQLite with the stub as its chat model; it can be stopped and started
    again on the same port and store."""

    root: Path
    stub: OpenAIStub
    port: int = field(default_factory=free_port)
    key: str = ""
    env: dict[str, str] = field(default_factory=dict)  # more of alma's settings
    _stop: Callable[[], None] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers=bearer(self.key), timeout=60)

    def start(self) -> None:
        settings = Settings(data_dir=self.root / "data", _env_file=None)  # type: ignore[call-arg]
        env = {
            "OPENAI_API_KEY": "sk-test-alma-0123456789",
            "OPENAI_BASE_URL": self.stub.base_url,
            "ALMA_MEMORY_FORMATION": "false",  # its requests would reach the stub too
            "ALMA_TTS_ENGINE": "espeak",
            "ALMA_MODEL_MAX_RETRIES": "0",
            "ALMA_READ_MODEL_WAIT_S": "30",
            "ALMA_CONSISTENCY_WAIT_S": "60",
            "ALMA_CHAT_MEMORY_WAIT_S": "30",
            **self.env,
        }
        log = self.root / "serve.log"
        context = running(settings, ["serve", "--port", str(self.port)], log, env)
        process = context.__enter__()
        self._stop = lambda: context.__exit__(None, None, None)
        wait_for_health(self.base, process, log)
        if not self.key:
            printed = KEY_RE.findall(log.read_text(encoding="utf-8"))
            assert len(printed) == 1, log.read_text(encoding="utf-8")
            self.key = printed[0]

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None


@contextmanager
def serving(root: Path, stub: OpenAIStub, **env: str) -> Iterator[Served]:
    served = Served(root, stub, env=env)
    served.start()
    try:
        yield served
    finally:
        served.stop()


@contextmanager
def browser(
    width: int = 1280, height: int = 900, language: str = "es", extra: Sequence[str] = ()
) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        f"--lang={language}",
        *extra,
    ):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"intl.accept_languages": language})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(DRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: Any, condition: Callable[[], T], seconds: float = 30) -> T:
    """Until `condition()` answers something truthy (errors of a page still drawing count as
    not yet); fails with the browser's console log."""
    deadline = time.monotonic() + seconds
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except Exception as error:  # the element is not there yet, or was redrawn
            last = error
        time.sleep(0.05)
    console = "\n".join(str(entry) for entry in driver.get_log("browser"))
    pytest.fail(f"the page did not get there in {seconds} s ({last!r}); console:\n{console}")


def sign_in(driver: Any, base: str, key: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(base + "/")
    driver.execute_script("sessionStorage.clear()")
    driver.get(base + "/#/")
    field = wait(driver, lambda: driver.find_element(By.CSS_SELECTOR, "input[name=key]"))
    field.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "form.key button[type=submit]").click()
    wait(driver, lambda: driver.find_element(By.ID, "characters"))


def screenshot(driver: Any, name: str) -> None:
    """Saves what the page shows into docs/screenshots (README shows them)."""
    folder = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    size = driver.get_window_size()
    tall = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(size["width"], min(max(size["height"], tall + 140), 2400))
    driver.save_screenshot(str(folder / f"{name}.png"))
    driver.set_window_size(size["width"], size["height"])
