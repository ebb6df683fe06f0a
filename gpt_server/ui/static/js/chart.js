// Small SVG line charts for the dashboard: no library, no canvas. A chart is a title, a y axis
// with round ticks, a time axis ending at the newest sample, one line per series (a gap where a
// value is null or samples are missing) and a hover read-out of the values at the nearest sample.
import { el } from "./util.js";

const NS = "http://www.w3.org/2000/svg";
const H = 190, L = 48, R = 12, T = 10, B = 24; // height and plot margins, in CSS pixels

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) node.setAttribute(k, String(v));
  for (const c of children) node.append(c);
  return node;
}

// The smallest 1/2/2.5/5 × 10^k at or above v (the top of the y axis).
export function niceCeil(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v - 1e-12) return m * p;
  return 10 * p;
}

function timeStep(span) { // seconds between time-axis ticks: 2 to 5 of them
  for (const s of [10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600]) if (span / s <= 4) return s;
  return 7200;
}

function ago(s) {
  if (s <= 0) return "now";
  return s % 60 ? `-${s}s` : `-${s / 60}m`;
}

// The runs of [x, y] points of a series: broken where more than `maxGap` seconds pass between
// two values (samples missing, or null values: no request measured then).
function runs(t, v, x, y, maxGap, start) {
  const out = [];
  let run = null, prev = null;
  for (let i = 0; i < t.length; i++) {
    if (t[i] < start || v[i] === null || v[i] === undefined) continue;
    if (prev === null || t[i] - prev > maxGap) out.push(run = []);
    run.push([x(t[i]), y(v[i])]);
    prev = t[i];
  }
  return out;
}

const pt = ([px, py]) => `${px.toFixed(1)} ${py.toFixed(1)}`;
// a lone point still shows (round caps on a tiny segment)
const linePath = (rs) => rs.map((r) => `M${pt(r[0])}${r.length > 1 ? r.slice(1).map((p) => `L${pt(p)}`).join("") : "h0.01"}`).join("");
const areaPath = (rs, base) => rs.filter((r) => r.length > 1)
  .map((r) => `M${r[0][0].toFixed(1)} ${base}${r.map((p) => `L${pt(p)}`).join("")}L${r[r.length - 1][0].toFixed(1)} ${base}Z`).join("");

function nearest(t, at) {
  let best = -1;
  for (let i = 0; i < t.length; i++) if (best < 0 || Math.abs(t[i] - at) < Math.abs(t[best] - at)) best = i;
  return best;
}

// Draw into `host` (replacing what was there), at its width. opts: {title, note, format(v), span,
// end, interval, series: [{label, color, dashed, t, v}], empty, floor (least top of the y axis),
// integer (whole ticks), bridge (samples a line spans without a value; 1.5 by default)}. `end` is the newest sample time, `span` the seconds shown before it.
export function lineChart(host, opts) {
  const { series, span, end, interval, format } = opts;
  const W = Math.max(240, Math.round(host.clientWidth - 20)); // drawn at the card's width: text keeps its size
  const start = end - span;
  const pw = W - L - R, ph = H - T - B;
  const x = (t) => L + ((t - start) / span) * pw;
  let top = 0;
  for (const s of series) for (let i = 0; i < s.v.length; i++) if (s.t[i] >= start && s.v[i] > top) top = s.v[i];
  top = opts.integer ? Math.max(4, Math.ceil(top / 4) * 4) : niceCeil(Math.max(top, opts.floor || 0) || 1); // integer: whole ticks
  const y = (v) => T + ph - (Math.min(v, top) / top) * ph;

  const grid = svg("g", { class: "grid-lines" });
  for (let k = 0; k <= 4; k++) {
    const v = (top * k) / 4, py = y(v).toFixed(1);
    grid.append(svg("line", { x1: L, x2: W - R, y1: py, y2: py }));
    grid.append(svg("text", { x: L - 6, y: py, dy: "0.32em", "text-anchor": "end" }, format(v)));
  }
  const step = timeStep(span);
  for (let s = 0; s <= span; s += step) {
    const px = x(end - s).toFixed(1);
    grid.append(svg("line", { x1: px, x2: px, y1: T, y2: T + ph, class: "v" }));
    grid.append(svg("text", { x: px, y: H - 6, "text-anchor": s === 0 ? "end" : "middle" }, ago(s)));
  }

  const areas = svg("g", { class: "areas" });
  const lines = svg("g", { class: "lines" });
  let drawn = 0;
  for (const s of series) {
    const rs = runs(s.t, s.v, x, y, (opts.bridge || 1.5) * interval, start);
    if (!rs.length) continue;
    drawn++;
    if (!s.dashed) areas.append(svg("path", { d: areaPath(rs, (T + ph).toFixed(1)), fill: s.color }));
    lines.append(svg("path", { d: linePath(rs), stroke: s.color, class: s.dashed ? "dashed" : "" }, svg("title", {}, s.label)));
  }
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "chart-svg", role: "img", "aria-label": opts.title },
    grid, areas, lines);
  if (!drawn) root.append(svg("text", { x: L + pw / 2, y: T + ph / 2, class: "empty", "text-anchor": "middle" }, opts.empty || "no samples yet"));

  const cursor = svg("line", { y1: T, y2: T + ph, class: "cursor", visibility: "hidden" });
  root.append(cursor);
  const tip = el("div", { class: "chart-tip", hidden: "" });
  root.addEventListener("mousemove", (e) => {
    const box = root.getBoundingClientRect();
    const at = start + ((((e.clientX - box.left) / box.width) * W - L) / pw) * span;
    const rows = [];
    let when = null;
    for (const s of series) {
      const i = nearest(s.t, at);
      if (i < 0 || Math.abs(s.t[i] - at) > interval) continue;
      when = s.t[i];
      rows.push(el("div", {}, el("span", { class: "swatch", "data-color": s.color }), `${s.label}: ${s.v[i] === null ? "–" : format(s.v[i])}`));
    }
    if (!rows.length) { tip.hidden = true; cursor.setAttribute("visibility", "hidden"); return; }
    cursor.setAttribute("x1", x(when).toFixed(1));
    cursor.setAttribute("x2", x(when).toFixed(1));
    cursor.setAttribute("visibility", "visible");
    tip.replaceChildren(el("div", { class: "muted", text: new Date(when * 1000).toLocaleTimeString() }), ...rows);
    for (const sw of tip.querySelectorAll(".swatch")) sw.style.background = sw.dataset.color; // CSSOM, allowed by the CSP
    tip.hidden = false;
    const left = e.clientX - box.left;
    tip.style.left = `${left > box.width / 2 ? left - tip.offsetWidth - 12 : left + 12}px`;
  });
  root.addEventListener("mouseleave", () => { tip.hidden = true; cursor.setAttribute("visibility", "hidden"); });

  host.replaceChildren(
    el("div", { class: "chart-head" }, el("h3", { text: opts.title }), opts.note ? el("span", { class: "muted", text: opts.note }) : ""),
    el("div", { class: "chart-body" }, root, tip),
  );
}
