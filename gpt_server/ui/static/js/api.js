// API access: the key lives in localStorage and goes out as a Bearer token.
const KEY = "gpt-server.api-key";

export function getKey() { return localStorage.getItem(KEY) || ""; }
export function setKey(k) { if (k) localStorage.setItem(KEY, k); else localStorage.removeItem(KEY); }

export function headers(json = true) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const k = getKey();
  if (k) h["Authorization"] = `Bearer ${k}`;
  return h;
}

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function raiseFor(resp) {
  if (resp.ok) return resp;
  let msg = `${resp.status} ${resp.statusText}`;
  try { const b = await resp.json(); if (b && b.error && b.error.message) msg = `${resp.status}: ${b.error.message}`; } catch (_) { /* not JSON */ }
  throw new ApiError(resp.status, msg);
}

export async function getJSON(path) {
  return (await raiseFor(await fetch(path, { headers: headers(false) }))).json();
}

export async function postJSON(path, body, signal) {
  return (await raiseFor(await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body), signal }))).json();
}

export async function postRaw(path, body, { json = true, signal } = {}) {
  const init = { method: "POST", headers: headers(json), body: json ? JSON.stringify(body) : body, signal };
  return raiseFor(await fetch(path, init));
}

// Parse a server-sent event stream; calls onData(obj) per JSON `data:` event, stops at [DONE].
export async function streamSSE(path, body, onData, signal) {
  const resp = await postRaw(path, body, { signal });
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let cut;
    while ((cut = buf.search(/\r?\n\r?\n/)) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (!data) continue; // comment / keep-alive
      if (data === "[DONE]") return;
      const obj = JSON.parse(data);
      if (obj.error) throw new ApiError(obj.error.code || 500, obj.error.message || "stream error");
      onData(obj);
    }
  }
}
