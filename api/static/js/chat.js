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
    for (const message of page.items) log.prepend(messageItem(message, instance, true)); // newest first
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
          reply.append(await builtFrom(instance, data.turn.reply_id, data));
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
        spoken: async (answer) => {
          said.textContent = "";
          log.append(messageItem({ role: "user", content: answer.transcript, name: userName }, instance));
          const reply = messageItem({ id: answer.turn.reply_id, role: "assistant", content: answer.reply, name: instance.name }, instance);
          log.append(reply);
          reply.append(await builtFrom(instance, answer.turn.reply_id, answer));
          await hearReply(answer, null, instance, null, reply);
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

// `past`: a message read from the conversation, whose reply reads what it was built from when
// its "built from" is opened.
function messageItem(message, instance, past) {
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
    if (past) item.append(pastBuiltFrom(instance, message.id));
  }
  return item;
}

// Under a reply: the memories and lore its prompt held (as they were then, and what became of
// them since), the model and the tokens it took, read back from alma. `turn`: the live turn's
// answer, which alone says whether the memory index was behind or down.
async function builtFrom(instance, replyId, turn) {
  const box = h("details", { class: "built", open: true }, h("summary", {}, t("builtFrom")));
  await fill(box, instance, replyId, turn);
  return box;
}

// A past reply's: read when it is opened.
function pastBuiltFrom(instance, replyId) {
  const box = h("details", { class: "built" }, h("summary", {}, t("builtFrom")));
  let asked = false;
  box.addEventListener("toggle", () => {
    if (!box.open || asked) return;
    asked = true;
    fill(box, instance, replyId, null);
  });
  return box;
}

async function fill(box, instance, replyId, turn) {
  try {
    const message = await get(`/v1/instances/${instance.id}/messages/${replyId}`);
    box.append(...builtParts(message.built_from, turn));
  } catch (error) {
    box.append(h("p", { class: "error", role: "alert" }, describe(error)));
  }
}

function builtParts(built, turn) {
  if (!built) return [h("p", { class: "muted" }, t("notATurn"))];
  const memories = h("ul", { class: "memories-used" }, built.memories_used.map((m) =>
    h("li", { class: `recalled ${m.now}` },
      h("span", { class: "score" }, m.score === null ? t("noScore") : m.score.toFixed(2)), " ",
      m.source ? h("span", { class: "tag" }, t(`source_${m.source}`)) : null, " ",
      m.occurred_at ? h("time", { datetime: m.occurred_at }, when(m.occurred_at), " ") : null,
      m.speaker ? h("strong", {}, m.speaker, ": ") : null,
      h("span", { class: "memory-text" }, m.text ?? t("unreadable")),
      m.now === "unchanged" ? null : h("span", { class: `tag ${m.now}` }, t(`${m.now}Since`)),
      m.text_now ? h("span", { class: "text-now" }, " → ", m.text_now) : null)));
  const lore = h("ul", { class: "lore-used" }, built.lore_used.map((entry) =>
    h("li", {}, h("a", { href: `#/lorebooks/${entry.lorebook_id}` }, entry.lorebook_name ?? t("unreadable")),
      " · ", t("entry"), ` ${entry.entry_id}`, entry.comment ? ` (${entry.comment})` : "", " ",
      h("span", { class: "lore-content" }, entry.content ?? t("unreadable")))));
  return [
    h("h3", {}, t("memoriesUsed"), ` (${built.memories_used.length})`),
    built.memories_used.length ? memories : h("p", { class: "muted" }, t("none")),
    turn && turn.memories_behind ? h("p", { class: "warn" }, t("memoriesBehind")) : null,
    turn && turn.memories_unavailable ? h("p", { class: "warn" }, t("memoriesUnavailable")) : null,
    h("h3", {}, t("loreUsed"), ` (${built.lore_used.length})`),
    built.lore_used.length ? lore : h("p", { class: "muted" }, t("none")),
    h("p", { class: "usage" }, `${t("model")}: ${built.model} · ${t("tokens", {
      prompt: built.usage.prompt_tokens, reply: built.usage.completion_tokens })}`,
      built.interrupted ? ` · ${t("interrupted")}` : ""),
  ].filter(Boolean);
}
