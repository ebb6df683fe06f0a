// The tabs for non-chat models: embeddings, rerank, moderation, speech, images (OpenAI / Cohere shapes).
import { postJSON, postRaw } from "./api.js";
import { $, el, showError } from "./util.js";

const lines = (sel) => $(sel).value.split("\n").map((s) => s.trim()).filter(Boolean);

function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  return dot / (Math.sqrt(na) * Math.sqrt(nb) || 1);
}

function bar(frac) {
  const b = el("span", { class: "bar" });
  b.style.width = `${Math.round(100 * frac)}px`; // CSSOM, allowed by the page's CSP
  return b;
}

function scoreTable(rows, label) {
  const max = Math.max(1e-9, ...rows.map((r) => Math.abs(r.score)));
  return el("table", { class: "grid" },
    el("thead", {}, el("tr", {}, el("th", { text: "Text" }), el("th", { text: label }))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, el("td", { text: r.text }),
      el("td", {}, bar(Math.abs(r.score) / max), r.score.toFixed(4))))));
}

function guard(out, fn) {
  return async () => {
    out.replaceChildren(el("p", { class: "muted", text: "working…" }));
    try { await fn(); } catch (err) { showError(out, err); }
  };
}

async function embeddings() {
  const query = $("#emb-query").value.trim(), texts = lines("#emb-texts");
  if (!query || !texts.length) throw new Error("enter a query and at least one text");
  const r = await postJSON("/v1/embeddings", { model: $("#emb-model").value, input: [query, ...texts] });
  const vecs = [...r.data].sort((a, b) => a.index - b.index).map((d) => d.embedding);
  const rows = texts.map((text, i) => ({ text, score: cosine(vecs[0], vecs[i + 1]) })).sort((a, b) => b.score - a.score);
  $("#emb-out").replaceChildren(el("p", { class: "muted", text: `${vecs[0].length} dimensions` }), scoreTable(rows, "cosine similarity"));
}

async function rerank() {
  const docs = lines("#rr-docs");
  const r = await postJSON("/v1/rerank", { model: $("#rr-model").value, query: $("#rr-query").value, documents: docs });
  const rows = r.results.map((x) => ({ text: docs[x.index], score: x.relevance_score }));
  $("#rr-out").replaceChildren(scoreTable(rows, "relevance"));
}

async function moderation() {
  const r = await postJSON("/v1/moderations", { model: $("#mod-model").value, input: $("#mod-text").value });
  const res = r.results[0];
  const rows = Object.entries(res.category_scores || {}).map(([text, score]) => ({ text: `${text}${res.categories[text] ? " (flagged)" : ""}`, score }))
    .sort((a, b) => b.score - a.score);
  $("#mod-out").replaceChildren(el("p", { class: res.flagged ? "err" : "", text: res.flagged ? "flagged" : "not flagged" }), scoreTable(rows, "score"));
}

async function transcribe() {
  const file = $("#asr-file").files[0];
  if (!file) throw new Error("choose an audio file");
  const form = new FormData();
  form.append("file", file); form.append("model", $("#asr-model").value); form.append("response_format", "json");
  const resp = await postRaw("/v1/audio/transcriptions", form, { json: false });
  const r = await resp.json();
  $("#asr-out").replaceChildren(el("p", { text: r.text }));
}

let audioUrl = null;
async function speak() {
  const body = { model: $("#tts-model").value, input: $("#tts-text").value, voice: $("#tts-voice").value || "alloy", response_format: "wav" };
  const resp = await postRaw("/v1/audio/speech", body);
  const blob = await resp.blob();
  if (audioUrl) URL.revokeObjectURL(audioUrl);
  audioUrl = URL.createObjectURL(blob);
  $("#tts-audio").src = audioUrl;
  $("#tts-out").replaceChildren(el("p", { class: "muted", text: `${blob.type}, ${blob.size} bytes` }));
  $("#tts-audio").play().catch(() => {});
}

async function images() {
  const prompt = $("#img-prompt").value.trim();
  const body = { model: $("#img-model").value, prompt, size: $("#img-size").value, n: parseInt($("#img-n").value, 10) || 1, response_format: "b64_json" };
  const r = await postJSON("/v1/images/generations", body);
  for (const d of r.data) {
    const src = d.b64_json ? `data:image/png;base64,${d.b64_json}` : d.url;
    $("#img-gallery").prepend(el("figure", {}, el("img", { src, alt: prompt }), el("figcaption", { text: d.revised_prompt || prompt })));
  }
  $("#img-out").replaceChildren();
}

export function initKinds() {
  $("#emb-run").addEventListener("click", guard($("#emb-out"), embeddings));
  $("#rr-run").addEventListener("click", guard($("#rr-out"), rerank));
  $("#mod-run").addEventListener("click", guard($("#mod-out"), moderation));
  $("#asr-run").addEventListener("click", guard($("#asr-out"), transcribe));
  $("#tts-run").addEventListener("click", guard($("#tts-out"), speak));
  $("#img-run").addEventListener("click", guard($("#img-out"), images));
}
