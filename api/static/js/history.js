// The instance's history: its events as a timeline, a version slider (or a date) that shows
// the instance and its memory text as they were then, and a fork from that point.

import { get, post } from "./api.js";
import { clear, field, h, when } from "./dom.js";
import { t } from "./i18n.js";
import { attempt, note } from "./status.js";

const PAGE = 200;

export async function historyView(instance) {
  const timeline = h("ol", { class: "timeline", id: "events" });
  const more = h("button", { type: "button", hidden: true }, t("more"));
  let cursor = null;
  async function load() {
    const page = await get(`/v1/instances/${instance.id}/events`, { limit: PAGE, cursor });
    timeline.append(...page.items.map(eventItem));
    cursor = page.next_cursor;
    more.hidden = !cursor;
  }
  more.addEventListener("click", () => attempt(null, load));
  await load();

  const slider = h("input", { type: "range", id: "version", min: 1, max: instance.version, step: 1, value: instance.version });
  const number = h("output", { for: slider.id, id: "version-shown" }, String(instance.version));
  const at = h("input", { type: "datetime-local", name: "at", step: 1 });
  const then = h("div", { class: "card then", id: "then" });
  const said = note();
  let shown = null;
  let timer = null;

  async function show(query) {
    await attempt(said, async () => {
      shown = await get(`/v1/instances/${instance.id}`, query);
      slider.value = shown.version;
      number.textContent = String(shown.version);
      clear(then,
        h("h2", {}, t("asItWas", { version: shown.version }), " ", h("time", { datetime: shown.updated_at }, when(shown.updated_at))),
        h("dl", {},
          h("dt", {}, t("name")), h("dd", { class: "then-name" }, shown.name),
          h("dt", {}, t("userName")), h("dd", {}, shown.user_name || t("none")),
          h("dt", {}, t("voice")), h("dd", {}, shown.voice ? JSON.stringify(shown.voice) : t("characterVoice")),
          h("dt", {}, t("memoryText")), h("dd", {}, h("pre", { class: "then-memory" }, shown.memory || t("none")))));
      for (const item of timeline.children) item.classList.toggle("current", Number(item.dataset.version) === shown.version);
    });
  }
  slider.addEventListener("input", () => {
    number.textContent = slider.value;
    clearTimeout(timer);
    timer = setTimeout(() => show({ version: slider.value }), 120);
  });
  at.addEventListener("change", () => at.value && show({ at: new Date(at.value).toISOString() }));

  const forkName = h("input", { name: "name", required: true, maxlength: 200 });
  const forkSaid = note();
  const fork = h("form", { class: "card", id: "fork" }, h("h2", {}, t("forkHere")),
    field(t("forkName"), forkName), forkSaid, h("button", { type: "submit" }, t("fork")));
  fork.addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(forkSaid, async () => {
      const made = await post(`/v1/instances/${instance.id}/fork`, { name: forkName.value, at_version: Number(slider.value) });
      location.hash = `#/instances/${made.id}`;
    });
  });
  await show({ version: instance.version });
  return h("div", { class: "history" },
    h("div", { class: "card" }, field(t("versionSlider"), slider), h("p", {}, t("version"), " ", number, " / ", String(instance.version)),
      field(t("orAt"), at), said),
    then, fork,
    h("h2", {}, t("events")), timeline, more);
}

function eventItem(event) {
  const data = event.data || {};
  const summary = data.content ?? data.name ?? data.memory ?? "";
  return h("li", { "data-version": event.version, class: "event" },
    h("strong", {}, `v${event.version} ${event.type}`), " ",
    h("time", { datetime: event.timestamp }, when(event.timestamp)), " ",
    data.interrupted ? h("span", { class: "tag" }, t("interrupted")) : null,
    summary ? h("p", { class: "muted summary" }, String(summary).slice(0, 200)) : null);
}
