// The control-plane API client: the operator token, JSON calls, errors, and the SSE reader.
// Every call goes through `api()`; a 401 anywhere signs the operator out with the server's reason.

const TOKEN_KEY = "walle.token";

export const getToken = () => sessionStorage.getItem(TOKEN_KEY) || "";
export const setToken = (t) => sessionStorage.setItem(TOKEN_KEY, t);
export const clearToken = () => sessionStorage.removeItem(TOKEN_KEY);

/** An API error: the HTTP status and the server's `error` text. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let onUnauthorized = () => {};
/** Called with the server's message when any call answers 401. */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

async function errorOf(response) {
  let text = "";
  try {
    text = await response.text();
    const body = JSON.parse(text);
    if (body && typeof body.error === "string") text = body.error;
  } catch {
    /* not JSON: keep the text */
  }
  if (!text) text = response.statusText || "request failed";
  return new ApiError(response.status, `${response.status} ${text}`.trim());
}

/**
 * Calls `/v1{path}`. body: object → JSON; Blob/ArrayBuffer → octet-stream.
 * Returns parsed JSON (or the Response when raw). Throws ApiError.
 */
export async function api(path, { method = "GET", body, raw = false, signal, token } = {}) {
  const headers = { Authorization: `Bearer ${token ?? getToken()}` };
  let payload;
  if (body instanceof Blob || body instanceof ArrayBuffer) {
    headers["Content-Type"] = "application/octet-stream";
    payload = body;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(`/v1${path}`, { method, headers, body: payload, signal });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, `cannot reach the cloud: ${e.message}`);
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401 && token === undefined) onUnauthorized(error.message);
    throw error;
  }
  if (raw) return response;
  if (response.status === 204) return null;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

/** Builds a query string from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

/**
 * Reads a Server-Sent Events stream with fetch (the Authorization header rules out EventSource).
 * Calls onEvent(name, data) per event and onState("connecting"|"live"|"reconnecting"|"error", msg).
 * Reconnects with backoff (1 s doubling to 30 s) when the stream ends; stops on signal abort.
 */
export function sse(path, { onEvent, onState, signal }) {
  let delay = 1000;
  const run = async () => {
    while (!signal.aborted) {
      onState("connecting");
      try {
        const response = await fetch(`/v1${path}`, {
          headers: { Authorization: `Bearer ${getToken()}`, Accept: "text/event-stream" },
          signal,
        });
        if (!response.ok) {
          const error = await errorOf(response);
          if (response.status === 401) {
            onUnauthorized(error.message);
            return;
          }
          onState("error", error.message);
          // An error answer (e.g. 404: no such release) is shown; retries back off to 30 s.
        } else {
          onState("live");
          delay = 1000;
          await readFrames(response.body.getReader(), onEvent, signal);
          if (!signal.aborted) onState("reconnecting", "the stream ended");
        }
      } catch (e) {
        if (signal.aborted) return;
        onState("reconnecting", e.message);
      }
      await sleep(delay, signal);
      delay = Math.min(delay * 2, 30000);
    }
  };
  run();
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

async function readFrames(reader, onEvent, signal) {
  const decoder = new TextDecoder();
  let buffer = "";
  let event = "message";
  let data = [];
  for (;;) {
    if (signal.aborted) {
      reader.cancel().catch(() => {});
      return;
    }
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buffer.search(/\r\n|\n|\r/)) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + (buffer.startsWith("\r\n", nl) ? 2 : 1));
      if (line === "") {
        if (data.length) onEvent(event, data.join("\n"));
        event = "message";
        data = [];
      } else if (line.startsWith(":")) {
        // keep-alive comment
      } else {
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (name === "event") event = val;
        else if (name === "data") data.push(val);
      }
    }
  }
}
