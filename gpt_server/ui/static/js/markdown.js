// A small, safe Markdown renderer: everything is escaped first; only known constructs become tags.
// Blocks: fenced code (highlighted; an unclosed fence renders while streaming), headings, lists,
// blockquotes, tables, rules, paragraphs. Inline: code, bold, italic, strike, http(s) links.
import { highlight } from "./highlight.js";
import { escapeHtml } from "./util.js";

export { escapeHtml };

export function renderInline(text) {
  const codes = [];
  let s = text.replace(/\u0000/g, "").replace(/`([^`\n]+)`/g, (_, c) => { codes.push(c); return `\u0000${codes.length - 1}\u0000`; });
  s = escapeHtml(s)
    .replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/g, '<a href="$2" target="_blank" rel="noopener noreferrer">$1</a>')
    .replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w])__([^_\n]+)__(?!\w)/g, "$1<strong>$2</strong>")
    .replace(/(^|[^*\w])\*([^*\s][^*\n]*?)\*(?!\*)/g, "$1<em>$2</em>")
    .replace(/(^|[^\w])_([^_\s][^_\n]*?)_(?!\w)/g, "$1<em>$2</em>")
    .replace(/~~([^~\n]+)~~/g, "<del>$1</del>");
  return s.replace(/\u0000(\d+)\u0000/g, (_, i) => `<code>${escapeHtml(codes[Number(i)])}</code>`);
}

const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const LIST = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;
const TABLE_SEP = /^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$/;

function isBlockStart(line, next) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || LIST.test(line) || QUOTE.test(line)
    || (line.includes("|") && next !== undefined && TABLE_SEP.test(next));
}

function codeBlock(lines, lang) {
  const code = lines.join("\n");
  const cls = lang ? ` class="lang-${escapeHtml(lang)}"` : "";
  return `<pre><code${cls}>${highlight(code, lang)}</code></pre>`;
}

function cells(line) {
  return line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => renderInline(c.trim()));
}

function table(lines) {
  const head = cells(lines[0]).map((c) => `<th>${c}</th>`).join("");
  const body = lines.slice(2).map((l) => `<tr>${cells(l).map((c) => `<td>${c}</td>`).join("")}</tr>`).join("");
  return `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

function list(items, ordered, start) {
  const tag = ordered ? "ol" : "ul";
  const st = ordered && start !== 1 ? ` start="${start}"` : "";
  return `<${tag}${st}>${items.map((it) => `<li>${it.map(renderInline).join("<br>")}</li>`).join("")}</${tag}>`;
}

export function renderMarkdown(src) {
  const lines = String(src || "").replace(/\r\n?/g, "\n").split("\n");
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if ((m = line.match(FENCE))) {
      const close = new RegExp(`^\\s{0,3}${m[1][0]}{${m[1].length},}\\s*$`);
      const body = [];
      for (i++; i < lines.length && !close.test(lines[i]); i++) body.push(lines[i]);
      i++;
      out.push(codeBlock(body, m[2]));
    } else if (!line.trim()) {
      i++;
    } else if ((m = line.match(HEADING))) {
      out.push(`<h${m[1].length}>${renderInline(m[2])}</h${m[1].length}>`); i++;
    } else if (RULE.test(line)) {
      out.push("<hr>"); i++;
    } else if (QUOTE.test(line)) {
      const inner = [];
      for (; i < lines.length && (m = lines[i].match(QUOTE)); i++) inner.push(m[1]);
      out.push(`<blockquote>${renderMarkdown(inner.join("\n"))}</blockquote>`);
    } else if ((m = line.match(LIST))) {
      const ordered = /\d/.test(m[2]);
      const start = ordered ? parseInt(m[2], 10) : 1;
      const items = [];
      for (; i < lines.length; i++) {
        const l = lines[i], lm = l.match(LIST);
        if (lm && /\d/.test(lm[2]) === ordered) items.push([lm[3]]);
        else if (lm) items.push([`${lm[2]} ${lm[3]}`]);
        else if (l.trim() && /^\s+/.test(l) && items.length) items[items.length - 1].push(l.trim());
        else break;
      }
      out.push(list(items, ordered, start));
    } else if (line.includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1])) {
      const rows = [line, lines[i + 1]];
      for (i += 2; i < lines.length && lines[i].includes("|") && lines[i].trim(); i++) rows.push(lines[i]);
      out.push(table(rows));
    } else {
      const para = [];
      for (; i < lines.length && lines[i].trim() && !(para.length && isBlockStart(lines[i], lines[i + 1])); i++) para.push(lines[i]);
      out.push(`<p>${para.map(renderInline).join("<br>")}</p>`);
    }
  }
  return out.join("\n");
}
