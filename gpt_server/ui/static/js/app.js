// Entry point: API key, tabs, model lists.
//
// Each model kind's tab is one module under js/tabs/, which the server lists at /ui/tabs.json;
// there is no table of tabs here. A tab module default-exports
//   { id, label, order, capabilities, always?, render(section), update(cards) }
// render builds the tab's DOM inside its <section id="tab-<id>"> and wires its controls (once);
// update fills its model pickers from the /v1/models cards (on every refresh). The tab's button
// shows when a served model offers one of its capabilities (or always, with `always: true`).
import { ApiError, getJSON, getKey, setKey } from "./api.js";
import { startDashboard, stopDashboard } from "./dashboard.js";
import { $, el } from "./util.js";

let tabs = []; // the loaded tab modules, in `order`

function banner(text) {
  const b = $("#banner");
  b.textContent = text || "";
  b.hidden = !text;
}

// Import every listed tab module; one that fails to load is reported and the others still work.
async function loadTabs() {
  const resp = await fetch("tabs.json"); // /ui/tabs.json, public like the page itself
  if (!resp.ok) throw new Error(`cannot list the UI tabs: ${resp.status}`);
  const results = await Promise.allSettled((await resp.json()).tabs.map((p) => import(new URL(p, document.baseURI).href)));
  const loaded = [];
  for (const r of results) {
    if (r.status === "fulfilled") loaded.push(r.value.default);
    else console.error("UI tab failed to load:", r.reason);
  }
  return loaded.sort((a, b) => (a.order ?? 100) - (b.order ?? 100) || a.id.localeCompare(b.id));
}

// A button before the dashboard's and a section the tab renders itself (removed again if that throws).
function mount(tab) {
  const section = el("section", { id: `tab-${tab.id}`, class: "tab" });
  $("main").insertBefore(section, $("#tab-dashboard"));
  try { tab.render(section); } catch (err) { section.remove(); throw err; }
  const button = el("button", { "data-tab": tab.id, text: tab.label });
  button.hidden = !tab.always;
  button.addEventListener("click", () => selectTab(tab.id));
  $("#tabs").insertBefore(button, $('#tabs button[data-tab="dashboard"]'));
}

const offers = (cards, tab) => cards.some((m) => tab.capabilities.some((c) => (m.capabilities || []).includes(c)));

export async function loadModels() {
  let cards;
  try {
    cards = (await getJSON("/v1/models")).data;
  } catch (err) {
    banner(err instanceof ApiError && err.status === 401 ? "Enter a valid API key to use the server." : `Cannot list models: ${err.message}`);
    return;
  }
  banner(cards.length ? "" : "No model is ready yet; the dashboard shows what is loading.");
  for (const tab of tabs) {
    tab.update(cards);
    $(`#tabs button[data-tab="${tab.id}"]`).hidden = !(tab.always || offers(cards, tab));
  }
}

function showTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of document.querySelectorAll(".tab")) s.classList.toggle("active", s.id === `tab-${name}`);
  if (name === "dashboard") startDashboard(); else stopDashboard();
}

function selectTab(name) {
  showTab(name);
  history.replaceState(null, "", `#${name}`);
}

function initKey() {
  const input = $("#api-key");
  const status = () => { $("#key-status").textContent = getKey() ? "key saved" : "no key"; };
  input.value = getKey();
  status();
  $("#key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    setKey(input.value.trim());
    status();
    loadModels();
  });
}

async function init() {
  const want = location.hash.slice(1);
  initKey();
  $('#tabs button[data-tab="dashboard"]').addEventListener("click", () => selectTab("dashboard"));
  try {
    tabs = await loadTabs();
  } catch (err) {
    banner(err.message);
  }
  tabs = tabs.filter((tab) => {
    try { mount(tab); return true; } catch (err) { console.error(`UI tab ${tab.id} failed to render:`, err); return false; }
  });
  showTab(tabs.length ? tabs[0].id : "dashboard"); // the landing tab, leaving the URL alone
  await loadModels();
  const btn = document.querySelector(`#tabs button[data-tab="${want}"]`);
  if (want && btn && !btn.hidden) selectTab(want);
  setInterval(loadModels, 15000);
}

init();
