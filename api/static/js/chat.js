// The conversation: the latest messages first (earlier ones a page at a time), the reply
// streamed as it is written, what each reply was built from, stop, greetings, the user's name,
// and voice (speak a message; hear a reply).

import { chat, get, patch, post } from "./api.js";
import { field, h, when } from "./dom.js";
import { t } from "./i18n.js";
import { attempt, describe, note } from "./status.js";
import { hearReply, recorder } from "./voice.js";

const PAGE = 50;

export async function chatView(instance, character, focus) {
  const log = h("ol", { class: "log", id: "log", "aria-label": t("conversation") });
  const earlier = h("button", { type: "button", class: "quiet", hidden: true }, t("earlier"));
  let cursor = null;
  let userName = instance.user_name;

  async function loadEarlier() {
    const page = await get(`/v1/instances/${instance.id}/messages`, { order: "newest", limit: PAGE, cursor });
    for (const message of page.items) log.prepend(messageItem(message, instance)); // newest first
    cursor = page.next_cursor;
    earlier.hidden = !cursor;
    return page.items;
  }
  earlier.addEventListener("click", () => attempt(null, loadEarlier));
  const opened = await loadEarlier();
  if (focus) await findMessage(focus);

  async function findMessage(id) {
    const shown = () => log.querySelector(`#m-${CSS.escape(id)}`);
    for (let pages = 0; !shown() && cursor && pages < 40; pages++) await loadEarlier();
    const found = shown();
    if (found) {
      found.classList.add("focus");
      requestAnimationFrame(() => found.scrollIntoView({ block: "center" }));
    }
  }

  const said = note();
  const message = h("textarea", { name: "message", rows: 2, required: true });
  const send = h("button", { type: "submit" }, t("send"));
  const stop = h("button", { type: "button", disabled: true, id: "stop" }, t("stop"));
  let controller = null;

  async function turn(text) {
    log.append(messageItem({ role: "user", content: text, name: userName, timestamp: new Date().toISOString() }, instance));
    const reply = messageItem({ role: "assistant", content: "", name: instance.name }, instance);
    reply.classList.add("streaming");
    log.append(reply);
    reply.scrollIntoView({ block: "end" });
    const written = reply.querySelector(".text");
    controller = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    try {
      const body = { message: text };
      for await (const { event, data } of chat(instance.id, body, controller.signal)) {
        if (event === "message") written.append(data.token);
        else if (event === "turn") {
          written.textContent = data.reply;
          reply.id = `m-${data.turn.reply_id}`;
          reply.append(builtFrom(data));
        } else if (event === "error") reply.append(h("p", { class: "error", role: "alert" }, `${data.error.message} (${data.error.code})`));
      }
    } catch (error) {
      if (error.name === "AbortError") reply.append(h("p", { class: "muted interrupted" }, t("interrupted")));
      else reply.append(h("p", { class: "error", role: "alert" }, describe(error)));
    } finally {
      reply.classList.remove("streaming");
      controller = null;
      send.disabled = false;
      stop.disabled = true;
    }
  }

  stop.addEventListener("click", () => controller && controller.abort());
  const composer = h("form", { class: "composer", id: "composer" }, field(t("message"), message), said,
    h("div", { class: "row" }, send, stop,
      recorder(instance, {
        started: () => said.textContent = t("recording"),
        spoken: (answer) => {
          said.textContent = "";
          log.append(messageItem({ role: "user", content: answer.transcript, name: userName }, instance));
          const reply = messageItem({ role: "assistant", content: answer.reply, name: instance.name }, instance);
          reply.append(builtFrom(answer));
          log.append(reply);
          hearReply(answer);
        },
        failed: (error) => said.textContent = describe(error),
      })));
  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = message.value;
    if (!text.trim()) return;
    message.value = "";
    turn(text);
  });
  message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !send.disabled) {
      event.preventDefault();
      composer.requestSubmit();
    }
  });

  return h("div", { class: "chat" },
    personaForm(instance, (name) => userName = name),
    opened.length ? null : greetings(instance, character, log),
    earlier, log, composer);
}

// Who the user is in this instance's chats (a card's {{user}}).
function personaForm(instance, changed) {
  const name = h("input", { name: "user_name", maxlength: 200, value: instance.user_name || "" });
  const said = note();
  const done = h("span", { class: "muted", role: "status" });
  const form = h("form", { class: "inline persona" }, field(t("userName"), name, t("userNameHint")),
    h("button", { type: "submit" }, t("save")), done, said);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(said, async () => {
      const value = name.value.trim() || null;
      const saved = await patch(`/v1/instances/${instance.id}`, { user_name: value });
      instance.version = saved.version;
      changed(saved.user_name);
      done.textContent = t("saved");
    });
  });
  return form;
}

// A new conversation opens with one of the card's greetings.
function greetings(instance, character, log) {
  if (!character || (!character.greeting && !character.alternate_greetings.length)) return null;
  const said = note();
  const box = h("div", { class: "greetings card" }, h("p", {}, t("openWith")));
  const choices = [character.greeting, ...character.alternate_greetings];
  choices.forEach((text, index) => {
    if (!text) return;
    const button = h("button", { type: "button", class: "greeting" }, text.slice(0, 80));
    button.addEventListener("click", () => attempt(said, async () => {
      const greeting = await post(`/v1/instances/${instance.id}/greeting`, { index });
      log.append(messageItem({ id: greeting.id, role: "assistant", content: greeting.content, name: instance.name }, instance));
      box.remove();
    }));
    box.append(button);
  });
  box.append(said);
  return box;
}

function messageItem(message, instance) {
  const item = h("li", { class: `message ${message.role}`, id: message.id ? `m-${message.id}` : null },
    h("div", { class: "who" }, message.name || t(message.role), " ",
      h("time", { datetime: message.timestamp || "" }, when(message.timestamp))),
    h("p", { class: "text" }, message.content));
  if (message.role === "assistant") {
    const model = message.metadata && message.metadata.model;
    if (model) item.append(h("p", { class: "muted" }, t("model"), ": ", model));
    const play = h("button", { type: "button", class: "quiet play", "aria-pressed": "false" }, "▶ ", t("play"));
    play.addEventListener("click", () => attempt(null, () => hearReply(null, item.querySelector(".text").textContent, instance, play)));
    item.append(play);
  }
  return item;
}

// Under a reply: the memories and lore its prompt held, the model and the tokens it took.
export function builtFrom(answer) {
  const memories = h("ul", { class: "memories-used" }, answer.memories_used.map((m) =>
    h("li", {}, h("span", { class: "score" }, m.score.toFixed(2)), " ",
      h("span", { class: "tag" }, t(`source_${m.source}`)), " ",
      m.occurred_at ? h("time", { datetime: m.occurred_at }, when(m.occurred_at), " ") : null,
      h("span", { class: "memory-text" }, m.text))));
  const lore = h("ul", { class: "lore-used" }, answer.lore_used.map((entry) =>
    h("li", {}, h("a", { href: `#/lorebooks/${entry.lorebook_id}` }, t("entry"), " ", String(entry.entry_id)),
      " ", h("span", { class: "muted" }, entry.position))));
  return h("details", { class: "built", open: true },
    h("summary", {}, t("builtFrom")),
    h("h3", {}, t("memoriesUsed"), ` (${answer.memories_used.length})`),
    answer.memories_used.length ? memories : h("p", { class: "muted" }, t("none")),
    answer.memories_behind ? h("p", { class: "warn" }, t("memoriesBehind")) : null,
    answer.memories_unavailable ? h("p", { class: "warn" }, t("memoriesUnavailable")) : null,
    h("h3", {}, t("loreUsed"), ` (${answer.lore_used.length})`),
    answer.lore_used.length ? lore : h("p", { class: "muted" }, t("none")),
    h("p", { class: "usage" }, `${t("model")}: ${answer.model} · ${t("tokens", {
      prompt: answer.usage.prompt_tokens, reply: answer.usage.completion_tokens })}`));
}
