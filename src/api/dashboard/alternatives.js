// Troupe dashboard, the token view's alternatives: hovering a token of a model call's stream, or focusing it
// from the keyboard (focus the stream, then the arrow keys move from token to token), shows a small table of
// its probability and the five likeliest tokens at that place with theirs (where the provider gave them).

import { h, fill } from "./common.js";

/** Marks a token's span with what the popover shows: its probability and alternatives. */
export function describeToken(span, token) {
  if (Number.isFinite(token.p)) span.dataset.p = String(token.p);
  if (Array.isArray(token.top) && token.top.length) span.dataset.top = JSON.stringify(token.top.slice(0, 5));
  span.tabIndex = -1;
}

/** A token as it reads in a table: whitespace made visible, quotes around it. */
function visible(text) {
  return JSON.stringify(String(text ?? "")).replace(/ /g, "␣");
}

function fixed(p) {
  return Number.isFinite(Number(p)) ? Number(p).toFixed(3) : "–";
}

function content(span) {
  const p = span.dataset.p === undefined ? NaN : Number(span.dataset.p);
  let top = [];
  try {
    top = span.dataset.top ? JSON.parse(span.dataset.top) : [];
  } catch {
    top = [];
  }
  const text = span.textContent;
  return [
    h("div", { class: "alt-head" }, h("span", { class: "mono", text: visible(text) }), h("b", { text: Number.isFinite(p) ? `p = ${fixed(p)}` : "p unknown" })),
    top.length
      ? h(
          "table",
          { class: "alt-table" },
          h("thead", {}, h("tr", {}, h("th", { text: "#" }), h("th", { text: "alternative" }), h("th", { class: "num", text: "p" }), h("th", { text: "" }))),
          h(
            "tbody",
            {},
            top.map((alternative, i) =>
              h(
                "tr",
                { class: alternative.text === text ? "sampled" : "" },
                h("td", { class: "num", text: i + 1 }),
                h("td", { class: "mono", text: visible(alternative.text) }),
                h("td", { class: "num", text: fixed(alternative.p) }),
                h("td", {}, h("span", { class: "alt-bar" }, h("span", { style: { width: `${Math.max(0, Math.min(1, Number(alternative.p) || 0)) * 100}%` } }))),
              ),
            ),
          ),
        )
      : h("div", { class: "hint", text: "the provider gave no alternatives here" }),
  ];
}

/**
 * Wires the popover onto a token stream: one shared box, shown beside the hovered or focused token and
 * hidden when the pointer or the focus leaves it (or the stream scrolls). Returns the box.
 */
export function wireAlternatives(stream) {
  // The stream is drawn anew when another call is chosen: the box of the stream before goes.
  const old = document.getElementById("token-popover");
  if (old) old.remove();
  const box = h("div", { class: "alt-popover", role: "tooltip", id: "token-popover", hidden: true });
  document.body.append(box);
  let current = null;
  const show = (span) => {
    if (!span || span.parentElement !== stream) return;
    current = span;
    fill(box, content(span));
    box.hidden = false;
    const rect = span.getBoundingClientRect();
    const width = box.offsetWidth;
    const left = Math.max(8, Math.min(window.innerWidth - width - 8, rect.left));
    const below = rect.bottom + 6 + box.offsetHeight < window.innerHeight;
    box.style.left = `${left}px`;
    box.style.top = `${below ? rect.bottom + 6 : Math.max(8, rect.top - 6 - box.offsetHeight)}px`;
    span.setAttribute("aria-describedby", box.id);
  };
  const hide = () => {
    if (current) current.removeAttribute("aria-describedby");
    current = null;
    box.hidden = true;
  };
  stream.addEventListener("mouseover", (event) => show(event.target.closest("span")));
  stream.addEventListener("mouseleave", hide);
  stream.addEventListener("focusin", (event) => show(event.target.closest("span")));
  stream.addEventListener("focusout", (event) => {
    if (!stream.contains(event.relatedTarget)) hide();
  });
  stream.addEventListener("scroll", hide, { passive: true });
  stream.addEventListener("keydown", (event) => {
    const step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[event.key];
    if (event.key === "Escape") return hide();
    if (!step) return;
    const tokens = [...stream.querySelectorAll(":scope > span[tabindex]")];
    if (!tokens.length) return;
    event.preventDefault();
    const at = tokens.indexOf(document.activeElement);
    const next = at < 0 ? (step > 0 ? 0 : tokens.length - 1) : Math.max(0, Math.min(tokens.length - 1, at + step));
    tokens[next].focus();
  });
  return box;
}
