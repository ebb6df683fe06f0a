// Speech tab: speech to text (/v1/audio/transcriptions) and text to speech (/v1/audio/speech);
// each half shows only when a model with its capability is served.
import { postRaw } from "../api.js";
import { $, el, fillSelect, guard, modelsWith } from "../util.js";

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

export default {
  id: "speech",
  label: "Speech",
  order: 50,
  capabilities: ["transcribe", "speech"],
  render(section) {
    section.innerHTML = `
      <h2>Speech</h2>
      <div class="cols">
        <div id="asr-box">
          <h3>Speech to text</h3>
          <label>Model <select id="asr-model"></select></label>
          <label>Audio file <input id="asr-file" type="file" accept="audio/*"></label>
          <button id="asr-run" class="primary" type="button">Transcribe</button>
          <div id="asr-out" class="out"></div>
        </div>
        <div id="tts-box">
          <h3>Text to speech</h3>
          <label>Model <select id="tts-model"></select></label>
          <label>Voice <input id="tts-voice" type="text" value="alloy"></label>
          <label>Text <textarea id="tts-text" rows="4"></textarea></label>
          <button id="tts-run" class="primary" type="button">Speak</button>
          <audio id="tts-audio" controls></audio>
          <div id="tts-out" class="out"></div>
        </div>
      </div>`;
    $("#asr-run").addEventListener("click", guard($("#asr-out"), transcribe));
    $("#tts-run").addEventListener("click", guard($("#tts-out"), speak));
  },
  update(cards) {
    const asr = modelsWith(cards, "transcribe"), tts = modelsWith(cards, "speech");
    fillSelect($("#asr-model"), asr);
    fillSelect($("#tts-model"), tts);
    $("#asr-box").hidden = !asr.length;
    $("#tts-box").hidden = !tts.length;
  },
};
