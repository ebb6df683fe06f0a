// Rerank tab: scores documents against a query (/v1/rerank, Cohere shape).
import { postJSON } from "../api.js";
import { $, fillSelect, guard, lines, modelsWith, scoreTable } from "../util.js";

async function rerank() {
  const docs = lines($("#rr-docs"));
  const r = await postJSON("/v1/rerank", { model: $("#rr-model").value, query: $("#rr-query").value, documents: docs });
  const rows = r.results.map((x) => ({ text: docs[x.index], score: x.relevance_score }));
  $("#rr-out").replaceChildren(scoreTable(rows, "relevance"));
}

export default {
  id: "rerank",
  label: "Rerank",
  order: 30,
  capabilities: ["rerank"],
  render(section) {
    section.innerHTML = `
      <h2>Rerank</h2>
      <label>Model <select id="rr-model"></select></label>
      <label>Query <input id="rr-query" type="text"></label>
      <label>Documents (one per line) <textarea id="rr-docs" rows="6"></textarea></label>
      <button id="rr-run" class="primary" type="button">Rerank</button>
      <div id="rr-out" class="out"></div>`;
    $("#rr-run").addEventListener("click", guard($("#rr-out"), rerank));
  },
  update(cards) { fillSelect($("#rr-model"), modelsWith(cards, "rerank")); },
};
