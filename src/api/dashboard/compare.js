// Troupe dashboard, two runs side by side (GET /api/v1/tasks/{a}/compare/{b}): the tasks, then what differs,
// highlighted: their status, prompt and error, the decisions (by kind and step), the steps, the model
// outputs (by purpose) and the result's keys; entries only one run has are listed under it.

import { h, fill, api, badge, agentChip, note, errorBox, prob, shortId, clock, pretty, markReady } from "./common.js";

const $ = (id) => document.getElementById(id);
const [, , first, second] = location.pathname.split("/").map((part) => decodeURIComponent(part || ""));

function text(value) {
  if (value === null || value === undefined) return "–";
  return typeof value === "string" ? value : pretty(value);
}

function taskHead(side, task) {
  const origin = task.fork_of ? `fork of ${shortId(task.fork_of.task || task.fork_of)}` : task.replay_of ? `replay of ${shortId(task.replay_of)}` : null;
  return h(
    "div",
    { class: "compare-task", dataset: { side } },
    h("div", { class: "title" }, h("span", { class: "side", text: side.toUpperCase() }), h("a", { href: `/tasks/${task.id}`, class: "mono", text: shortId(task.id) }), badge(task.status || "?"), origin ? h("span", { class: "hint", text: origin }) : null, h("span", { class: "hint", text: clock(task.finished_at) })),
    h("div", { class: "prompt", text: task.prompt || "" }),
  );
}

/** One row: the key, then side A's and side B's view, each highlighted as different (or absent). */
function row(key, a, b, view, { only = null } = {}) {
  const cellOf = (side, entry) => h("div", { class: `side-cell ${entry === undefined ? "absent" : only ? "only" : "differs"}`, dataset: { side } }, entry === undefined ? note("not in this run") : view(entry));
  return h("div", { class: "compare-row", dataset: { key: typeof key === "string" ? key : JSON.stringify(key) } }, h("div", { class: "compare-key mono", text: typeof key === "string" ? key : keyText(key) }), cellOf("a", a), cellOf("b", b));
}

function keyText(key) {
  if (key && typeof key === "object" && "kind" in key) return `${key.kind}${key.step !== null && key.step !== undefined ? ` · step ${key.step}` : ""}`;
  return String(key);
}

function decisionView(decision) {
  return h(
    "div",
    {},
    h("div", { class: "title" }, h("b", { text: `→ ${decision.chosen}` }), h("span", { class: "hint", text: `confidence ${prob(decision.confidence)}` })),
    decision.reasoning ? h("div", { class: "reason", text: decision.reasoning }) : null,
  );
}

function stepView(step) {
  return h(
    "div",
    {},
    h("div", { class: "title" }, step.agent ? agentChip(step.agent) : null, badge(step.status || "?"), h("span", { class: "hint", text: `${step.attempts ?? "–"} attempt(s)` })),
    h("div", { class: "body", text: step.instruction || "" }),
    step.output ? h("details", {}, h("summary", { text: "output" }), h("pre", { text: text(step.output) })) : null,
  );
}

function outputView(call) {
  return h(
    "div",
    {},
    h("div", { class: "title" }, call.agent ? agentChip(call.agent) : null, h("span", { class: "hint mono", text: call.provider || "" })),
    h("pre", { text: text(call.output) }),
  );
}

function section(title, lined, keyOf, view, extra = () => null) {
  const rows = [];
  for (const entry of lined.different || []) rows.push(h("div", { class: "compare-group" }, row(entry.key, entry.a, entry.b, view), extra(entry)));
  for (const entry of lined.only_a || []) rows.push(row(keyOf(entry), entry, undefined, view, { only: "a" }));
  for (const entry of lined.only_b || []) rows.push(row(keyOf(entry), undefined, entry, view, { only: "b" }));
  const total = rows.length;
  return h(
    "section",
    { class: "compare-section", dataset: { section: title.toLowerCase().replace(/\s+/g, "-") } },
    h("h3", {}, title, " ", h("span", { class: "hint", text: total ? `${total} differ${total === 1 ? "s" : ""}` : "the same" })),
    total ? rows : null,
  );
}

function pair(title, value) {
  if (!value) return null;
  return h("section", { class: "compare-section" }, h("h3", { text: title }), row(title.toLowerCase(), value.a, value.b, (v) => h("pre", { text: text(v) })));
}

function render(comparison) {
  const parts = [
    h("header", {}, h("h2", { text: "Two runs compared" }), comparison.same ? badge("same", "nothing below differs") : badge("different", "highlighted below")),
    h("div", { class: "legend compare-legend" }, h("span", {}, h("span", { class: "swatch differs" }), "both runs have it, differently"), h("span", {}, h("span", { class: "swatch only" }), "only one run has it")),
    h("div", { class: "compare-heads" }, h("div", { class: "compare-key" }), taskHead("a", comparison.a), taskHead("b", comparison.b)),
    pair("Status", comparison.status),
    pair("Prompt", comparison.prompt),
    pair("Error", comparison.error),
    section("Decisions", comparison.decisions || {}, (d) => ({ kind: d.kind, step: d.step }), decisionView),
    section("Steps", comparison.steps || {}, (s) => `step ${s.idx}`, stepView),
    section("Model outputs", comparison.model_outputs || {}, (c) => c.purpose, outputView, (entry) =>
      entry.request_same === false ? h("div", { class: "hint", text: "the two calls asked different things (their requests differ)" }) : null,
    ),
    section("Result", { different: (comparison.result || {}).different || [] }, (r) => r.key, (v) => h("pre", { text: text(v) })),
  ];
  if (comparison.same) parts.push(note("the two runs decided and answered the same"));
  return parts;
}

async function start() {
  document.title = `Troupe · compare ${shortId(first)} and ${shortId(second)}`;
  try {
    const comparison = await api(`/api/v1/tasks/${encodeURIComponent(first)}/compare/${encodeURIComponent(second)}`);
    fill($("compare"), render(comparison));
  } catch (error) {
    fill($("compare"), h("h2", { text: "These runs cannot be compared" }), errorBox(error), h("p", {}, h("a", { href: "/", text: "← all tasks" })));
  }
  markReady();
}

start();
