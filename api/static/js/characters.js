// Characters: the list (search, more pages), a card dropped in, one character's page with
// every field to edit, its export and archive, and its instances.

import { get, patch, post, remove, request } from "./api.js";
import { download, field, h } from "./dom.js";
import { t } from "./i18n.js";
import { instancesSection } from "./instances.js";
import { attachedLorebooks } from "./lorebooks.js";
import { attempt, note } from "./status.js";
import { confirmDialog } from "./dialog.js";
import { paged } from "./paged.js";

const TEXTS = ["description", "personality", "scenario", "greeting", "example_dialogue", "system_prompt",
  "post_history_instructions", "creator_notes"];
const LINES = ["creator", "character_version", "nickname"];
const VOICES = ["alloy", "ash", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer",
  "f1", "f2", "f3", "f4", "f5", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8"];

export async function charactersView() {
  const search = h("input", { type: "search", name: "q" });
  let query = "";
  const list = paged(h("ul", { class: "list", id: "characters" }), "/v1/characters", characterRow,
    () => t(query ? "noMatch" : "noCharacters"), () => ({ q: query }));
  const form = h("form", { class: "inline", role: "search" }, field(t("searchCharacters"), search),
    h("button", { type: "submit" }, t("search")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    query = search.value.trim();
    attempt(null, () => list.load(true));
  });
  await list.load(true);
  return h("section", { "aria-labelledby": "characters-title" },
    h("div", { class: "row" }, h("h1", { id: "characters-title" }, t("characters")),
      h("a", { href: "#/characters/new", class: "button" }, t("newCharacter"))),
    importZone(), form, list.element, list.more);
}

function characterRow(character) {
  return h("li", {},
    h("a", { href: `#/characters/${character.id}`, class: "name" }, character.name),
    h("span", { class: "muted" }, character.description.slice(0, 140)));
}

// A Character Card (PNG, JSON or CHARX) dropped on the zone, or chosen with its button.
function importZone() {
  const input = h("input", { type: "file", accept: ".png,.json,.charx,image/png,application/json" });
  const said = note();
  const zone = h("div", { class: "drop", id: "import" }, field(t("importCard"), input, t("dropHint")), said);
  async function send(file) {
    const form = new FormData();
    form.append("file", file, file.name);
    await attempt(said, async () => {
      const response = await request("POST", "/v1/characters/import", { form });
      const character = await response.json();
      location.hash = `#/characters/${character.id}`;
    });
  }
  input.addEventListener("change", () => input.files[0] && send(input.files[0]));
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files[0]) send(event.dataTransfer.files[0]);
  });
  return zone;
}

export function newCharacterView() {
  return h("section", {}, h("h1", {}, t("newCharacter")), characterForm(null));
}

export async function characterView(id) {
  const character = await get(`/v1/characters/${id}`);
  return h("section", { class: "character" },
    h("h1", {}, character.name),
    h("details", { open: true }, h("summary", {}, t("instances")), await instancesSection(character)),
    h("details", {}, h("summary", {}, t("lorebooks")), await attachedLorebooks(`/v1/characters/${id}/lorebooks`)),
    h("details", {}, h("summary", {}, t("edit")), characterForm(character)),
    h("details", {}, h("summary", {}, t("exportArchive")), exportAndArchive(character)));
}

// Every field of a character; an edit sends only what changed, with its version (If-Match).
function characterForm(character) {
  const now = character || {};
  const inputs = {
    name: h("input", { name: "name", required: true, maxlength: 200, value: now.name || "" }),
  };
  for (const name of TEXTS) inputs[name] = h("textarea", { name, rows: name === "description" ? 4 : 2, value: now[name] || "" });
  for (const name of LINES) inputs[name] = h("input", { name, value: now[name] || "" });
  inputs.tags = h("input", { name: "tags", value: (now.tags || []).join(", ") });
  inputs.alternate_greetings = h("textarea", { name: "alternate_greetings", rows: 3,
    value: (now.alternate_greetings || []).join("\n---\n") });
  const voice = now.voice || {};
  const voiceInputs = {
    language: h("input", { name: "voice.language", value: voice.language || "", placeholder: "es, en-US" }),
    engine: h("select", { name: "voice.engine" }, h("option", { value: "" }, t("default")),
      h("option", { value: "gtts" }, "gTTS"), h("option", { value: "espeak" }, "espeak-ng")),
    voice: h("input", { name: "voice.voice", list: "voices", value: voice.voice || "" }),
    speed: h("input", { name: "voice.speed", type: "number", min: 0.25, max: 4, step: 0.05, value: voice.speed ?? "" }),
  };
  voiceInputs.engine.value = voice.engine || "";
  const said = note();
  const form = h("form", { class: "card" },
    field(t("name"), inputs.name),
    ...TEXTS.map((name) => field(t(name), inputs[name])),
    field(t("alternate_greetings"), inputs.alternate_greetings, t("greetingsHint")),
    field(t("tags"), inputs.tags, t("tagsHint")),
    ...LINES.map((name) => field(t(name), inputs[name])),
    h("fieldset", {}, h("legend", {}, t("voice")),
      field(t("voiceLanguage"), voiceInputs.language), field(t("voiceEngine"), voiceInputs.engine),
      field(t("voiceName"), voiceInputs.voice), field(t("voiceSpeed"), voiceInputs.speed),
      h("datalist", { id: "voices" }, VOICES.map((v) => h("option", { value: v })))),
    said,
    h("button", { type: "submit" }, character ? t("save") : t("create")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const fields = { name: inputs.name.value };
    for (const name of [...TEXTS, ...LINES]) fields[name] = inputs[name].value;
    fields.tags = inputs.tags.value.split(",").map((s) => s.trim()).filter(Boolean);
    fields.alternate_greetings = inputs.alternate_greetings.value.split(/\n---\n/).map((s) => s.trim()).filter(Boolean);
    const wanted = {
      language: voiceInputs.language.value.trim() || null,
      engine: voiceInputs.engine.value || null,
      voice: voiceInputs.voice.value.trim() || null,
      speed: voiceInputs.speed.value === "" ? null : Number(voiceInputs.speed.value),
    };
    attempt(said, async () => {
      if (!character) {
        const voiceSet = Object.fromEntries(Object.entries(wanted).filter(([, v]) => v !== null));
        const made = await post("/v1/characters", { ...fields, voice: Object.keys(voiceSet).length ? voiceSet : null });
        location.hash = `#/characters/${made.id}`;
        return;
      }
      const changes = {};
      for (const [name, value] of Object.entries(fields)) {
        if (JSON.stringify(value) !== JSON.stringify(now[name] ?? (Array.isArray(value) ? [] : ""))) changes[name] = value;
      }
      const voiceChanges = {};
      for (const [name, value] of Object.entries(wanted)) if (value !== (voice[name] ?? null)) voiceChanges[name] = value;
      if (Object.keys(voiceChanges).length) changes.voice = voiceChanges;
      if (Object.keys(changes).length) await patch(`/v1/characters/${character.id}`, changes, character.version);
      window.dispatchEvent(new HashChangeEvent("hashchange"));
    });
  });
  return form;
}

function exportAndArchive(character) {
  const format = h("select", { name: "format" },
    ["v2", "v3", "png", "charx"].map((f) => h("option", { value: f }, f.toUpperCase())));
  const said = note();
  const exportButton = h("button", { type: "button" }, t("export"));
  exportButton.addEventListener("click", () => attempt(said, async () => {
    const response = await request("GET", `/v1/characters/${character.id}/export`, { query: { format: format.value } });
    const extension = { v2: "json", v3: "json", png: "png", charx: "charx" }[format.value];
    download(await response.blob(), `${character.name}.${extension}`);
  }));
  const archive = h("button", { type: "button", class: "danger" }, t("archive"));
  archive.addEventListener("click", async () => {
    if (!(await confirmDialog(t("archiveCharacterQ", { name: character.name }), t("archive")))) return;
    attempt(said, async () => {
      await remove(`/v1/characters/${character.id}`, {}, character.version);
      location.hash = "#/";
    });
  });
  return h("div", { class: "card" }, h("div", { class: "inline" }, field(t("format"), format), exportButton), archive, said);
}
