// A small code highlighter: comments, strings, numbers, keywords, literals, calls.
import { escapeHtml } from "./util.js";

const KEYWORDS = new Set((
  "and as assert async await break case catch class const continue def default del do elif else enum except export " +
  "extends finally fn for from func function go if impl import in interface is lambda let loop match mod module mut new " +
  "nonlocal not of or package pass pub raise return select static struct switch throw trait try type typeof use var " +
  "void while with yield public private protected final abstract override namespace template using include define " +
  "SELECT FROM WHERE INSERT UPDATE DELETE JOIN ON GROUP BY ORDER LIMIT AS AND OR NOT INTO VALUES CREATE TABLE echo fi then esac done"
).split(" "));
const LITERALS = new Set("true false True False None null nil undefined NaN self this".split(" "));

const HASH_COMMENT = new Set(["python", "py", "bash", "sh", "shell", "zsh", "ruby", "rb", "yaml", "yml", "toml", "r", "perl", "dockerfile", "makefile", "ini", "conf"]);

function tokenRe(lang) {
  const hash = HASH_COMMENT.has(lang);
  const slash = !hash || lang === "";
  const parts = [
    slash ? String.raw`\/\/[^\n]*|\/\*[\s\S]*?\*\/` : null,
    hash || lang === "" ? String.raw`#[^\n]*` : null,
    lang === "sql" || lang === "lua" || lang === "haskell" ? String.raw`--[^\n]*` : null,
    String.raw`"""[\s\S]*?"""|'''[\s\S]*?'''|` + "`(?:\\\\[\\s\\S]|[^`\\\\])*`" + String.raw`|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'`,
    String.raw`\b(?:0x[\da-fA-F]+|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)\b`,
    String.raw`[A-Za-z_$][\w$]*`,
  ].filter(Boolean);
  return { re: new RegExp(parts.map((p) => `(${p})`).join("|"), "g"), groups: parts.length };
}

export function highlight(code, lang = "") {
  lang = (lang || "").toLowerCase();
  if (lang === "text" || lang === "plain" || code.length > 200000) return escapeHtml(code);
  const { re, groups } = tokenRe(lang);
  let out = "", last = 0, m;
  while ((m = re.exec(code)) !== null) {
    out += escapeHtml(code.slice(last, m.index));
    const tok = m[0];
    const g = m.slice(1, groups + 1).findIndex((x) => x !== undefined);
    const cls = classify(tok, g, groups, code, re.lastIndex);
    out += cls ? `<span class="tok-${cls}">${escapeHtml(tok)}</span>` : escapeHtml(tok);
    last = re.lastIndex;
  }
  return out + escapeHtml(code.slice(last));
}

function classify(tok, group, groups, code, end) {
  const ident = group === groups - 1, number = group === groups - 2, string = group === groups - 3;
  if (string) return "str";
  if (number) return "num";
  if (!ident) return "com";
  if (KEYWORDS.has(tok)) return "kw";
  if (LITERALS.has(tok)) return "lit";
  if (code[end] === "(") return "fn";
  return null;
}
