// Dashboard tab: polls /v1/dashboard (model-level, any API key) or, once an admin key is
// entered, /admin/dashboard (worker addresses and raw errors). The models table turns the
// workers' cumulative counters into rates; the charts draw the gateway's history samples,
// fetched once and then only the newer ones (?since=).
import { refreshAdminModels } from "./admin_models.js";
import { getJSON } from "./api.js";
import { lineChart } from "./chart.js";
import { $, el } from "./util.js";

const ADMIN = "gpt-server.admin-key"; // this tab's session only
const adminKey = () => sessionStorage.getItem(ADMIN) || "";

async function load(since) {
  const q = since === null ? "" : `?since=${since}`;
  const key = adminKey();
  if (!key) return getJSON(`/v1/dashboard${q}`);
  const resp = await fetch(`/admin/dashboard${q}`, { headers: { Authorization: `Bearer ${key}` } });
  const body = await resp.json().catch(() => null);
  if (!resp.ok) throw new Error(`admin view ${resp.status}: ${(body && body.error && body.error.message) || resp.statusText}`);
  return body;
}

const PERIOD_MS = 2000;
const PALETTE = ["#2f6fdb", "#e8590c", "#2b8a3e", "#c2255c", "#7048e8", "#0c8599", "#e67700", "#5f3dc4"];
let timer = null;
let prev = null; // { t, workers: {id: {requests_total, tokens_total}}, models: {name: {...}} }
let hist = null; // { interval, size, models: {name: {t: [...], tok_s: [...], …}} }, as the server keeps it

function rate(now, before, key, dt) {
  if (!before || dt <= 0) return null;
  return Math.max(0, (now[key] || 0) - (before[key] || 0)) / dt;
}

const fmt = (x) => (x === null ? "–" : x.toFixed(x >= 10 ? 0 : 1));
const num = (v) => (v >= 1000 ? `${+(v / 1000).toFixed(1)}k` : `${+v.toFixed(2)}`);
const secs = (v) => (v < 1 ? `${Math.round(v * 1000)} ms` : `${+v.toFixed(2)} s`);
const whole = (v) => `${Math.round(v)}`;

function bytes(n) {
  if (!n) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(n >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}

function stateCell(state) { return el("td", {}, el("span", { class: `state ${state}`, text: state })); }
function td(text, title, cls) { return el("td", { text: String(text ?? ""), title, class: cls }); }

function modelRow(m, before, dt, color) {
  const total = Math.max(m.configured_workers || 0, m.live_workers || 0);
  const name = el("td", {}, el("span", { class: "swatch" }), [m.name, ...m.aliases].join(", "));
  name.firstChild.style.background = color; // CSSOM, allowed by the page's CSP
  return el("tr", { "data-model": m.name },
    name, td(m.kind_label || m.kind, m.kind_label && m.kind_label !== m.kind ? `model_type: ${m.kind}` : undefined),
    td(m.work_mode || "–"), td(m.context_length ? m.context_length.toLocaleString("en-US") : "–", undefined, "num"),
    td(`${m.ready_workers}/${total}`, "ready / total replicas", "num"), td(bytes(m.memory_bytes), "resident memory of its workers", "num"),
    stateCell(m.state), td(m.queue_length, undefined, "num"),
    td(fmt(rate(m, before, "requests_total", dt)), undefined, "num"), td(fmt(rate(m, before, "tokens_total", dt)), undefined, "num"));
}

function workerRow(w, before, dt) {
  const err = w.last_error || (w.has_error ? "failed (admin view shows why)" : "");
  return el("tr", { "data-worker": w.worker_id },
    td(w.worker_id), td(w.model_name), stateCell(w.state), td(w.address || "–"), td(w.capacity),
    td(w.queue_length), td(w.active), td(w.requests_total ?? 0),
    td(fmt(rate(w, before, "requests_total", dt))), td(fmt(rate(w, before, "tokens_total", dt))),
    td(bytes(w.rss_bytes)), td(err.length > 80 ? `${err.slice(0, 80)}…` : err, err));
}

// ---- charts -------------------------------------------------------------------------
const CHARTS = [
  { id: "tok_s", title: "Tokens / s", note: "completion tokens", keys: ["tok_s"], format: num },
  { id: "req_s", title: "Requests / s", keys: ["req_s"], format: num },
  // a percentile exists where a request was measured: the line joins those up to 10 samples apart
  { id: "ttft", title: "Time to first token", note: "p50 solid · p99 dashed", keys: ["ttft_p50", "ttft_p99"], format: secs, floor: 0.1, bridge: 10 },
  { id: "latency", title: "Latency", note: "p50 solid · p99 dashed", keys: ["latency_p50", "latency_p99"], format: secs, floor: 0.1, bridge: 10 },
  { id: "queue", title: "Open requests", note: "peak per sample", keys: ["queue"], format: whole, integer: true },
];

// Append the server's new samples; keep at most `size`; forget the models it forgot.
function mergeHistory(h) {
  if (!hist || hist.interval !== h.interval) hist = { interval: h.interval, size: h.size, models: {} };
  let changed = false;
  for (const [name, cols] of Object.entries(h.models)) {
    const cur = hist.models[name] || (hist.models[name] = Object.fromEntries(Object.keys(cols).map((k) => [k, []])));
    const last = cur.t.length ? cur.t[cur.t.length - 1] : -Infinity;
    const from = cols.t.findIndex((t) => t > last); // a reply to an older ?since= repeats samples
    if (from < 0) continue;
    changed = true;
    for (const [k, vs] of Object.entries(cols)) {
      (cur[k] ||= []).push(...vs.slice(from));
      if (cur[k].length > hist.size) cur[k].splice(0, cur[k].length - hist.size);
    }
  }
  for (const name of Object.keys(hist.models)) if (!(name in h.models)) { delete hist.models[name]; changed = true; }
  return changed;
}

function newestSample() {
  let t = null;
  for (const cols of Object.values(hist ? hist.models : {})) if (cols.t.length) t = Math.max(t ?? 0, cols.t[cols.t.length - 1]);
  return t;
}

function colorOf(names) {
  const order = [...new Set(names)];
  return (name) => PALETTE[order.indexOf(name) % PALETTE.length];
}

function oldestSample() {
  let t = null;
  for (const cols of Object.values(hist.models)) if (cols.t.length) t = Math.min(t ?? Infinity, cols.t[0]);
  return t;
}

let lastDraw = null; // [now, color] of the last drawCharts, to draw again at a new width

function drawCharts(now, color) {
  lastDraw = [now, color];
  const end = newestSample() ?? now;
  // the whole ring once it is full; until then what there is, from a minute, in half minutes
  const extent = end - (oldestSample() ?? end) + hist.interval;
  const span = Math.min(hist.interval * hist.size, Math.max(60, Math.ceil(extent / 30) * 30));
  const minutes = span / 60;
  $("#dash-span").textContent = `Last ${minutes === 1 ? "minute" : `${+minutes.toFixed(1)} minutes`}`;
  const names = Object.keys(hist.models).sort();
  $("#dash-legend").replaceChildren(...names.map((n) => {
    const sw = el("span", { class: "swatch" });
    sw.style.background = color(n);
    return el("span", { class: "legend-item" }, sw, n);
  }));
  for (const c of CHARTS) {
    const series = [];
    for (const n of names) {
      const cols = hist.models[n];
      c.keys.forEach((k, i) => series.push({
        label: c.keys.length > 1 ? `${n} ${k.split("_").pop()}` : n, color: color(n), dashed: i > 0, t: cols.t, v: cols[k] || [],
      }));
    }
    lineChart($(`#chart-${c.id}`), {
      ...c, series, span, end, interval: hist.interval,
      empty: names.length ? "no traffic in this window" : "no samples yet: send a request",
    });
  }
}

export async function refreshDashboard() {
  let data;
  try {
    data = await load(hist ? newestSample() : null);
  } catch (err) {
    $("#dash-updated").textContent = `update failed: ${err.message}`;
    return;
  }
  const dt = prev ? data.time - prev.t : 0;
  const before = (kind, id) => (prev ? prev[kind][id] : null);
  const first = !hist;
  const changed = mergeHistory(data.history);
  const color = colorOf([...data.models.map((m) => m.name), ...Object.keys(hist.models).sort()]);
  $("#dash-models tbody").replaceChildren(...data.models.map((m) => modelRow(m, before("models", m.name), dt, color(m.name))));
  if (!data.models.length) $("#dash-models tbody").append(el("tr", {}, el("td", { colspan: "10", class: "muted", text: "no model configured" })));
  $("#dash-workers tbody").replaceChildren(...data.workers.map((w) => workerRow(w, before("workers", w.worker_id), dt)));
  if (!data.workers.length) $("#dash-workers tbody").append(el("tr", {}, el("td", { colspan: "12", class: "muted", text: "no worker registered yet" })));
  if (first || changed || !lastDraw) drawCharts(data.time, color);
  prev = {
    t: data.time,
    models: Object.fromEntries(data.models.map((m) => [m.name, m])),
    workers: Object.fromEntries(data.workers.map((w) => [w.worker_id, w])),
  };
  $("#admin-status").textContent = data.view === "admin" ? "admin view" : "client view";
  refreshAdminModels(data.view === "admin" ? adminKey() : "");
  $("#dash-updated").textContent = `updated ${new Date(data.time * 1000).toLocaleTimeString()} · every ${PERIOD_MS / 1000}s · `
    + `one sample every ${hist.interval}s`;
}

let resizing = null;
function redrawAtNewWidth() {
  clearTimeout(resizing);
  resizing = setTimeout(() => { if (timer && hist && lastDraw) drawCharts(...lastDraw); }, 150);
}

export function startDashboard() {
  if (timer) return;
  const form = $("#admin-form");
  if (!form.dataset.bound) {
    form.dataset.bound = "1";
    window.addEventListener("resize", redrawAtNewWidth);
    $("#admin-key").value = adminKey();
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const k = $("#admin-key").value.trim();
      if (k) sessionStorage.setItem(ADMIN, k); else sessionStorage.removeItem(ADMIN);
      prev = null;
      hist = null;
      refreshDashboard();
    });
  }
  refreshDashboard();
  timer = setInterval(() => { if (!document.hidden) refreshDashboard(); }, PERIOD_MS);
}

export function stopDashboard() { clearInterval(timer); timer = null; }
