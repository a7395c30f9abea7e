// A confirmation in the page's own words (a <dialog>, keyboard-ready: Escape cancels).

import { h } from "./dom.js";
import { t } from "./i18n.js";

export function confirmDialog(message, action) {
  return new Promise((resolve) => {
    const yes = h("button", { type: "button", class: "danger", value: "yes" }, action);
    const no = h("button", { type: "button", value: "no" }, t("cancel"));
    const dialog = h("dialog", { "aria-label": message }, h("p", {}, message), h("div", { class: "row" }, no, yes));
    const close = (answer) => { dialog.close(); dialog.remove(); resolve(answer); };
    yes.addEventListener("click", () => close(true));
    no.addEventListener("click", () => close(false));
    dialog.addEventListener("cancel", (event) => { event.preventDefault(); close(false); });
    document.body.append(dialog);
    dialog.showModal();
    no.focus();
  });
}
