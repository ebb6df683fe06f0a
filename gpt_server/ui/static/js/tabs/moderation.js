// Moderation tab: category scores for a text (/v1/moderations).
import { postJSON } from "../api.js";
import { $, el, fillSelect, guard, modelsWith, scoreTable } from "../util.js";

async function check() {
  const r = await postJSON("/v1/moderations", { model: $("#mod-model").value, input: $("#mod-text").value });
  const res = r.results[0];
  const rows = Object.entries(res.category_scores || {}).map(([text, score]) => ({ text: `${text}${res.categories[text] ? " (flagged)" : ""}`, score }))
    .sort((a, b) => b.score - a.score);
  $("#mod-out").replaceChildren(el("p", { class: res.flagged ? "err" : "", text: res.flagged ? "flagged" : "not flagged" }), scoreTable(rows, "score"));
}

export default {
  id: "moderation",
  label: "Moderation",
  order: 40,
  capabilities: ["moderate"],
  render(section) {
    section.innerHTML = `
      <h2>Moderation</h2>
      <label>Model <select id="mod-model"></select></label>
      <label>Text <textarea id="mod-text" rows="4"></textarea></label>
      <button id="mod-run" class="primary" type="button">Check</button>
      <div id="mod-out" class="out"></div>`;
    $("#mod-run").addEventListener("click", guard($("#mod-out"), check));
  },
  update(cards) { fillSelect($("#mod-model"), modelsWith(cards, "moderate")); },
};
