// Model management in the dashboard (admin key only): /admin/models lists every configured
// model with the state of each replica; the buttons load, unload and scale it.
import { $, el } from "./util.js";

async function call(key, method, path, body) {
  const resp = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${key}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await resp.json().catch(() => null);
  if (!resp.ok) throw new Error((data && data.error && data.error.message) || `HTTP ${resp.status}`);
  return data;
}

function button(label, title, action) {
  const b = el("button", { type: "button", text: label, title });
  b.addEventListener("click", async () => {
    b.disabled = true;
    $("#admin-models-status").textContent = `${title}…`;
    try { await action(); $("#admin-models-status").textContent = `${title}: done`; } catch (err) {
      $("#admin-models-status").textContent = `${title}: ${err.message}`;
    }
    b.disabled = false;
  });
  return b;
}

function row(key, m, refresh) {
  const name = encodeURIComponent(m.name);
  const reps = m.replicas.map((r) => `#${r.replica} ${r.state}${r.reason ? ` (${r.reason})` : ""}`).join(", ") || "–";
  const n = m.replicas.length;
  const run = (method, path, body) => async () => { await call(key, method, path, body); await refresh(); };
  return el("tr", { "data-admin-model": m.name },
    el("td", { text: m.name }), el("td", {}, el("span", { class: `state ${m.state}`, text: m.state })),
    el("td", { text: m.load + (m.load === "on_demand" ? ` (keep_alive ${m.keep_alive}s)` : "") }),
    el("td", { text: reps }),
    el("td", {},
      button("Load", `load ${m.name}`, run("POST", `/admin/models/${name}/load`)),
      button("Unload", `unload ${m.name}`, run("DELETE", `/admin/models/${name}`)),
      button("+1", `scale ${m.name} to ${n + 1}`, run("POST", `/admin/models/${name}/scale`, { replicas: n + 1 })),
      button("−1", `scale ${m.name} to ${Math.max(0, n - 1)}`, run("POST", `/admin/models/${name}/scale`, { replicas: Math.max(0, n - 1) }))));
}

export async function refreshAdminModels(key) {
  const section = $("#admin-models");
  if (!key) { section.hidden = true; return; }
  let data;
  try { data = await call(key, "GET", "/admin/models"); } catch (err) {
    section.hidden = true; // a gateway without a launcher, or a wrong key (the dashboard says which)
    return;
  }
  section.hidden = false;
  const refresh = () => refreshAdminModels(key);
  $("#admin-models tbody").replaceChildren(...data.data.map((m) => row(key, m, refresh)));
  const mem = data.memory || {};
  $("#admin-models-memory").textContent = mem.budget_bytes
    ? `memory: ${(mem.used_bytes / 2 ** 30).toFixed(2)} of ${(mem.budget_bytes / 2 ** 30).toFixed(2)} GiB budget (estimated)` : "";
}
