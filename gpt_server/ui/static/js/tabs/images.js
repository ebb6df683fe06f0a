// Images tab: text to image (/v1/images/generations), newest first in a gallery.
import { postJSON } from "../api.js";
import { $, el, fillSelect, guard, modelsWith } from "../util.js";

async function generate() {
  const prompt = $("#img-prompt").value.trim();
  const body = { model: $("#img-model").value, prompt, size: $("#img-size").value, n: parseInt($("#img-n").value, 10) || 1, response_format: "b64_json" };
  const r = await postJSON("/v1/images/generations", body);
  for (const d of r.data) {
    const src = d.b64_json ? `data:image/png;base64,${d.b64_json}` : d.url;
    $("#img-gallery").prepend(el("figure", {}, el("img", { src, alt: prompt }), el("figcaption", { text: d.revised_prompt || prompt })));
  }
  $("#img-out").replaceChildren();
}

export default {
  id: "images",
  label: "Images",
  order: 60,
  capabilities: ["image"],
  render(section) {
    section.innerHTML = `
      <h2>Image generation</h2>
      <label>Model <select id="img-model"></select></label>
      <label>Prompt <textarea id="img-prompt" rows="3"></textarea></label>
      <div class="row">
        <label>Size <select id="img-size"><option>256x256</option><option selected>512x512</option><option>1024x1024</option></select></label>
        <label>Count <input id="img-n" type="number" min="1" max="4" value="1"></label>
        <button id="img-run" class="primary" type="button">Generate</button>
      </div>
      <div id="img-out" class="out"></div>
      <div id="img-gallery" class="gallery"></div>`;
    $("#img-run").addEventListener("click", guard($("#img-out"), generate));
  },
  update(cards) { fillSelect($("#img-model"), modelsWith(cards, "image")); },
};
