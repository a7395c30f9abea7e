// A list read a page at a time, oldest first, with a button for the next page.

import { get } from "./api.js";
import { clear, h } from "./dom.js";
import { t } from "./i18n.js";
import { attempt } from "./status.js";

// `element` gets an item drawn by `draw` for each; `query()` adds to each page's query.
export function paged(element, path, draw, empty, query = () => ({}), limit = 100) {
  const more = h("button", { type: "button", hidden: true }, t("more"));
  let cursor = null;
  async function load(reset) {
    const page = await get(path, { ...query(), limit, cursor: reset ? null : cursor });
    if (reset) clear(element);
    element.append(...page.items.map(draw));
    if (!element.children.length) element.append(h("li", { class: "empty" }, empty()));
    cursor = page.next_cursor;
    more.hidden = !cursor;
  }
  more.addEventListener("click", () => attempt(null, () => load(false)));
  return { element, more, load };
}
