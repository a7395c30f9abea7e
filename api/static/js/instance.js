// One instance: its name, its character, and three tabs: chat, memory, history.

import { get } from "./api.js";
import { h } from "./dom.js";
import { t } from "./i18n.js";
import { chatView } from "./chat.js";
import { historyView } from "./history.js";
import { attachedLorebooks } from "./lorebooks.js";
import { memoryView } from "./memory.js";

const TABS = { chat: chatView, memory: memoryView, history: historyView };

export async function instanceView(id, tab, focus) {
  const instance = await get(`/v1/instances/${id}`);
  const character = await get(`/v1/characters/${instance.character_id}`).catch(() => null);
  const tabs = h("nav", { class: "tabs", "aria-label": t("views") },
    Object.keys(TABS).map((name) => h("a", {
      href: `#/instances/${id}/${name}`,
      "aria-current": name === tab ? "page" : null,
    }, t(name))));
  return h("section", { class: "instance" },
    h("div", { class: "row" },
      h("h1", {}, instance.name),
      character ? h("a", { href: `#/characters/${character.id}`, class: "muted" }, character.name) : null),
    h("details", { class: "instance-lorebooks" }, h("summary", {}, t("lorebooks")),
      await attachedLorebooks(`/v1/instances/${id}/lorebooks`)),
    tabs,
    await TABS[tab](instance, character, focus));
}
