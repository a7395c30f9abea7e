// The web app's shell: the key screen, the header, the views by address (#/...), and what the
// page says when alma cannot be reached or refuses the key.

import { ApiError, get, key } from "./api.js";
import { describe, problem } from "./status.js";
import { clear, field, h } from "./dom.js";
import { language, setLanguage, t } from "./i18n.js";
import { characterView, charactersView, newCharacterView } from "./characters.js";
import { instanceView } from "./instance.js";
import { lorebookView, lorebooksView } from "./lorebooks.js";

const main = document.getElementById("main");
const header = document.getElementById("top");

const routes = [
  [/^#?\/?$/, () => charactersView()],
  [/^#\/characters\/new$/, () => newCharacterView()],
  [/^#\/characters\/([0-9a-f-]{36})$/, (id) => characterView(id)],
  [/^#\/instances\/([0-9a-f-]{36})(?:\/(chat|memory|history))?(?:\?m=([0-9a-f-]{36}))?$/,
    (id, tab, focus) => instanceView(id, tab || "chat", focus)],
  [/^#\/lorebooks$/, () => lorebooksView()],
  [/^#\/lorebooks\/([0-9a-f-]{36})$/, (id) => lorebookView(id)],
];

let drawn = 0;

async function render() {
  problem(null);
  if (!key.get()) return keyScreen();
  const match = routes.map(([pattern, view]) => [pattern.exec(location.hash), view]).find(([m]) => m);
  if (!match) return clear(main, h("p", {}, t("noSuchPage")), h("a", { href: "#/" }, t("characters")));
  const [found, view] = match;
  const drawing = ++drawn; // a slower view asked for before this one must not replace it
  try {
    const content = await view(...found.slice(1));
    if (drawing === drawn) clear(main, content);
  } catch (error) {
    if (drawing !== drawn || (error instanceof ApiError && error.status === 401)) return;
    clear(main, h("p", { class: "error", role: "alert" }, describe(error)));
    problem(error, render);
  }
}

function keyScreen(message) {
  drawn++; // a view asked for with the key before must not replace this screen
  drawHeader();
  const input = h("input", { type: "password", name: "key", autocomplete: "off", required: true, spellcheck: "false" });
  const note = h("p", { class: "error", role: "alert" }, message || "");
  const form = h("form", { class: "card key" },
    h("h1", {}, t("welcome")),
    h("p", {}, t("keyHelp")),
    field(t("apiKey"), input),
    note,
    h("button", { type: "submit" }, t("open")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    key.set(input.value);
    try {
      await get("/v1/characters", { limit: 1 });
      drawHeader();
      render();
    } catch (error) {
      if (error.status === 401) key.clear();
      note.textContent = describe(error);
    }
  });
  clear(main, form);
  input.focus();
}

function drawHeader() {
  const signedIn = Boolean(key.get());
  const choose = h("select", { id: "language", onchange: (e) => { setLanguage(e.target.value); drawHeader(); render(); } },
    h("option", { value: "en" }, "English"), h("option", { value: "es" }, "Español"));
  choose.value = language();
  clear(header,
    h("a", { href: "#/", class: "brand" }, "alma"),
    signedIn ? h("nav", { "aria-label": t("sections") },
      h("a", { href: "#/" }, t("characters")), " ", h("a", { href: "#/lorebooks" }, t("lorebooks"))) : null,
    h("span", { class: "spacer" }),
    h("label", { for: "language", class: "sr-only" }, t("language")), choose,
    signedIn ? h("button", { type: "button", class: "quiet", onclick: () => { key.clear(); drawHeader(); render(); } }, t("forgetKey")) : null);
  document.documentElement.lang = language();
  document.title = t("title");
}

window.addEventListener("alma:unauthorized", () => {
  key.clear();
  drawHeader();
  keyScreen(t("keyRefused"));
});
window.addEventListener("hashchange", render);
drawHeader();
render();
