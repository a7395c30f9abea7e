"""The web app in a real browser (headless Chromium), against a real `alma serve` on SQLite with
the scripted stub as its chat model: the journeys a person takes through the page. One server
and one browser serve the whole module; each test signs in afresh."""

from __future__ import annotations

import io
import json
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.openai_stub import Behaviour, Reply
from tests.test_cards import png, text_chunk, v2_card
from tests.web import (
    EchoStub,
    Served,
    browser,
    need_a_browser,
    remembered,
    screenshot,
    serving,
    wait,
)
from tests.web import sign_in as _sign_in

pytestmark = pytest.mark.slow  # a server and a browser: about a minute for the module

XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    need_a_browser()
    with EchoStub() as stub, serving(tmp_path_factory.mktemp("web"), stub) as served:
        yield served


@pytest.fixture(scope="module")
def driver(site: Served) -> Iterator[Any]:
    with browser(language="es") as chromium:
        yield chromium


@pytest.fixture
def page(site: Served, driver: Any) -> Any:
    driver.set_window_size(1280, 900)
    _sign_in(driver, site.base, site.key)
    return driver


def css(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def all_css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def submit(driver: Any, form: str) -> None:
    css(driver, f"{form} button[type=submit]").click()


def confirm(driver: Any) -> None:
    wait(driver, lambda: css(driver, "dialog[open] button.danger")).click()


def world(site: Served, name: str, memory: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """A character and an instance of it, made through the API."""
    with site.http() as http:
        character = http.post(
            "/v1/characters", json={"name": f"Doña {name}", "description": "Curandera"}
        ).json()
        instance = http.post(
            f"/v1/characters/{character['id']}/instances", json={"name": name, "memory": memory}
        ).json()
    return character, instance


def say(driver: Any, text: str) -> Any:
    """Sends a chat message and answers the reply's element once its turn is shown."""
    before = len(all_css(driver, "#log .message.assistant .built"))
    box = css(driver, "#composer textarea")
    box.send_keys(text)
    submit(driver, "#composer")
    wait(driver, lambda: len(all_css(driver, "#log .message.assistant .built")) > before)
    return all_css(driver, "#log .message.assistant")[-1]


def events(site: Served, instance_id: str, kind: str) -> list[dict[str, Any]]:
    with site.http() as http:
        answer = http.get(f"/v1/instances/{instance_id}/events", params={"type": kind})
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def test_a_card_dropped_in_chats_with_its_reply_streaming_and_what_it_was_built_from(
    site: Served, page: Any, tmp_path: Path
) -> None:
    from tests.openai_stub import Reply

    card = v2_card(name="Serafina 🌿", description="Guardiana del claro; habla bajito, ¿sabes?")
    path = tmp_path / "serafina.png"
    path.write_bytes(png(text_chunk("chara", card)))
    css(page, "#import input[type=file]").send_keys(str(path))
    wait(page, lambda: css(page, "h1").text == "Serafina 🌿")
    screenshot(page, "character")

    # An instance: a name taken is said beside the form, and nothing is made.
    name = css(page, "#new-instance input[name=name]")
    name.send_keys("Serafina del claro")
    submit(page, "#new-instance")
    wait(page, lambda: css(page, "#composer"))
    instance_id = page.current_url.split("#/instances/")[1].split("/")[0]
    page.back()
    wait(page, lambda: css(page, "#instances a.name").text == "Serafina del claro")
    taken = css(page, "#new-instance input[name=name]")
    taken.send_keys(" SERAFINA DEL CLARO ")
    submit(page, "#new-instance")
    error = wait(page, lambda: css(page, "#new-instance .error").text)
    assert "en uso" in error, error
    assert len(all_css(page, "#instances > li")) == 1

    # The chat opens with a greeting of the card, the user's name filled in.
    page.get(f"{site.base}/#/instances/{instance_id}/chat")
    persona = wait(page, lambda: css(page, ".persona input[name=user_name]"))
    persona.send_keys("Ana")
    submit(page, ".persona")
    wait(page, lambda: css(page, ".persona [role=status]").text == "Guardado.")
    greetings = all_css(page, ".greetings button.greeting")
    assert len(greetings) == 3  # first_mes and the two alternates
    greetings[2].click()
    wait(page, lambda: "Welcome back, Ana." in css(page, "#log").text)

    # The reply streams: part of it is on the page before the rest.
    reply = "Las estrellas guardan el claro esta noche, Ana 🌙"
    site.stub.script(Reply(reply, chunk_delay_s=0.25))
    css(page, "#composer textarea").send_keys("¿Qué guarda el claro?")
    submit(page, "#composer")

    def part_of_it() -> str | None:
        shown: str = css(page, "#log .message.streaming .text").text
        return shown if shown and shown != reply else None

    partial = wait(page, part_of_it)
    assert reply.startswith(partial.strip()), partial
    built = wait(page, lambda: css(page, "#log .message.assistant:last-child .built"))
    assert css(page, "#log .message.assistant:last-child .text").text == reply
    assert "gpt-3.5-turbo" in built.text
    assert "tokens" in built.text
    [recorded] = events(site, instance_id, "ReplyRecorded")
    assert (recorded["data"]["content"], recorded["data"]["interrupted"]) == (reply, False)
    screenshot(page, "chat")

    # A reply heard in the character's voice (espeak-ng): the button stays pressed while it plays.
    listen = css(page, "#log .message.assistant:last-child button.play")
    listen.click()
    wait(page, lambda: listen.get_attribute("aria-pressed") == "true")


def test_a_memory_added_is_used_by_the_next_reply_and_forgotten_is_gone(
    site: Served, page: Any
) -> None:
    _, instance = world(site, "Rosa")
    memory = "Ana le tiene miedo a los lobos 🐺"
    page.get(f"{site.base}/#/instances/{instance['id']}/memory")
    wait(page, lambda: css(page, "#add-memory textarea")).send_keys(memory)
    submit(page, "#add-memory")
    wait(page, lambda: memory in css(page, "#memories").text)
    assert "Memoria añadida" in css(page, "#audit").text

    page.get(f"{site.base}/#/instances/{instance['id']}/chat")
    wait(page, lambda: css(page, "#composer textarea"))
    answer = say(page, "¿A qué le tengo miedo?")
    assert memory in answer.find_element("css selector", ".built .memories-used").text
    assert memory in answer.find_element("css selector", ".text").text  # the model had it
    assert memory in remembered(site.stub.requests[-1])

    page.get(f"{site.base}/#/instances/{instance['id']}/memory")
    item = wait(page, lambda: css(page, "#memories .memory-item"))
    item.find_element("css selector", "summary").click()
    # The reply that repeated it goes out of recall with it (`recall=messages`).
    item.find_element("css selector", "input[name=recall]").click()
    item.find_element("css selector", "button.forget").click()
    confirm(page)
    wait(page, lambda: "Todavía no hay memorias" in css(page, "#memories").text)
    wait(page, lambda: "Memoria olvidada" in css(page, "#audit").text)
    css(page, "form[role=search] input[name=q]").send_keys("lobos")
    submit(page, "form[role=search]")
    results = wait(page, lambda: css(page, "#results li") and css(page, "#results"))
    assert "lobos" not in results.text, results.text
    screenshot(page, "memory")

    page.get(f"{site.base}/#/instances/{instance['id']}/chat")
    wait(page, lambda: css(page, "#composer textarea"))
    answer = say(page, "¿A qué le tengo miedo?")
    assert memory not in answer.text
    assert memory not in remembered(site.stub.requests[-1])


def test_stop_interrupts_a_reply_and_alma_records_it_interrupted(site: Served, page: Any) -> None:
    from tests.openai_stub import Reply

    _, instance = world(site, "Lucía")
    words = " ".join(f"palabra{n}" for n in range(40))
    site.stub.script(Reply(words, chunk_delay_s=0.3))
    page.get(f"{site.base}/#/instances/{instance['id']}/chat")
    wait(page, lambda: css(page, "#composer textarea")).send_keys("Cuéntame algo largo")
    submit(page, "#composer")
    wait(page, lambda: "palabra2" in css(page, "#log .message.streaming .text").text)
    css(page, "#stop").click()
    wait(page, lambda: css(page, "#log .message.assistant .interrupted"))
    shown = css(page, "#log .message.assistant .text").text.strip()

    def recorded() -> list[dict[str, Any]]:
        return events(site, instance["id"], "ReplyRecorded")

    [reply] = wait(page, recorded)
    assert reply["data"]["interrupted"] is True
    assert words.startswith(reply["data"]["content"]) and reply["data"]["content"] != words
    assert reply["data"]["content"].startswith(shown[: len("palabra0 palabra1")])


def test_slide_to_an_old_version_and_fork_from_it(site: Served, page: Any) -> None:
    from selenium.webdriver.common.keys import Keys

    _, instance = world(site, "Mateo", memory="Vive en Oaxaca.")
    with site.http() as http:
        http.patch(f"/v1/instances/{instance['id']}", json={"memory": "Se mudó a Sevilla."})
        http.patch(f"/v1/instances/{instance['id']}", json={"name": "Mateo el viajero"})
    page.get(f"{site.base}/#/instances/{instance['id']}/history")
    slider = wait(page, lambda: css(page, "#version"))
    assert css(page, "#then .then-name").text == "Mateo el viajero"
    assert css(page, "#then .then-memory").text == "Se mudó a Sevilla."
    slider.send_keys(Keys.HOME)  # the keyboard moves it: to version 1
    wait(page, lambda: css(page, "#then .then-memory").text == "Vive en Oaxaca.")
    assert css(page, "#then .then-name").text == "Mateo"
    assert css(page, "#version-shown").text == "1"
    screenshot(page, "history")

    css(page, "#fork input[name=name]").send_keys("Mateo joven")
    submit(page, "#fork")
    wait(page, lambda: css(page, "h1").text == "Mateo joven")
    fork_id = page.current_url.split("#/instances/")[1].split("/")[0]
    with site.http() as http:
        fork = http.get(f"/v1/instances/{fork_id}").json()
    assert fork["forked_from"] == {"instance_id": instance["id"], "version": 1}
    assert fork["memory"] == "Vive en Oaxaca."


def test_a_name_with_markup_shows_as_text_and_runs_nothing(site: Served, page: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    with site.http() as http:
        made = http.post(
            "/v1/characters", json={"name": XSS, "description": "<script>alert(2)</script>"}
        )
        assert made.status_code == 201, made.text
    page.get(f"{site.base}/#/")
    css(page, "form[role=search] input[name=q]").send_keys("onerror")
    submit(page, "form[role=search]")
    wait(page, lambda: [a.text for a in all_css(page, "#characters a.name")] == [XSS])
    assert "<script>alert(2)</script>" in css(page, "#characters").text
    assert not all_css(page, "#characters img, #characters script")
    time.sleep(0.5)  # an injected image would have failed to load and run its handler by now
    with pytest.raises(NoAlertPresentException):
        page.switch_to.alert.text  # noqa: B018
    policy = page.execute_script(
        "return fetch('/').then(r => r.headers.get('content-security-policy'))"
    )
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy


def test_a_wrong_key_is_refused_in_words_and_not_kept(site: Served, driver: Any) -> None:
    driver.get(site.base + "/")
    driver.execute_script("sessionStorage.clear()")
    driver.get(site.base + "/#/")
    wait(driver, lambda: css(driver, "input[name=key]")).send_keys("alma_not-a-real-key")
    submit(driver, "form.key")
    message = wait(driver, lambda: css(driver, "form.key .error").text)
    assert "rechazó esta clave" in message
    assert driver.execute_script("return sessionStorage.getItem('alma.key')") is None
    assert "alma_" not in driver.current_url
    screenshot(driver, "key")


def test_english_or_spanish_and_a_phone_s_width(site: Served, page: Any) -> None:
    assert css(page, "h1").text == "Personajes"  # the browser's language: Spanish
    css(page, "#language").send_keys("English")
    wait(page, lambda: css(page, "h1").text == "Characters")
    _, instance = world(site, "Tomás")
    page.set_window_size(390, 844)
    page.get(f"{site.base}/#/instances/{instance['id']}/chat")
    wait(page, lambda: css(page, "#composer textarea"))
    overflow = page.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page is {overflow} px wider than a phone"
    assert css(page, "label[for]").is_displayed()  # inputs keep their labels
    screenshot(page, "phone")
    css(page, "#language").send_keys("Español")
    wait(page, lambda: "Mensaje" in css(page, "#composer").text)


def test_alma_down_says_so_and_the_page_comes_back(site: Served, page: Any) -> None:
    site.stop()
    try:
        submit(page, "form[role=search]")
        banner = wait(page, lambda: css(page, "#banner").is_displayed() and css(page, "#banner"))
        assert "No se puede contactar con alma" in banner.text
        assert site.base in banner.text
        assert css(page, "#characters").is_displayed()  # the page stays: no blank page
        page.get(f"{site.base}/#/lorebooks")  # a route change, still down
        wait(page, lambda: "No se puede contactar" in css(page, "#main").text)
        screenshot(page, "down")
    finally:
        site.start()
    css(page, "#banner button").click()
    wait(page, lambda: css(page, "#lorebooks"))
    assert not css(page, "#banner").is_displayed()


def test_a_past_reply_shows_what_it_was_built_from_after_a_reload(site: Served, page: Any) -> None:
    _, instance = world(site, "Inés")
    memory = "Ana guarda las llaves bajo la maceta 🪴"
    with site.http() as http:
        url = f"/v1/instances/{instance['id']}"
        made = http.post(f"{url}/memories", json={"text": memory}).json()
        http.get(f"{url}/memories/search", params={"q": "llaves", "consistent": "true"})
        turn = http.post(f"{url}/chat", json={"message": "¿Dónde están las llaves?"}).json()
        [used] = [m for m in turn["memories_used"] if m["id"] == made["id"]]
        http.patch(f"{url}/memories/{made['id']}", json={"text": "Ana ya no esconde llaves"})

    page.get(f"{site.base}/#/instances/{instance['id']}/chat")
    reply = wait(page, lambda: css(page, f"#m-{turn['turn']['reply_id']}"))
    built = reply.find_element("css selector", ".built")
    built.find_element("css selector", "summary").click()
    recalled = wait(page, lambda: built.find_element("css selector", ".memories-used li.revised"))
    assert memory in recalled.find_element("css selector", ".memory-text").text  # as it was
    assert f"{used['score']:.2f}" in recalled.find_element("css selector", ".score").text
    assert "revisada después" in recalled.text and "Ana ya no esconde llaves" in recalled.text
    assert recalled.find_element("css selector", "time").text  # when it happened
    assert "gpt-3.5-turbo" in built.text and "tokens" in built.text
    screenshot(page, "built-from")


def test_a_lorebook_made_and_attached_in_the_page_reaches_the_next_reply(
    site: Served, page: Any
) -> None:
    from selenium.webdriver.support.select import Select

    _, instance = world(site, "Carmen")
    lore = "El río Atoyac cruza el valle 🌊"
    page.get(f"{site.base}/#/lorebooks")
    wait(page, lambda: css(page, "#lorebooks"))
    css(page, "form.card input[name=name]").send_keys("La sierra de Oaxaca")
    submit(page, "form.card")
    wait(page, lambda: css(page, "h1").text == "La sierra de Oaxaca")
    entry = all_css(page, "form.entry")[-1]
    entry.find_element("css selector", "textarea[name=content]").send_keys(lore)
    entry.find_element("css selector", "input[name=comment]").send_keys("el río")
    entry.find_element("css selector", "input[name=constant]").click()
    entry.find_element("css selector", "button[type=submit]").click()
    wait(page, lambda: all_css(page, "#entries form.entry"))
    book_id = page.current_url.split("#/lorebooks/")[1]

    page.get(f"{site.base}/#/instances/{instance['id']}/chat")
    attached = wait(page, lambda: css(page, "details.instance-lorebooks"))
    attached.find_element("css selector", "summary").click()
    assert "Ningún lorebook asociado" in attached.text
    choice = Select(attached.find_element("css selector", "form.attach select"))
    choice.select_by_visible_text("La sierra de Oaxaca")  # (a card's book is there too)
    attached.find_element("css selector", "form.attach button[type=submit]").click()
    wait(page, lambda: "La sierra de Oaxaca" in css(page, ".lorebooks-attached ul").text)
    with site.http() as http:
        listed = http.get(f"/v1/instances/{instance['id']}/lorebooks").json()
    assert listed == {"lorebook_ids": [book_id]}

    answer = say(page, "¿Qué río cruza el valle?")
    used = answer.find_element("css selector", ".built .lore-used").text
    assert lore in used and "La sierra de Oaxaca" in used
    assert any(lore in str(m["content"]) for m in site.stub.requests[-1]["messages"])
    screenshot(page, "lorebooks")

    css(page, ".lorebooks-attached button.detach").click()
    wait(page, lambda: "Ningún lorebook asociado" in css(page, ".lorebooks-attached").text)
    with site.http() as http:
        assert http.get(f"/v1/instances/{instance['id']}/lorebooks").json() == {"lorebook_ids": []}


class FormingStub(EchoStub):
    """The echoing model, which also answers the memory process: one fact to add."""

    fact = "Ana tiene una perra que se llama Trufa 🐕"

    def answer(self, body: dict[str, Any], headers: dict[str, str]) -> Behaviour:
        asked = " ".join(str(m.get("content")) for m in body.get("messages", []))
        if "decide what is worth remembering" in asked:
            return Reply(json.dumps([{"op": "add", "text": self.fact}], ensure_ascii=False))
        return super().answer(body, headers)


def test_a_formed_memory_s_audit_links_to_the_messages_it_came_from(
    driver: Any, tmp_path: Path
) -> None:
    said = "Tengo una perra que se llama Trufa"
    with (
        FormingStub() as stub,
        serving(tmp_path, stub, ALMA_MEMORY_FORMATION="true") as served,
        served.http() as http,
    ):
        _, instance = world(served, "Rocío")
        url = f"/v1/instances/{instance['id']}"
        http.post(f"{url}/chat", json={"message": said}).raise_for_status()

        def formed() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = http.get(f"{url}/memories").json()["items"]
            return items

        [memory] = wait(driver, formed, 60)
        assert memory["text"] == FormingStub.fact and memory["source"]["messages"]

        _sign_in(driver, served.base, served.key)
        driver.get(f"{served.base}/#{url.removeprefix('/v1')}/memory")
        change = wait(driver, lambda: css(driver, "#audit li.memory_added"))
        assert "el proceso de memoria" in change.text
        first = memory["source"]["messages"][0]
        change.find_element("css selector", f"a[href$='?m={first}']").click()
        shown = wait(driver, lambda: css(driver, f"#log .message.focus#m-{first}"))
        assert shown.find_element("css selector", ".text").text == said
        assert "chat" in driver.current_url


def test_the_microphone_sends_a_spoken_turn_and_the_reply_is_heard(
    site: Served, tmp_path: Path
) -> None:
    from tests.speech_samples import SPANISH, word_error_rate
    from tests.speech_samples import say as speak

    spoken = SPANISH[1]  # the sentence Whisper hears best from espeak-ng
    clip = tmp_path / "habla.wav"
    seconds = _after_a_second_of_silence(speak(spoken, "es"), clip)
    _, instance = world(site, "Dolores")
    fake_microphone = (
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={clip}%noloop",
        "--autoplay-policy=no-user-gesture-required",
    )
    with browser(extra=fake_microphone) as chromium:
        _sign_in(chromium, site.base, site.key)
        chromium.get(f"{site.base}/#/instances/{instance['id']}/chat")
        microphone = wait(chromium, lambda: css(chromium, "#composer button.mic"))
        microphone.click()
        wait(chromium, lambda: microphone.get_attribute("aria-pressed") == "true")
        time.sleep(seconds + 1)  # the clip, said into the fake microphone
        microphone.click()
        heard = wait(chromium, lambda: css(chromium, "#log .message.user .text").text, 90)
        # espeak-ng's voice, through the browser's Opus, is hard listening: most words come back
        assert word_error_rate(spoken, heard) <= 0.5, heard
        assert "restaurante" in heard and "centro" in heard, heard
        player = "document.querySelector('#log .message.assistant audio.spoken')"
        wait(chromium, lambda: chromium.execute_script(f"return {player}.played.length > 0"), 60)
        reply = css(chromium, "#log .message.assistant")
        assert "Recuerdo:" in reply.find_element("css selector", ".text").text
        assert reply.find_element("css selector", ".built")
    [message] = events(site, instance["id"], "MessageRecorded")
    assert message["data"]["content"] == heard


def _after_a_second_of_silence(audio: bytes, path: Path) -> float:
    """Writes the WAV `audio` to `path` after a second of silence (the time the page takes to
    start recording once the microphone opens); answers its length in seconds."""
    with wave.open(io.BytesIO(audio)) as read:
        params, frames = read.getparams(), read.readframes(read.getnframes())
    silence = b"\0" * (params.framerate * params.sampwidth * params.nchannels)
    with wave.open(str(path), "wb") as out:
        out.setparams(params)
        out.writeframes(silence + frames)
    return 1 + params.nframes / params.framerate
