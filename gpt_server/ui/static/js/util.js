// Small DOM helpers shared by every tab.
const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
export function escapeHtml(s) { return String(s).replace(/[&<>"']/g, (c) => ESC[c]); }

export const $ = (sel, root = document) => root.querySelector(sel);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

export function showError(target, err) {
  target.replaceChildren(el("p", { class: "err", text: String(err && err.message ? err.message : err) }));
}

export async function copyText(text) {
  try { await navigator.clipboard.writeText(text); return true; } catch (_) {
    const ta = el("textarea"); ta.value = text; document.body.append(ta); ta.select();
    const ok = document.execCommand("copy"); ta.remove(); return ok;
  }
}

export function readDataURL(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error);
    r.readAsDataURL(file);
  });
}

export function fillSelect(select, ids) {
  const keep = select.value;
  select.replaceChildren(...ids.map((id) => el("option", { value: id, text: id })));
  if (ids.includes(keep)) select.value = keep;
}

// Ids of the /v1/models cards that offer capability `cap`.
export function modelsWith(cards, cap) {
  return cards.filter((m) => (m.capabilities || []).includes(cap)).map((m) => m.id);
}

// Non-empty trimmed lines of a textarea.
export const lines = (node) => node.value.split("\n").map((s) => s.trim()).filter(Boolean);

// A click handler that shows "working…" in `out`, runs fn, and shows its error there if it throws.
export function guard(out, fn) {
  return async () => {
    out.replaceChildren(el("p", { class: "muted", text: "working…" }));
    try { await fn(); } catch (err) { showError(out, err); }
  };
}

function bar(frac) {
  const b = el("span", { class: "bar" });
  b.style.width = `${Math.round(100 * frac)}px`; // CSSOM, allowed by the page's CSP
  return b;
}

// A two-column table of {text, score} rows with a bar scaled to the largest |score|.
export function scoreTable(rows, label) {
  const max = Math.max(1e-9, ...rows.map((r) => Math.abs(r.score)));
  return el("table", { class: "grid" },
    el("thead", {}, el("tr", {}, el("th", { text: "Text" }), el("th", { text: label }))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, el("td", { text: r.text }),
      el("td", {}, bar(Math.abs(r.score) / max), r.score.toFixed(4))))));
}
