// Chat tab: streaming /v1/chat/completions, Markdown + highlighted code, reasoning, tool-call cards.
// Always shown (the landing tab); its model list holds the models with the "chat" capability.
import { streamSSE } from "../api.js";
import { renderMarkdown } from "../markdown.js";
import { $, copyText, el, fillSelect, modelsWith, readDataURL } from "../util.js";

const history = []; // OpenAI messages sent back on the next turn (text and images only)
let pending = [];    // data: URLs of images attached to the next message
let controller = null;

function params() {
  const body = { model: $("#chat-model").value, stream: true, stream_options: { include_usage: true } };
  const t = parseFloat($("#chat-temperature").value);
  if (!Number.isNaN(t)) body.temperature = t;
  const mt = parseInt($("#chat-max-tokens").value, 10);
  if (mt > 0) body.max_tokens = mt;
  const stop = $("#chat-stop").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (stop.length) body.stop = stop.slice(0, 4);
  const tools = $("#chat-tools").value.trim();
  if (tools) {
    try { body.tools = JSON.parse(tools); } catch (err) { throw new Error(`Tools are not valid JSON: ${err.message}`); }
    body.tool_choice = $("#chat-tool-choice").value;
  }
  const system = $("#chat-system").value.trim();
  body.messages = [...(system ? [{ role: "system", content: system }] : []), ...history];
  return body;
}

function addCopyButtons(root) {
  for (const pre of root.querySelectorAll("pre")) {
    const b = el("button", { class: "copy-code", type: "button", text: "copy" });
    b.addEventListener("click", () => copyText(pre.querySelector("code").textContent));
    pre.append(b);
  }
}

function userBubble(text, images) {
  const body = el("div", { class: "body" });
  for (const src of images) body.append(el("img", { class: "thumb", src, alt: "attached image" }));
  body.append(el("div", { text }));
  return el("div", { class: "msg user" }, el("div", { class: "role", text: "user" }), body);
}

// One assistant turn being streamed: content, reasoning and tool calls accumulated from deltas.
class Turn {
  constructor(log) {
    this.content = ""; this.reasoning = ""; this.tools = []; this.usage = null; this.finish = null;
    this.reasonBox = el("details", { class: "reasoning", hidden: "" }, el("summary", { text: "Reasoning" }), el("div", { class: "text" }));
    this.toolBox = el("div", { class: "tools" });
    this.body = el("div", { class: "body" });
    this.meta = el("div", { class: "meta" });
    this.node = el("div", { class: "msg assistant" }, el("div", { class: "role", text: "assistant" }), this.reasonBox, this.body, this.toolBox, this.meta);
    log.append(this.node);
    this.scheduled = false;
  }

  add(chunk) {
    if (chunk.usage) this.usage = chunk.usage;
    for (const ch of chunk.choices || []) {
      const d = ch.delta || {};
      if (d.content) this.content += d.content;
      if (d.reasoning_content) this.reasoning += d.reasoning_content;
      for (const tc of d.tool_calls || []) {
        const slot = this.tools[tc.index] || (this.tools[tc.index] = { id: "", name: "", arguments: "" });
        if (tc.id) slot.id = tc.id;
        if (tc.function && tc.function.name) slot.name += tc.function.name;
        if (tc.function && tc.function.arguments) slot.arguments += tc.function.arguments;
      }
      if (ch.finish_reason) this.finish = ch.finish_reason;
    }
    this.schedule();
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => { this.scheduled = false; this.render(); });
  }

  render() {
    this.body.innerHTML = renderMarkdown(this.content);
    addCopyButtons(this.body);
    if (this.reasoning) { this.reasonBox.hidden = false; this.reasonBox.querySelector(".text").textContent = this.reasoning; }
    this.toolBox.replaceChildren(...this.tools.filter(Boolean).map(toolCard));
    const bits = [];
    if (this.finish) bits.push(`finish: ${this.finish}`);
    if (this.usage) bits.push(`${this.usage.prompt_tokens} prompt + ${this.usage.completion_tokens} completion tokens`);
    this.meta.textContent = bits.join(" · ");
    this.node.parentElement && (this.node.parentElement.scrollTop = this.node.parentElement.scrollHeight);
  }
}

function toolCard(t) {
  let args = t.arguments;
  try { args = JSON.stringify(JSON.parse(t.arguments), null, 2); } catch (_) { /* still streaming */ }
  return el("div", { class: "tool-card" }, el("div", { class: "name", text: `tool call: ${t.name}` }),
    el("div", { class: "meta", text: t.id }), el("pre", { text: args }));
}

function setBusy(busy) {
  $("#chat-send").disabled = busy;
  $("#chat-stop-btn").hidden = !busy;
}

async function send(event) {
  event.preventDefault();
  const text = $("#chat-input").value.trim();
  if ((!text && !pending.length) || controller) return;
  if (!$("#chat-model").value) { alert("No chat model is being served."); return; }
  const content = pending.length
    ? [...(text ? [{ type: "text", text }] : []), ...pending.map((url) => ({ type: "image_url", image_url: { url } }))]
    : text;
  const log = $("#chat-log");
  log.append(userBubble(text, pending));
  history.push({ role: "user", content });
  $("#chat-input").value = ""; pending = []; $("#chat-attachments").replaceChildren();
  const turn = new Turn(log);
  controller = new AbortController();
  setBusy(true);
  try {
    await streamSSE("/v1/chat/completions", params(), (c) => turn.add(c), controller.signal);
  } catch (err) {
    if (err.name === "AbortError") turn.finish = "stopped";
    else {
      if (!turn.content && !turn.reasoning && !turn.tools.length) turn.node.remove();
      log.append(el("div", { class: "msg error", text: String(err.message || err) }));
    }
  } finally {
    controller = null; setBusy(false); turn.render();
    if (turn.content) history.push({ role: "assistant", content: turn.content });
    else history.pop(); // nothing came back: do not leave a dangling user turn
  }
}

function transcript() {
  return [...$("#chat-log").querySelectorAll(".msg")].map((m) => {
    const role = m.querySelector(".role") ? m.querySelector(".role").textContent : "error";
    return `${role}: ${m.querySelector(".body") ? m.querySelector(".body").innerText : m.innerText}`;
  }).join("\n\n");
}

const MARKUP = `
  <aside class="settings">
    <label>Model <select id="chat-model"></select></label>
    <label>System prompt <textarea id="chat-system" rows="4" placeholder="You are a helpful assistant."></textarea></label>
    <label>Temperature <input id="chat-temperature" type="number" min="0" max="2" step="0.1" value="0.7"></label>
    <label>Max tokens <input id="chat-max-tokens" type="number" min="1" max="131072" step="1" value="512"></label>
    <label>Stop (comma separated) <input id="chat-stop" type="text" placeholder="e.g. ###"></label>
    <details id="chat-tools-box"><summary>Tools</summary>
      <label>Tools (JSON array of OpenAI function tools) <textarea id="chat-tools" rows="6" placeholder='[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]'></textarea></label>
      <label>Tool choice <select id="chat-tool-choice"><option>auto</option><option>required</option><option>none</option></select></label>
    </details>
    <div class="row">
      <button id="chat-clear" type="button">Clear</button>
      <button id="chat-copy" type="button">Copy chat</button>
    </div>
  </aside>
  <div class="chat-main">
    <div id="chat-log" aria-live="polite"></div>
    <form id="chat-form">
      <div id="chat-attachments"></div>
      <textarea id="chat-input" rows="3" placeholder="Send a message (Enter sends, Shift+Enter for a new line)"></textarea>
      <div class="row">
        <label class="file-btn" title="Attach an image (vision models)">Attach image
          <input id="chat-image" type="file" accept="image/*" hidden></label>
        <span class="grow"></span>
        <button id="chat-stop-btn" type="button" hidden>Stop</button>
        <button id="chat-send" type="submit">Send</button>
      </div>
    </form>
  </div>`;

function render(section) {
  section.innerHTML = MARKUP;
  $("#chat-form").addEventListener("submit", send);
  $("#chat-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("#chat-form").requestSubmit(); }
  });
  $("#chat-stop-btn").addEventListener("click", () => controller && controller.abort());
  $("#chat-clear").addEventListener("click", () => { history.length = 0; $("#chat-log").replaceChildren(); });
  $("#chat-copy").addEventListener("click", () => copyText(transcript()));
  $("#chat-image").addEventListener("change", async (e) => {
    for (const f of e.target.files) {
      const url = await readDataURL(f);
      pending.push(url);
      $("#chat-attachments").append(el("img", { src: url, alt: f.name, title: f.name }));
    }
    e.target.value = "";
  });
}

export default {
  id: "chat",
  label: "Chat",
  order: 10,
  capabilities: ["chat"],
  always: true,
  render,
  update(cards) { fillSelect($("#chat-model"), modelsWith(cards, "chat")); },
};
