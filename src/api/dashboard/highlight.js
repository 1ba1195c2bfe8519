// Troupe dashboard: a tiny Python highlighter. It splits source into comments, strings, numbers, keywords,
// builtins, decorators and the names after def/class, and builds spans with text nodes (never HTML), so
// hostile code can only ever be shown, not run.

import { h } from "./common.js";

const KEYWORDS = new Set(
  "False None True and as assert async await break class continue def del elif else except finally for from global if import in is lambda nonlocal not or pass raise return try while with yield match case".split(" "),
);
const BUILTINS = new Set(
  "abs all any bool dict enumerate filter float int isinstance len list map max min open print range repr reversed round set sorted str sum tuple type zip ValueError TypeError KeyError IndexError Exception AssertionError self".split(" "),
);

// One alternation; the first group that matches names the token's class.
const TOKEN = new RegExp(
  [
    String.raw`(#[^\n]*)`, // comment
    String.raw`((?:[rRbBuUfF]{0,2})(?:"""[\s\S]*?(?:"""|$)|'''[\s\S]*?(?:'''|$)|"(?:\\.|[^"\\\n])*"?|'(?:\\.|[^'\\\n])*'?))`, // string
    String.raw`(\b(?:0[xXoObB][\da-fA-F_]+|\d[\d_]*(?:\.\d*)?(?:[eE][+-]?\d+)?j?|\.\d+)\b)`, // number
    String.raw`(@[A-Za-z_][\w.]*)`, // decorator
    String.raw`([A-Za-z_]\w*)`, // name
  ].join("|"),
  "g",
);

/** Highlighted Python as a <pre class="code">. */
export function python(source) {
  const pre = h("pre", { class: "code" });
  const code = h("code", {});
  pre.append(code);
  let last = 0;
  let afterDef = false;
  for (const match of source.matchAll(TOKEN)) {
    if (match.index > last) code.append(source.slice(last, match.index));
    const [text, comment, string, number, decorator, name] = match;
    let cls = null;
    if (comment) cls = "hl-com";
    else if (string) cls = "hl-str";
    else if (number) cls = "hl-num";
    else if (decorator) cls = "hl-dec";
    else if (name) {
      if (afterDef) cls = "hl-fn";
      else if (KEYWORDS.has(name)) cls = "hl-kw";
      else if (BUILTINS.has(name)) cls = "hl-bi";
    }
    afterDef = Boolean(name) && (name === "def" || name === "class");
    code.append(cls ? h("span", { class: cls, text }) : text);
    last = match.index + text.length;
  }
  if (last < source.length) code.append(source.slice(last));
  return pre;
}

/** Whether text looks like Python source (for results that do not say). */
export function looksLikePython(text) {
  return /^\s*(def |class |import |from \w+ import |@\w|if __name__)/m.test(text);
}
