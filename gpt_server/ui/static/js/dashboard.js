// Dashboard tab: polls /v1/dashboard (model-level, any API key) or, once an admin key is
// entered, /admin/dashboard (worker addresses and raw errors), and turns cumulative counters into rates.
import { getJSON } from "./api.js";
import { $, el } from "./util.js";

const ADMIN = "gpt-server.admin-key"; // this tab's session only
const adminKey = () => sessionStorage.getItem(ADMIN) || "";

async function load() {
  const key = adminKey();
  if (!key) return getJSON("/v1/dashboard");
  const resp = await fetch("/admin/dashboard", { headers: { Authorization: `Bearer ${key}` } });
  const body = await resp.json().catch(() => null);
  if (!resp.ok) throw new Error(`admin view ${resp.status}: ${(body && body.error && body.error.message) || resp.statusText}`);
  return body;
}

const PERIOD_MS = 1500;
let timer = null;
let prev = null; // { t, workers: {id: {requests_total, tokens_total}}, models: {name: {...}} }

function rate(now, before, key, dt) {
  if (!before || dt <= 0) return null;
  return Math.max(0, (now[key] || 0) - (before[key] || 0)) / dt;
}

const fmt = (x) => (x === null ? "–" : x.toFixed(x >= 10 ? 0 : 1));

function stateCell(state) { return el("td", {}, el("span", { class: `state ${state}`, text: state })); }
function td(text, title) { return el("td", { text: String(text ?? ""), title }); }

function modelRow(m, before, dt) {
  return el("tr", { "data-model": m.name },
    td([m.name, ...m.aliases].join(", ")), td(m.kind), td(m.work_mode || ""), stateCell(m.state),
    td(`${m.ready_workers}/${m.configured_workers || m.ready_workers}`), td(m.queue_length),
    td(fmt(rate(m, before, "requests_total", dt))), td(fmt(rate(m, before, "tokens_total", dt))));
}

function workerRow(w, before, dt) {
  const err = w.last_error || (w.has_error ? "failed (admin view shows why)" : "");
  return el("tr", { "data-worker": w.worker_id },
    td(w.worker_id), td(w.model_name), stateCell(w.state), td(w.address || "–"), td(w.capacity),
    td(w.queue_length), td(w.active), td(w.requests_total ?? 0),
    td(fmt(rate(w, before, "requests_total", dt))), td(fmt(rate(w, before, "tokens_total", dt))),
    td(err.length > 80 ? `${err.slice(0, 80)}…` : err, err));
}

export async function refreshDashboard() {
  let data;
  try {
    data = await load();
  } catch (err) {
    $("#dash-updated").textContent = `update failed: ${err.message}`;
    return;
  }
  const dt = prev ? data.time - prev.t : 0;
  const before = (kind, id) => (prev ? prev[kind][id] : null);
  $("#dash-models tbody").replaceChildren(...data.models.map((m) => modelRow(m, before("models", m.name), dt)));
  $("#dash-workers tbody").replaceChildren(...data.workers.map((w) => workerRow(w, before("workers", w.worker_id), dt)));
  if (!data.workers.length) $("#dash-workers tbody").append(el("tr", {}, el("td", { colspan: "11", class: "muted", text: "no worker registered yet" })));
  prev = {
    t: data.time,
    models: Object.fromEntries(data.models.map((m) => [m.name, m])),
    workers: Object.fromEntries(data.workers.map((w) => [w.worker_id, w])),
  };
  $("#admin-status").textContent = data.view === "admin" ? "admin view" : "client view";
  $("#dash-updated").textContent = `updated ${new Date(data.time * 1000).toLocaleTimeString()} · every ${PERIOD_MS / 1000}s`;
}

export function startDashboard() {
  if (timer) return;
  const form = $("#admin-form");
  if (!form.dataset.bound) {
    form.dataset.bound = "1";
    $("#admin-key").value = adminKey();
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const k = $("#admin-key").value.trim();
      if (k) sessionStorage.setItem(ADMIN, k); else sessionStorage.removeItem(ADMIN);
      prev = null;
      refreshDashboard();
    });
  }
  refreshDashboard();
  timer = setInterval(() => { if (!document.hidden) refreshDashboard(); }, PERIOD_MS);
}

export function stopDashboard() { clearInterval(timer); timer = null; }
