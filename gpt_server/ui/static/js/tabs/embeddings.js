// Embeddings tab: ranks texts by cosine similarity to a query (/v1/embeddings).
import { postJSON } from "../api.js";
import { $, el, fillSelect, guard, lines, modelsWith, scoreTable } from "../util.js";

function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  return dot / (Math.sqrt(na) * Math.sqrt(nb) || 1);
}

async function compare() {
  const query = $("#emb-query").value.trim(), texts = lines($("#emb-texts"));
  if (!query || !texts.length) throw new Error("enter a query and at least one text");
  const r = await postJSON("/v1/embeddings", { model: $("#emb-model").value, input: [query, ...texts] });
  const vecs = [...r.data].sort((a, b) => a.index - b.index).map((d) => d.embedding);
  const rows = texts.map((text, i) => ({ text, score: cosine(vecs[0], vecs[i + 1]) })).sort((a, b) => b.score - a.score);
  $("#emb-out").replaceChildren(el("p", { class: "muted", text: `${vecs[0].length} dimensions` }), scoreTable(rows, "cosine similarity"));
}

export default {
  id: "embeddings",
  label: "Embeddings",
  order: 20,
  capabilities: ["embed"],
  render(section) {
    section.innerHTML = `
      <h2>Embeddings similarity</h2>
      <label>Model <select id="emb-model"></select></label>
      <label>Query <input id="emb-query" type="text"></label>
      <label>Texts (one per line) <textarea id="emb-texts" rows="6"></textarea></label>
      <button id="emb-run" class="primary" type="button">Compare</button>
      <div id="emb-out" class="out"></div>`;
    $("#emb-run").addEventListener("click", guard($("#emb-out"), compare));
  },
  update(cards) { fillSelect($("#emb-model"), modelsWith(cards, "embed")); },
};
