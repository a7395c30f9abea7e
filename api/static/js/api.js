// The client of alma's public HTTP API: the key as a Bearer header (kept in this tab's session
// storage, never in a URL), errors in the API's own shape, and the chat's server-sent events.

const STORED = "alma.key";

export const key = {
  get: () => sessionStorage.getItem(STORED),
  set: (value) => sessionStorage.setItem(STORED, value.trim()),
  clear: () => sessionStorage.removeItem(STORED),
};

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

function url(path, query) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== null && value !== undefined && value !== "") params.set(name, value);
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

// fetch, with the key; a network failure or an error answer becomes an ApiError. An
// `alma:unauthorized` event tells the page when the key is refused.
export async function request(method, path, options = {}) {
  const { body, query, headers = {}, signal, form } = options;
  const sent = { ...headers, Authorization: `Bearer ${key.get() || ""}` };
  let payload;
  if (form) payload = form;
  else if (body !== undefined) {
    sent["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url(path, query), { method, headers: sent, body: payload, signal });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "unreachable", error.message);
  }
  if (!response.ok) throw await failure(response);
  return response;
}

async function failure(response) {
  let error = null;
  try {
    error = (await response.json()).error;
  } catch {
    // not alma's error shape: a proxy's page, or a server going down
  }
  if (response.status === 401) window.dispatchEvent(new Event("alma:unauthorized"));
  if (!error) return new ApiError(response.status, "http_" + response.status, response.statusText);
  return new ApiError(response.status, error.code, error.message, error.details);
}

export async function json(method, path, options) {
  const response = await request(method, path, options);
  return response.status === 204 ? null : response.json();
}

export const get = (path, query) => json("GET", path, { query });
export const post = (path, body, options) => json("POST", path, { ...options, body });
export const put = (path, body) => json("PUT", path, { body });
export const patch = (path, body, version) =>
  json("PATCH", path, { body, headers: version ? { "If-Match": String(version) } : {} });
export const remove = (path, query, version) =>
  json("DELETE", path, { query, headers: version ? { "If-Match": String(version) } : {} });

// A chat turn, streamed: yields {event, data} for each server-sent event ("message" for a
// piece of the reply, then "turn" or "error"). Aborting `signal` stops the reply; alma keeps
// what was streamed, marked interrupted.
export async function* chat(instanceId, body, signal) {
  const response = await request("POST", `/v1/instances/${instanceId}/chat`, {
    body: { ...body, stream: true },
    signal,
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replaceAll("\r\n", "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = parseEvent(block);
      if (event) yield event;
    }
  }
}

function parseEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  return data.length ? { event, data: JSON.parse(data.join("\n")) } : null;
}
