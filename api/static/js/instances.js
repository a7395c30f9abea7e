// A character's instances: list, create (a taken name said inline), rename, archive, erase.

import { patch, post, remove } from "./api.js";
import { field, h, when } from "./dom.js";
import { t } from "./i18n.js";
import { attempt, note } from "./status.js";
import { confirmDialog } from "./dialog.js";
import { paged } from "./paged.js";

export async function instancesSection(character) {
  const list = paged(h("ul", { class: "list", id: "instances" }), `/v1/characters/${character.id}/instances`,
    instanceRow, () => t("noInstances"));
  await list.load(true);
  return h("div", {}, list.element, list.more, createForm(character));
}

function instanceRow(instance) {
  const said = note();
  const name = h("input", { name: "name", value: instance.name, required: true, maxlength: 200 });
  const rename = h("form", { class: "inline" }, field(t("rename"), name), h("button", { type: "submit" }, t("save")));
  rename.addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(said, async () => {
      await patch(`/v1/instances/${instance.id}`, { name: name.value }, instance.version);
      window.dispatchEvent(new HashChangeEvent("hashchange"));
    });
  });
  const archive = h("button", { type: "button" }, t("archive"));
  archive.addEventListener("click", async () => {
    if (!(await confirmDialog(t("archiveInstanceQ", { name: instance.name }), t("archive")))) return;
    attempt(said, async () => {
      await remove(`/v1/instances/${instance.id}`, {}, instance.version);
      window.dispatchEvent(new HashChangeEvent("hashchange"));
    });
  });
  const erase = h("button", { type: "button", class: "danger" }, t("erase"));
  erase.addEventListener("click", async () => {
    if (!(await confirmDialog(t("eraseInstanceQ", { name: instance.name }), t("eraseForGood")))) return;
    attempt(said, async () => {
      await remove(`/v1/instances/${instance.id}`, { erase: "true" });
      window.dispatchEvent(new HashChangeEvent("hashchange"));
    });
  });
  const forked = instance.forked_from
    ? h("span", { class: "muted" }, t("forkedFrom", { version: instance.forked_from.version }))
    : null;
  return h("li", {},
    h("a", { href: `#/instances/${instance.id}`, class: "name" }, instance.name), " ", forked,
    h("span", { class: "muted" }, when(instance.updated_at)),
    h("details", {}, h("summary", {}, t("manage")), rename, h("div", { class: "row" }, archive, erase), said));
}

function createForm(character) {
  const name = h("input", { name: "name", required: true, maxlength: 200 });
  const memory = h("textarea", { name: "memory", rows: 2 });
  const userName = h("input", { name: "user_name", maxlength: 200 });
  const said = note();
  const form = h("form", { class: "card", id: "new-instance" },
    h("h2", {}, t("newInstance")),
    field(t("name"), name), field(t("memoryText"), memory), field(t("userName"), userName, t("userNameHint")),
    said, h("button", { type: "submit" }, t("create")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(said, async () => {
      const body = { name: name.value, memory: memory.value };
      if (userName.value.trim()) body.user_name = userName.value.trim();
      const made = await post(`/v1/characters/${character.id}/instances`, body);
      location.hash = `#/instances/${made.id}`;
    });
  });
  return form;
}
