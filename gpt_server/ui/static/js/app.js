// Entry point: API key, tabs, model lists (from /v1/models: kind and capabilities pick the tabs).
import { ApiError, getJSON, getKey, setKey } from "./api.js";
import { initChat } from "./chat.js";
import { startDashboard, stopDashboard } from "./dashboard.js";
import { initKinds } from "./kinds.js";
import { $, fillSelect } from "./util.js";

// tab -> [select ids, predicate on a /v1/models card]
const has = (cap, kind) => (m) => (m.capabilities || []).includes(cap) || m.kind === kind;
const TABS = {
  chat: [["#chat-model"], (m) => (m.capabilities || []).includes("chat") || (!m.capabilities?.length && (m.kind || "auto") === "auto")],
  embeddings: [["#emb-model"], has("embed", "embedding")],
  rerank: [["#rr-model"], has("rerank", "rerank")],
  moderation: [["#mod-model"], has("moderate", "moderation")],
  speech: [["#asr-model"], has("transcribe", "asr")],
  speech_tts: [["#tts-model"], has("speech", "tts")],
  images: [["#img-model"], has("image", "image")],
};

function banner(text) {
  const b = $("#banner");
  b.textContent = text || "";
  b.hidden = !text;
}

export async function loadModels() {
  let cards;
  try {
    cards = (await getJSON("/v1/models")).data;
  } catch (err) {
    banner(err instanceof ApiError && err.status === 401 ? "Enter a valid API key to use the server." : `Cannot list models: ${err.message}`);
    return;
  }
  banner(cards.length ? "" : "No model is ready yet; the dashboard shows what is loading.");
  const shown = new Set(["chat", "dashboard"]);
  for (const [tab, [selects, pred]] of Object.entries(TABS)) {
    const ids = cards.filter(pred).map((m) => m.id);
    for (const sel of selects) fillSelect($(sel), ids);
    if (ids.length) shown.add(tab === "speech_tts" ? "speech" : tab);
  }
  $("#asr-box").hidden = !$("#asr-model").options.length;
  $("#tts-box").hidden = !$("#tts-model").options.length;
  for (const b of document.querySelectorAll("#tabs button")) b.hidden = !shown.has(b.dataset.tab);
}

function selectTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of document.querySelectorAll(".tab")) s.classList.toggle("active", s.id === `tab-${name}`);
  if (name === "dashboard") startDashboard(); else stopDashboard();
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

function init() {
  initKey();
  initChat();
  initKinds();
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => selectTab(b.dataset.tab));
  loadModels().then(() => {
    const want = location.hash.slice(1);
    const btn = document.querySelector(`#tabs button[data-tab="${want}"]`);
    if (btn && !btn.hidden) selectTab(want);
  });
  setInterval(loadModels, 15000);
}

init();
