// Lorebooks: the list, a new one, one book's entries to add, edit and remove, and the books
// attached to a character or an instance.

import { get, patch, post, put, remove } from "./api.js";
import { clear, field, h } from "./dom.js";
import { t } from "./i18n.js";
import { attempt, note } from "./status.js";
import { confirmDialog } from "./dialog.js";

const POSITIONS = ["before_char", "after_char", "at_depth"];

export async function lorebooksView() {
  const page = await get("/v1/lorebooks", { limit: 500 });
  const name = h("input", { name: "name", required: true, maxlength: 200 });
  const said = note();
  const form = h("form", { class: "inline card" }, field(t("newLorebook"), name), h("button", { type: "submit" }, t("create")), said);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(said, async () => {
      const book = await post("/v1/lorebooks", { name: name.value });
      location.hash = `#/lorebooks/${book.id}`;
    });
  });
  return h("section", {}, h("h1", {}, t("lorebooks")),
    h("ul", { class: "list", id: "lorebooks" }, page.items.length ? page.items.map((book) => h("li", {},
      h("a", { href: `#/lorebooks/${book.id}`, class: "name" }, book.name), " ",
      h("span", { class: "muted" }, t("entriesN", { n: book.entries.length })))) : h("li", { class: "empty" }, t("noLorebooks"))),
    form);
}

export async function lorebookView(id) {
  const book = await get(`/v1/lorebooks/${id}`);
  const reload = () => window.dispatchEvent(new HashChangeEvent("hashchange"));
  const said = note();
  const archive = h("button", { type: "button", class: "danger" }, t("archive"));
  archive.addEventListener("click", async () => {
    if (!(await confirmDialog(t("archiveLorebookQ", { name: book.name }), t("archive")))) return;
    attempt(said, async () => {
      await remove(`/v1/lorebooks/${book.id}`, {}, book.version);
      location.hash = "#/lorebooks";
    });
  });
  return h("section", {}, h("h1", {}, book.name), book.description ? h("p", {}, book.description) : null,
    h("ul", { class: "list", id: "entries" }, book.entries.map((entry) => entryForm(book, entry, reload))),
    h("h2", {}, t("newEntry")), entryForm(book, null, reload), archive, said);
}

function entryForm(book, entry, reload) {
  const now = entry || { keys: [], content: "", comment: "", constant: false, enabled: true, position: "before_char" };
  const keys = h("input", { name: "keys", value: now.keys.join(", ") });
  const content = h("textarea", { name: "content", rows: 3, required: true, value: now.content });
  const comment = h("input", { name: "comment", value: now.comment });
  const constant = h("input", { type: "checkbox", name: "constant", checked: now.constant });
  const enabled = h("input", { type: "checkbox", name: "enabled", checked: now.enabled });
  const position = h("select", { name: "position" }, POSITIONS.map((p) => h("option", { value: p }, t(p))));
  position.value = now.position;
  const said = note();
  const buttons = h("div", { class: "row" }, h("button", { type: "submit" }, entry ? t("save") : t("add")));
  if (entry) {
    const drop = h("button", { type: "button", class: "danger" }, t("remove"));
    drop.addEventListener("click", () => attempt(said, async () => {
      await remove(`/v1/lorebooks/${book.id}/entries/${entry.id}`);
      reload();
    }));
    buttons.append(drop);
  }
  const form = h(entry ? "li" : "div", {}, h("form", { class: "card entry" },
    field(t("keys"), keys, t("keysHint")), field(t("content"), content), field(t("comment"), comment),
    h("div", { class: "inline" }, h("label", {}, constant, " ", t("constant")), h("label", {}, enabled, " ", t("enabled")),
      field(t("position"), position)),
    said, buttons));
  form.querySelector("form").addEventListener("submit", (event) => {
    event.preventDefault();
    const body = {
      keys: keys.value.split(",").map((k) => k.trim()).filter(Boolean),
      content: content.value, comment: comment.value, constant: constant.checked, enabled: enabled.checked,
      position: position.value,
    };
    attempt(said, async () => {
      if (entry) await patch(`/v1/lorebooks/${book.id}/entries/${entry.id}`, body);
      else await post(`/v1/lorebooks/${book.id}/entries`, body);
      reload();
    });
  });
  return form;
}

// The lorebooks a character's or an instance's chats scan (`path`: its `/lorebooks` route):
// attach one more, detach one.
export async function attachedLorebooks(path) {
  const [attached, books] = await Promise.all([get(path), get("/v1/lorebooks", { limit: 500 })]);
  const names = new Map(books.items.map((book) => [book.id, book.name]));
  let ids = attached.lorebook_ids;
  const list = h("ul", { class: "list attached" });
  const choose = h("select", { name: "lorebook" });
  const said = note();
  const form = h("form", { class: "inline attach" }, field(t("attachLorebook"), choose),
    h("button", { type: "submit" }, t("attach")));
  const save = (next) => attempt(said, async () => {
    ids = (await put(path, { lorebook_ids: next })).lorebook_ids;
    draw();
  });
  function draw() {
    clear(list, ids.length ? ids.map((id) => h("li", {},
      h("a", { href: `#/lorebooks/${id}`, class: "name" }, names.get(id) ?? id), " ",
      h("button", { type: "button", class: "quiet detach", onclick: () => save(ids.filter((i) => i !== id)) },
        t("detach")))) : h("li", { class: "empty" }, t("noAttached")));
    clear(choose, books.items.filter((book) => !ids.includes(book.id))
      .map((book) => h("option", { value: book.id }, book.name)));
    form.hidden = !choose.options.length;
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    save([...ids, choose.value]);
  });
  draw();
  return h("div", { class: "lorebooks-attached" }, list, form, said);
}
