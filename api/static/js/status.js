// What went wrong, in words, over the page: alma unreachable, the key refused, a refusal.

import { ApiError } from "./api.js";
import { clear, h } from "./dom.js";
import { has, t } from "./i18n.js";

// Shows a problem in the banner (none: hides it); `retry` offers to try again.
export function problem(error, retry) {
  const banner = document.getElementById("banner");
  clear(banner);
  banner.hidden = !error;
  if (!error) return;
  banner.append(h("p", {}, describe(error)));
  if (retry) {
    banner.append(h("button", { type: "button", onclick: () => { problem(null); retry(); } }, t("retry")));
  }
}

// What an error means to the person at the page.
export function describe(error) {
  if (!(error instanceof ApiError)) return String(error.message || error);
  if (error.code === "unreachable") return t("unreachable", { origin: location.origin });
  if (error.status === 401) return t("keyRefused");
  if (error.status >= 500 && error.code.startsWith("http_")) return t("serverDown", { status: error.status });
  if (has(`err_${error.code}`)) return t(`err_${error.code}`);
  return `${error.message} (${error.code})`;
}

// Runs an action of a form or a button; a refusal is shown in `where` (inline, beside what
// caused it), alma unreachable in the banner too. Answers whether it went through.
export async function attempt(where, action) {
  if (where) where.textContent = "";
  try {
    await action();
    return true;
  } catch (error) {
    if (error.name === "AbortError") return false;
    if (where) where.textContent = describe(error);
    if (error.code === "unreachable" || !where) problem(error);
    return false;
  }
}

export function note() {
  return h("p", { class: "error", role: "alert" });
}
