// The instance's memory: search (k, min_score as the API takes them), add, revise, forget,
// and the audit: every change as a timeline, with its diff, who made it and where it came from.

import { get, patch, post, remove } from "./api.js";
import { clear, field, h, when } from "./dom.js";
import { t } from "./i18n.js";
import { attempt, note } from "./status.js";
import { confirmDialog } from "./dialog.js";
import { paged } from "./paged.js";

export async function memoryView(instance) {
  const list = paged(h("ul", { class: "list", id: "memories" }), `/v1/instances/${instance.id}/memories`,
    (m) => memoryItem(instance, m, refresh), () => t("noMemories"));
  const audit = paged(h("ol", { class: "timeline", id: "audit" }), `/v1/instances/${instance.id}/memory/audit`,
    (change) => auditItem(instance, change), () => t("none"));
  async function refresh() {
    await list.load(true);
    await audit.load(true);
  }
  await refresh();
  return h("div", { class: "memory" },
    searchForm(instance),
    addForm(instance, refresh),
    h("h2", {}, t("memories")), list.element, list.more,
    h("h2", {}, t("memoryText")), h("pre", { class: "memory-text" }, instance.memory || t("none")),
    h("h2", {}, t("audit")), audit.element, audit.more);
}

function searchForm(instance) {
  const q = h("input", { type: "search", name: "q", required: true, maxlength: 2000 });
  const k = h("input", { type: "number", name: "k", min: 1, max: 100, value: 10 });
  const minScore = h("input", { type: "number", name: "min_score", min: 0, max: 1, step: 0.05, value: 0 });
  const results = h("ol", { class: "results", id: "results" });
  const said = note();
  const form = h("form", { class: "card", role: "search" }, h("h2", {}, t("searchMemory")),
    field(t("query"), q), h("div", { class: "inline" }, field("k", k), field("min_score", minScore)),
    h("button", { type: "submit" }, t("search")), said, results);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(said, async () => {
      const found = await get(`/v1/instances/${instance.id}/memories/search`,
        { q: q.value, k: k.value, min_score: minScore.value, consistent: "true" });
      clear(results, found.results.length ? found.results.map((hit) => h("li", {},
        h("span", { class: "score" }, hit.score.toFixed(2)), " ",
        h("span", { class: "tag" }, t(`source_${hit.source}`)), " ",
        hit.speaker ? h("strong", {}, hit.speaker, ": ") : null,
        h("span", { class: "memory-text" }, hit.text), " ",
        h("time", { class: "muted", datetime: hit.occurred_at }, when(hit.occurred_at)))) : h("li", { class: "empty" }, t("nothingFound")));
    });
  });
  return form;
}

function addForm(instance, refresh) {
  const text = h("textarea", { name: "text", rows: 2, required: true, maxlength: 10000 });
  const importance = h("input", { type: "number", name: "importance", min: 0, max: 1, step: 0.1, value: 0.5 });
  const speaker = h("input", { name: "speaker", maxlength: 200 });
  const said = note();
  const form = h("form", { class: "card", id: "add-memory" }, h("h2", {}, t("addMemory")),
    field(t("text"), text), h("div", { class: "inline" }, field(t("importance"), importance), field(t("speaker"), speaker)),
    said, h("button", { type: "submit" }, t("add")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(said, async () => {
      const body = { text: text.value, importance: Number(importance.value) };
      if (speaker.value.trim()) body.speaker = speaker.value.trim();
      await post(`/v1/instances/${instance.id}/memories`, body);
      text.value = "";
      await refresh();
    });
  });
  return form;
}

function memoryItem(instance, memory, refresh) {
  const text = h("textarea", { name: "text", rows: 2, required: true, value: memory.text });
  const importance = h("input", { type: "number", name: "importance", min: 0, max: 1, step: 0.1, value: memory.importance });
  const said = note();
  const revise = h("form", {}, field(t("text"), text), field(t("importance"), importance),
    h("button", { type: "submit" }, t("revise")));
  revise.addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(said, async () => {
      await patch(`/v1/instances/${instance.id}/memories/${memory.id}`, { text: text.value, importance: Number(importance.value) });
      await refresh();
    });
  });
  const messagesToo = h("input", { type: "checkbox", name: "recall" });
  const forget = h("button", { type: "button", class: "danger forget" }, t("forget"));
  forget.addEventListener("click", async () => {
    if (!(await confirmDialog(t("forgetQ", { text: memory.text.slice(0, 80) }), t("forget")))) return;
    attempt(said, async () => {
      await remove(`/v1/instances/${instance.id}/memories/${memory.id}`, messagesToo.checked ? { recall: "messages" } : {});
      await refresh();
    });
  });
  return h("li", { class: "memory-item", "data-id": memory.id },
    h("p", { class: "memory-text" }, memory.text),
    h("p", { class: "muted" }, t("importance"), ` ${memory.importance} · `, when(memory.occurred_at),
      memory.speaker ? ` · ${memory.speaker}` : "", " ", sourceLinks(instance, memory.source)),
    h("details", {}, h("summary", {}, t("change")), revise,
      h("div", { class: "row" }, h("label", {}, messagesToo, " ", t("forgetMessagesToo")), forget)),
    said);
}

// Where a memory came from: the messages the memory process formed it from, linked to them in
// the conversation; or the instance it was forked from.
function sourceLinks(instance, source) {
  if (!source) return null;
  if (source.messages) {
    return h("span", { class: "source" }, t("formedFrom"), " ", source.messages.map((id, n) =>
      [n ? ", " : "", h("a", { href: `#/instances/${instance.id}/chat?m=${id}` }, t("messageN", { n: n + 1 }))]));
  }
  if (source.forked_from) {
    return h("a", { href: `#/instances/${source.forked_from.instance_id}/memory` }, t("copiedFromFork"));
  }
  return null;
}

function auditItem(instance, change) {
  const actor = change.actor || {};
  const who = actor.key_id === "memory-process" ? t("memoryProcess") : `${actor.tenant || ""} · ${t("key")} ${String(actor.key_id || "").slice(0, 8)}`;
  return h("li", { class: `change ${change.kind}` },
    h("div", {}, h("strong", {}, t(change.kind)), " ", h("time", { datetime: change.timestamp }, when(change.timestamp)),
      " · ", who, " · v", String(change.version), " ", sourceLinks(instance, change.source)),
    diffBlock(change.diff));
}

function diffBlock(diff) {
  return h("pre", { class: "diff" }, diff.split("\n").filter((line) => !line.startsWith("---") && !line.startsWith("+++"))
    .map((line) => h("span", { class: line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : line.startsWith("@@") ? "hunk" : "" }, line, "\n")));
}
