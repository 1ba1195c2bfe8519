// Troupe dashboard, one task: header, plan and decision tree, timeline, token stream per model call,
// memory reads, tool calls, sandbox runs, the result and the raw events. Loads the task, then its events
// without tokens page by page, renders once, then follows the task's WebSocket from the last seq. Tokens are
// read only for the model call being viewed. The open panel, the selected call and event are in the URL.

import {
  h, s, fill, api, badge, agentChip, note, errorBox, duration, count, usd, prob, clock, shortId, query, setQuery,
  LiveSocket, liveIndicator, markReady, pretty, secondsBetween, statusAfter, TERMINAL,
} from "./common.js";
import { barChart } from "./charts.js";
import { python, looksLikePython } from "./highlight.js";
import { describeToken, wireAlternatives } from "./alternatives.js";
import { pausePanel, forkControl, compareLink } from "./debug.js";
import { planGraph } from "./plan_graph.js";

const $ = (id) => document.getElementById(id);
const PANELS = ["decisions", "timeline", "tokens", "memory", "tools", "sandbox", "result", "events"];
const taskId = decodeURIComponent(location.pathname.split("/")[2] || "");
const pause = pausePanel($("pause"), taskId);

const state = {
  task: null,
  events: [], // every event but llm.token, in seq order
  maxSeq: 0, // the last seq seen, tokens included
  calls: null, // /llm-calls, read when the tokens panel first opens
  liveCalls: new Map(), // purpose -> {agent} of calls streaming now, not yet in `calls`
  view: null, // the token stream on screen: {purpose, lastSeq, node, count}
  rendered: new Set(), // panels whose content is current
  socket: null,
};

// ---- loading -------------------------------------------------------------------------------------------

async function loadEvents() {
  const events = [];
  let after = 0;
  for (;;) {
    let body;
    try {
      body = await api(`/api/v1/tasks/${taskId}/events?exclude=llm.token&limit=2000&after=${after}`);
    } catch (error) {
      if (error.status === 400 && events.length === 0) {
        // A server without paging: every event at once, tokens dropped here.
        const all = await api(`/api/v1/tasks/${taskId}/events`);
        return all.events.filter((event) => event.kind !== "llm.token");
      }
      throw error;
    }
    for (const event of body.events || []) events.push(event);
    if (body.next === null || body.next === undefined || !(body.events || []).length) return events;
    after = body.next;
  }
}

async function loadTask() {
  state.task = await api(`/api/v1/tasks/${taskId}`);
  renderHead();
}

let headTimer = null;
let headAgain = false; // asked again while a read was due: read once more after it
function refreshTaskSoon() {
  if (headTimer) {
    headAgain = true;
    return;
  }
  headTimer = setTimeout(async () => {
    headAgain = false;
    try {
      await loadTask();
      invalidate("decisions", "result");
    } catch (error) {
      console.warn(error);
    }
    headTimer = null;
    // An event that came while the task was read may have changed what it says (its steps at the end).
    if (headAgain) refreshTaskSoon();
  }, 300);
}

// ---- header --------------------------------------------------------------------------------------------

function renderHead() {
  const task = state.task;
  document.title = `Troupe · ${task.prompt.slice(0, 60)}`;
  const usage = task.usage || {};
  const links = task.links || {};
  const seconds = task.started_at ? secondsBetween(task.started_at, task.finished_at) : null;
  fill(
    $("head"),
    h("div", { class: "title" }, h("span", { class: "hint mono", text: `task ${task.id}` })),
    h("div", { class: "prompt", id: "prompt", text: task.prompt }),
    h(
      "div",
      { class: "facts" },
      h("span", {}, badge(task.status)),
      h("span", {}, "created ", h("b", { text: clock(task.created_at) })),
      h("span", { id: "fact-duration" }, "duration ", h("b", { text: duration(seconds) })),
      h("span", {}, "tokens ", h("b", { text: `${count(usage.prompt_tokens)} in · ${count(usage.completion_tokens)} out` })),
      h("span", {}, "model calls ", h("b", { text: count(usage.llm_calls) })),
      h("span", {}, "cost ", h("b", { text: usd(usage.cost_usd) })),
      h("span", {}, "trace ", h("span", { class: "mono", text: task.trace_id || "–" })),
      links.trace ? h("a", { href: links.trace, target: "_blank", rel: "noopener", text: "trace in Jaeger ↗" }) : null,
      links.logs ? h("a", { href: links.logs, target: "_blank", rel: "noopener", text: "logs in Grafana ↗" }) : null,
      compareLink(task),
    ),
    task.error ? h("div", { class: "error-box", text: task.error }) : null,
  );
  pause.update(task, state.events);
}

function tickDuration() {
  const task = state.task;
  if (!task || task.status !== "running" || !task.started_at) return;
  const node = $("fact-duration");
  if (node) fill(node, "duration ", h("b", { text: duration(secondsBetween(task.started_at, null)) }));
}

// ---- panels --------------------------------------------------------------------------------------------

function currentPanel() {
  const panel = query().get("panel");
  return PANELS.includes(panel) ? panel : "decisions";
}

function showPanel(name, { push = false } = {}) {
  if (push) setQuery({ panel: name === "decisions" ? null : name }, { push: true });
  for (const panel of PANELS) {
    const open = panel === name;
    $(`panel-${panel}`).hidden = !open;
    const tab = $(`tab-${panel}`);
    tab.setAttribute("aria-selected", String(open));
    tab.tabIndex = open ? 0 : -1;
  }
  return renderPanel(name);
}

async function renderPanel(name) {
  if (state.rendered.has(name)) return;
  state.rendered.add(name);
  const node = $(`panel-${name}`);
  try {
    const content = await RENDER[name]();
    fill(node, content);
  } catch (error) {
    fill(node, errorBox(error));
  }
}

/** Marks panels stale; the open one is drawn again at the next frame, the others when opened. */
function invalidate(...names) {
  for (const name of names) state.rendered.delete(name);
  scheduleRender();
}

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(() => {
    renderQueued = false;
    const open = currentPanel();
    if (!state.rendered.has(open)) renderPanel(open);
    updateCounts();
  }, 250);
}

function ofKind(kind) {
  return state.events.filter((event) => event.kind === kind);
}

function updateCounts() {
  const counts = {
    decisions: ofKind("decision.made").length,
    memory: ofKind("memory.read").length,
    tools: ofKind("tool.called").length,
    sandbox: sandboxRuns().length,
    events: state.events.length,
    tokens: state.calls ? state.calls.length : ofKind("llm.finished").length,
  };
  for (const [panel, value] of Object.entries(counts)) {
    const tab = $(`tab-${panel}`);
    let badgeNode = tab.querySelector(".count");
    if (!badgeNode) {
      badgeNode = h("span", { class: "count" });
      tab.append(badgeNode);
    }
    badgeNode.textContent = value ? String(value) : "";
  }
}

// ---- plan and decision tree ----------------------------------------------------------------------------

function renderDecisions() {
  const task = state.task;
  const steps = planSteps();
  if (!steps.length) return h("div", {}, treeRoot(task, []), note(TERMINAL.has(task.status) ? "the task ended without a plan" : "waiting for the plan…"));
  // Each event about a step goes under it: by its `step` field, or under the step whose agent last started.
  const byStep = new Map(steps.map((step) => [step.idx, []]));
  let lastStarted = null;
  let lastPaused = null; // a pause's step (its point's), where its resumption goes too
  const loose = [];
  for (const event of state.events) {
    const data = event.data || {};
    if (event.kind === "agent.started") lastStarted = data.step;
    if (event.kind === "task.paused") lastPaused = data.point && Number.isInteger(data.point.step) ? data.point.step : null;
    const wanted = ["decision.made", "agent.started", "agent.finished", "agent.restarted", "code.attempt", "qa.verdict", "qa.revision", "llm.fallback", "budget.exceeded", "task.paused", "task.resumed", "decision.overridden", "consensus.reached"];
    if (!wanted.includes(event.kind)) continue;
    const paused = (event.kind === "task.paused" || event.kind === "task.resumed") && lastPaused !== null;
    const step = Number.isInteger(data.step) ? data.step : paused ? lastPaused : lastStarted;
    if (byStep.has(step)) byStep.get(step).push(event);
    else loose.push(event);
  }
  const end = state.events.find((event) => TERMINAL.has(statusAfter(event.kind)));
  const children = steps.map((step) => h("li", {}, stepCard(step), branch(byStep.get(step.idx))));
  for (const event of loose) children.push(h("li", {}, eventCard(event)));
  if (end) children.push(h("li", {}, endCard(end)));
  return h("div", {}, planGraph(steps, state.events), h("ul", { class: "tree", "aria-label": "decision tree" }, h("li", {}, treeRoot(task, steps), h("ul", {}, children))));
}

function planSteps() {
  const rows = state.task.steps || [];
  if (rows.length) return rows;
  const plan = ofKind("plan.created").pop();
  if (!plan) return [];
  // Before the steps are stored: the plan as announced (a plan announced before graphs ran in order).
  const after = plan.data.depends_on || [];
  return (plan.data.steps || []).map((instruction, i) => ({ idx: i + 1, instruction, agent: null, status: "pending", attempts: 0, depends_on: after[i] || (i ? [i] : []) }));
}

function treeRoot(task, steps) {
  return h(
    "div",
    { class: "node-card root" },
    h("div", { class: "title" }, h("span", { class: "kind", text: "plan" }), h("b", { text: `${steps.length} step${steps.length === 1 ? "" : "s"}` }), badge(task.status)),
    steps.length ? h("ol", { class: "body", style: { margin: "4px 0 0", paddingLeft: "20px" } }, steps.map((step) => h("li", { text: step.instruction }))) : null,
  );
}

function stepCard(step) {
  return h(
    "div",
    { class: `node-card step ${step.status === "failed" ? "failed" : ""}`, dataset: { step: step.idx } },
    h(
      "div",
      { class: "title" },
      h("span", { class: "kind", text: `step ${step.idx}` }),
      step.agent ? agentChip(step.agent) : null,
      badge(step.status),
      h("span", { class: "hint", text: `${step.attempts} attempt${step.attempts === 1 ? "" : "s"}` }),
    ),
    h("div", { class: "body", text: step.instruction }),
    TERMINAL.has(state.task.status) ? forkControl(taskId, step.idx, { agent: step.agent }) : null,
  );
}

function branch(events) {
  if (!events || !events.length) return null;
  return h("ul", {}, events.map((event) => h("li", {}, eventCard(event))));
}

function eventCard(event) {
  const data = event.data || {};
  switch (event.kind) {
    case "decision.made":
      return decisionCard(event);
    case "agent.started":
      return h("div", { class: "node-card" }, h("div", { class: "title" }, h("span", { class: "kind", text: "started" }), agentChip(event.agent), h("span", { class: "hint", text: `${data.kind || "work"} · attempt ${data.attempt ?? 1}${data.revision > 1 ? ` · revision ${data.revision}` : ""} · ${clock(event.at)}` })));
    case "agent.finished":
      return h(
        "div",
        { class: "node-card passed" },
        h("div", { class: "title" }, h("span", { class: "kind", text: "finished" }), agentChip(event.agent), h("span", { class: "hint", text: duration(data.duration_seconds) })),
        data.output ? h("details", {}, h("summary", { text: "output" }), outputView(data.output)) : null,
      );
    case "agent.restarted":
      return h("div", { class: "node-card failed" }, h("div", { class: "title" }, h("span", { class: "kind", text: "restarted" }), agentChip(event.agent), badge("failed", data.reason), h("span", { class: "hint", text: `${data.reason}: ${data.detail || ""}` })));
    case "code.attempt":
      return attemptCard(event);
    case "consensus.reached":
      return consensusCard(event);
    case "qa.verdict":
      return h(
        "div",
        { class: `node-card ${data.verdict === "pass" ? "passed" : "failed"}`, dataset: { verdict: data.verdict } },
        h("div", { class: "title" }, h("span", { class: "kind", text: "QA verdict" }), agentChip("qa"), badge(data.verdict), data.round ? h("span", { class: "hint", text: `round ${data.round}` }) : null),
        data.feedback ? h("div", { class: "reason", text: data.feedback }) : null,
      );
    case "task.paused":
      return pauseCard(event);
    case "task.resumed":
      return h("div", { class: "node-card" }, h("div", { class: "title" }, h("span", { class: "kind", text: "resumed" }), data.action ? badge(data.action === "override" ? "overridden" : "running", data.reason) : null, h("span", { class: "hint", text: `${data.action || data.reason || ""}${data.override ? `: ${Object.entries(data.override).map(([key, value]) => `${key} ${shortText(value, 80)}`).join(", ")}` : ""} · by a person · ${clock(event.at)}` })));
    case "decision.overridden":
      return h(
        "div",
        { class: "node-card overridden", dataset: { overridden: data.what || "decision" } },
        h("div", { class: "title" }, h("span", { class: "kind", text: `${data.what || "decision"} overridden` }), badge("overridden", "a person changed it"), data.kind ? h("span", { class: "mono", text: data.kind }) : null),
        h("div", { class: "override-change" }, h("span", { class: "before", text: shortText(data.before, 160) }), " → ", h("b", { class: "after", text: shortText(data.after, 160) })),
      );
    case "qa.revision":
      return h(
        "div",
        { class: "node-card failed" },
        h("div", { class: "title" }, h("span", { class: "kind", text: "QA sends it back" }), badge(data.outcome === "task_failed" ? "failed" : "revising", data.outcome), h("span", { class: "hint", text: `round ${data.round} of ${data.of}` })),
        h("div", { class: "reason", text: data.feedback || "" }),
      );
    default:
      return h("div", { class: "node-card" }, h("div", { class: "title" }, h("span", { class: "kind", text: event.kind }), event.agent ? agentChip(event.agent) : null), h("div", { class: "reason", text: summarize(event) }));
  }
}

function pauseCard(event) {
  const data = event.data || {};
  const point = data.point || {};
  const where = data.reason === "cloud_fallback" ? "before a cloud fallback" : `before ${point.on || "?"}${point.kind ? ` ${point.kind}` : ""}${point.tool ? ` ${point.tool}` : ""}${point.purpose ? ` ${point.purpose}` : ""}`;
  return h("div", { class: "node-card paused-card" }, h("div", { class: "title" }, h("span", { class: "kind", text: "paused" }), badge("paused", data.reason), h("span", { class: "hint", text: `${where} · ${data.reason || ""} · ${clock(event.at)}` })));
}

function decisionCard(event) {
  const data = event.data || {};
  const change = data.overridden ? data.override || {} : null;
  const scored = data.scored !== false;
  const options = data.options || [];
  const grid = h("div", { class: `options ${scored ? "" : "unscored"}`, role: "list" });
  for (const option of options) {
    const chosen = option.name === data.chosen;
    const p = Number(option.probability);
    const bar = h("div", { class: "bar", title: option.raw_probability !== undefined ? `raw ${prob(option.raw_probability)}` : "" }, h("span", { class: chosen ? "chosen" : "", style: { width: `${Math.max(0, Math.min(1, p || 0)) * 100}%` } }));
    if (Number.isFinite(option.raw_probability)) bar.append(h("i", { style: { left: `${Math.min(1, option.raw_probability) * 100}%` }, title: `raw ${prob(option.raw_probability)}` }));
    grid.append(
      h("div", { class: `name ${chosen ? "chosen" : ""}`, role: "listitem" }, chosen ? "✓ " : "", option.name, change && option.name === change.before ? h("span", { class: "hint", text: " (model's choice)" }) : null),
      bar,
      h("div", { class: "value option-p", text: scored ? `${prob(p)}${Number.isFinite(option.raw_probability) ? ` (raw ${prob(option.raw_probability)})` : ""}` : "unscored" }),
    );
  }
  return h(
    "div",
    { class: `node-card decision ${change ? "overridden" : ""}`, dataset: { kind: data.kind, chosen: data.chosen, ...(change ? { overridden: "true" } : {}) } },
    h(
      "div",
      { class: "title" },
      h("span", { class: "kind", text: "decision" }),
      h("b", { text: `${data.kind === "assign_agent" ? "assign" : data.kind === "vote" ? `vote ${data.voter}` : data.kind} → ${data.chosen}` }),
      data.lens ? h("span", { class: "hint", text: data.lens }) : null,
      scored ? h("span", { class: "hint", text: `confidence ${prob(data.confidence)}` }) : badge("unscored", "the provider gave no probabilities"),
      data.calibration ? h("span", { class: "hint", text: `calibration ${typeof data.calibration === "string" ? data.calibration : data.calibration.method || "on"}` }) : null,
      Number.isFinite(data.tokens) ? h("span", { class: "hint", text: `${data.tokens} tokens` }) : null,
      change ? badge("overridden", `by ${change.by || "a person"}`) : null,
    ),
    change ? h("div", { class: "override-change" }, "overridden by ", h("b", { text: change.by || "a person" }), ": the model chose ", h("span", { class: "before", text: String(change.before ?? "?") }), ", taken as ", h("b", { class: "after", text: String(change.after ?? data.chosen) })) : null,
    grid,
    data.reasoning ? h("div", { class: "reason", text: data.reasoning }) : null,
    data.kind === "assign_agent" && Number.isInteger(data.step) && TERMINAL.has(state.task.status) ? forkControl(taskId, data.step, { agent: data.chosen, options: options.map((option) => option.name) }) : null,
  );
}

function attemptCard(event) {
  const data = event.data || {};
  const verdict = data.passed ? "passed" : data.vacuous ? "vacuous" : data.off_task ? "off_task" : "failed";
  return h(
    "div",
    { class: `node-card attempt ${data.passed ? "passed" : "failed"}`, dataset: { attempt: data.attempt } },
    h(
      "div",
      { class: "title" },
      h("span", { class: "kind", text: `code attempt ${data.attempt} of ${data.of}` }),
      badge(verdict, { passed: "the test passed", vacuous: "the test cannot fail", off_task: "passed, but the code is not for the task", failed: "the test failed" }[verdict]),
      h("span", { class: "hint", text: `run ${data.run_outcome || "–"} · wall ${duration(data.wall_seconds)} · cpu ${duration(data.cpu_seconds)} · peak ${bytes(data.peak_rss_bytes)}` }),
      Number.isFinite(data.relevance) ? h("span", { class: "hint", text: `relevance ${prob(data.relevance)}` }) : null,
    ),
    data.failure ? h("details", {}, h("summary", { text: "what failed" }), h("pre", { text: data.failure })) : null,
  );
}

function endCard(event) {
  const status = statusAfter(event.kind);
  return h(
    "div",
    { class: `node-card ${status === "completed" ? "passed" : "failed"}` },
    h("div", { class: "title" }, h("span", { class: "kind", text: "end" }), badge(status), h("span", { class: "hint", text: clock(event.at) })),
    event.data && event.data.error ? h("div", { class: "reason", text: event.data.error }) : null,
    event.data && event.data.stopped ? h("div", { class: "reason", dataset: { cancelled: "" }, text: cancelSummary(event.data) }) : null,
  );
}

/** The vote of several QA reviewers: each voter's verdict and probability of pass, the outcome, who dissented. */
function consensusCard(event) {
  const data = event.data || {};
  const dissent = new Set((data.dissent || []).map((d) => d.voter));
  const rows = h("div", { class: "options", role: "list" });
  for (const vote of data.votes || []) {
    const p = Number(vote.p_pass);
    rows.append(
      h("div", { class: `name ${dissent.has(vote.voter) ? "dissent" : "chosen"}`, role: "listitem", title: vote.lens, dataset: { voter: vote.voter, vote: vote.verdict } }, `voter ${vote.voter} `, badge(vote.verdict === "pass" ? "passed" : "failed", vote.verdict)),
      h("div", { class: "bar", title: "probability of pass" }, h("span", { class: vote.verdict === data.outcome ? "chosen" : "", style: { width: `${Number.isFinite(p) ? Math.max(0, Math.min(1, p)) * 100 : 0}%` } })),
      h("div", { class: "value", text: Number.isFinite(p) ? `p(pass) ${prob(p)}` : "unscored" }),
    );
  }
  const said = (data.dissent || []).map((d) => h("div", { class: "reason" }, h("b", { text: `voter ${d.voter} dissents (${d.verdict}): ` }), d.feedback || "no feedback"));
  return h(
    "div",
    { class: `node-card consensus ${data.outcome === "pass" ? "passed" : "failed"}`, dataset: { outcome: data.outcome, reached: String(data.reached) } },
    h(
      "div",
      { class: "title" },
      h("span", { class: "kind", text: "consensus" }),
      h("b", { text: `${data.rule} → ${data.outcome}` }),
      h("span", { class: "hint", text: `${Math.round((data.agreement || 0) * 100)}% agreeing · ${data.voters} voters${data.reached ? "" : " · not reached"}${Number.isFinite(data.weight_of_pass) ? ` · mean p(pass) ${prob(data.weight_of_pass)}` : ""}` }),
    ),
    rows,
    said,
  );
}

/** What a cancellation stopped and kept, in words. */
function cancelSummary(data) {
  const list = (steps) => (steps && steps.length ? `step${steps.length === 1 ? "" : "s"} ${steps.join(", ")}` : "nothing");
  const runs = data.stopped.sandbox_runs || 0;
  return `stopped ${list(data.stopped.steps)}${runs ? ` and ${runs} sandbox run${runs === 1 ? "" : "s"} (killed at once)` : ""}; kept ${list(data.kept && data.kept.steps)}${data.not_started && data.not_started.length ? `; never started ${list(data.not_started)}` : ""}`;
}

function bytes(n) {
  if (!Number.isFinite(n) || n <= 0) return "–";
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function summarize(event) {
  const text = JSON.stringify(event.data);
  return text.length > 240 ? `${text.slice(0, 240)}…` : text;
}

// ---- timeline ------------------------------------------------------------------------------------------

function timelineItems() {
  const items = [];
  const open = new Map(); // "agent/step" -> started event
  const endAt = state.task.finished_at ? Date.parse(state.task.finished_at) : Date.now();
  let pausedAt = null; // the pause not yet resumed: {at, what}
  for (const event of state.events) {
    const data = event.data || {};
    const at = Date.parse(event.at);
    const key = `${event.agent}/${data.step}`;
    if (event.kind === "task.paused") {
      const point = data.point || {};
      pausedAt = { at, what: data.reason === "cloud_fallback" ? "cloud fallback" : `${point.on || "?"}${point.kind ? ` ${point.kind}` : point.tool ? ` ${point.tool}` : ""}` };
    } else if (event.kind === "task.resumed" && pausedAt) {
      const override = data.override ? `: ${Object.values(data.override).map((value) => shortText(value, 40)).join(", ")}` : "";
      items.push({ lane: "debug · pauses", agent: "debug", start: pausedAt.at, end: at, label: `paused, ${data.action || "resumed"}`, ok: true, detail: `before ${pausedAt.what}; ${data.action || data.reason}${override}` });
      pausedAt = null;
    } else if (event.kind === "agent.started") open.set(key, event);
    else if (event.kind === "agent.finished" || event.kind === "agent.restarted") {
      const started = open.get(key) || [...open.values()].reverse().find((e) => e.agent === event.agent);
      if (started) {
        open.delete(`${started.agent}/${started.data.step}`);
        items.push({ lane: `${event.agent} · steps`, agent: event.agent, start: Date.parse(started.at), end: at, label: `step ${started.data.step} ${started.data.kind || ""}`, ok: event.kind === "agent.finished", detail: started.data.instruction });
      }
    } else if (event.kind === "llm.finished") {
      const seconds = Number(data.duration_seconds) || 0;
      items.push({ lane: `${event.agent} · model`, agent: event.agent, start: at - seconds * 1000, end: at, label: data.purpose, ok: true, detail: `${data.provider} ${data.model} · ${data.input_tokens} in · ${data.output_tokens} out` });
    } else if (event.kind === "tool.called") {
      const seconds = Number(data.duration_seconds) || 0;
      const sandbox = data.tool === "run_code";
      items.push({ lane: sandbox ? "sandbox" : `${event.agent} · tools`, agent: sandbox ? "sandbox" : event.agent, start: at - seconds * 1000, end: at, label: data.tool, ok: data.outcome === "ok", detail: `${data.outcome}` });
    }
  }
  if (pausedAt) items.push({ lane: "debug · pauses", agent: "debug", start: pausedAt.at, end: endAt, label: "paused", ok: true, running: !TERMINAL.has(state.task.status), detail: `before ${pausedAt.what}` });
  for (const started of open.values()) {
    items.push({ lane: `${started.agent} · steps`, agent: started.agent, start: Date.parse(started.at), end: endAt, label: `step ${started.data.step} ${started.data.kind || ""}`, ok: !TERMINAL.has(state.task.status), running: true, detail: started.data.instruction });
  }
  return items;
}

const LANE_ORDER = ["director", "research", "code", "qa", "sandbox", "debug"];
const COLORS = { director: "#7c4dcc", research: "#0f8b8d", code: "#2f6fd6", qa: "#d9822b", sandbox: "#4b5563", debug: "#b86e00" };

function renderTimeline() {
  const items = timelineItems();
  if (!items.length) return note("nothing has run yet");
  const origin = Math.min(Date.parse(state.task.created_at) || Infinity, ...items.map((item) => item.start));
  const last = Math.max(...items.map((item) => item.end), state.task.finished_at ? Date.parse(state.task.finished_at) : 0);
  const span = Math.max(1, last - origin);
  // Lanes in agent order; inside a lane, items that overlap go on separate rows.
  const lanes = new Map();
  for (const item of items.sort((a, b) => a.start - b.start)) {
    if (!lanes.has(item.lane)) lanes.set(item.lane, []);
    const rows = lanes.get(item.lane);
    let row = rows.find((ends) => ends.end <= item.start);
    if (!row) {
      row = { end: 0, items: [] };
      rows.push(row);
    }
    row.end = item.end;
    row.items.push(item);
  }
  const names = [...lanes.keys()].sort((a, b) => LANE_ORDER.indexOf(a.split(" ")[0]) - LANE_ORDER.indexOf(b.split(" ")[0]) || a.localeCompare(b));
  const width = Math.max(700, $("main").clientWidth - 60);
  const labelW = 130;
  const rowH = 22;
  const plotW = width - labelW - 20;
  const x = (t) => labelW + ((t - origin) / span) * plotW;
  let y = 24;
  const body = s("g", {});
  for (const name of names) {
    const rows = lanes.get(name);
    const laneH = rows.length * rowH + 6;
    body.append(s("rect", { class: "lane-bg", x: 0, y, width, height: laneH }), s("text", { class: "lane-label", x: 6, y: y + 16, text: name }));
    rows.forEach((row, r) => {
      for (const item of row.items) {
        const left = x(item.start);
        const w = Math.max(2, x(item.end) - left);
        const top = y + 3 + r * rowH;
        const fillColor = item.ok ? COLORS[item.agent] || "#6b7280" : "#c23a32";
        const text = `${item.label} · ${duration((item.end - item.start) / 1000)}${item.running ? " (running)" : ""}\n${item.detail || ""}`;
        body.append(
          s("rect", { class: "item", x: left, y: top, width: w, height: rowH - 4, fill: fillColor, opacity: item.running ? 0.6 : 0.92, tabindex: 0, "aria-label": text }, s("title", { text })),
        );
        if (w > 60) body.append(s("text", { class: "item-label", x: left + 4, y: top + 13, text: fitText(`${item.label} ${duration((item.end - item.start) / 1000)}`, w - 8) }));
      }
    });
    y += laneH + 2;
  }
  const svg = s("svg", { viewBox: `0 0 ${width} ${y + 4}`, width, height: y + 4, role: "img", "aria-label": "timeline of steps, model calls, tool calls and sandbox runs" });
  const ticks = s("g", {});
  const step = niceStep(span / 1000 / 8);
  for (let t = 0; t <= span / 1000 + 1e-9; t += step) {
    const px = x(origin + t * 1000);
    ticks.append(s("line", { class: "tick", x1: px, x2: px, y1: 18, y2: y }), s("text", { x: px, y: 12, "text-anchor": "middle", text: duration(t) }));
  }
  svg.append(ticks, body);
  return h(
    "div",
    { class: "gantt" },
    h("div", { class: "hint", text: `${items.length} spans over ${duration(span / 1000)} · hover or focus a bar for details · red: failed or restarted` }),
    svg,
    h(
      "details",
      {},
      h("summary", { text: "as a table" }),
      h(
        "table",
        {},
        h("thead", {}, h("tr", {}, h("th", { text: "lane" }), h("th", { text: "what" }), h("th", { class: "num", text: "starts at" }), h("th", { class: "num", text: "duration" }), h("th", { text: "detail" }))),
        h("tbody", {}, items.map((item) => h("tr", {}, h("td", { text: item.lane }), h("td", { text: item.label }), h("td", { class: "num", text: duration((item.start - origin) / 1000) }), h("td", { class: "num", text: duration((item.end - item.start) / 1000) }), h("td", { class: "hint", text: item.detail || "" })))),
      ),
    ),
  );
}

function niceStep(raw) {
  if (!(raw > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((f) => f * power).find((f) => f >= raw);
}

function fitText(text, pixels) {
  const chars = Math.floor(pixels / 6.2);
  return text.length > chars ? `${text.slice(0, Math.max(1, chars - 1))}…` : text;
}

// ---- token stream --------------------------------------------------------------------------------------

async function loadCalls() {
  try {
    // Without their tokens: the panel reads one call's tokens at a time (`loadTokens`).
    state.calls = (await api(`/api/v1/tasks/${taskId}/llm-calls?tokens=false`)).calls || [];
  } catch (error) {
    if (error.status !== 404 || error.code === "task_not_found") throw error;
    // A server without the route: the calls as llm.finished events tell them.
    state.calls = ofKind("llm.finished").map((event) => ({ ...event.data, agent: event.agent, created_at: event.at }));
  }
  for (const call of state.calls) state.liveCalls.delete(call.purpose);
}

async function renderTokens() {
  if (!state.calls) await loadCalls();
  const calls = [...state.calls, ...[...state.liveCalls.entries()].map(([purpose, call]) => ({ purpose, agent: call.agent, live: true }))];
  if (!calls.length) return note(TERMINAL.has(state.task.status) ? "this task made no model call" : "no model call yet");
  // The call in the URL; else, while the task runs, the latest (it may be streaming); else the first.
  const running = !TERMINAL.has(state.task.status);
  // Without a call in the URL: while the task runs the view follows the newest call; drawn again after
  // the end, it stays on the call it showed.
  const wanted = query().get("call") || (!running && state.view && state.view.purpose);
  const selected = calls.find((call) => call.purpose === wanted) || (running ? calls[calls.length - 1] : calls[0]);
  const list = h(
    "div",
    { class: "call-list", role: "group", "aria-label": "model calls" },
    calls.map((call) =>
      h(
        "button",
        {
          type: "button",
          "aria-pressed": String(call === selected),
          dataset: { purpose: call.purpose },
          onclick: () => {
            setQuery({ call: call.purpose }, { push: true });
            invalidate("tokens");
          },
        },
        h("span", { class: "purpose", text: call.purpose }),
        h("span", { class: "meta" }, agentChip(call.agent), call.live ? "streaming…" : `${count(call.output_tokens)} tokens · ${duration(call.duration_seconds)}`),
      ),
    ),
  );
  const stream = h("div", { class: "stream", id: "stream", "aria-live": "off", tabindex: 0, "aria-label": "tokens: the arrow keys move from token to token" }, h("span", { class: "loading", text: "loading tokens…" }));
  wireAlternatives(stream);
  const meta = h(
    "div",
    { class: "call-meta" },
    h("span", {}, "agent ", agentChip(selected.agent)),
    selected.provider ? h("span", {}, "model ", h("b", { text: `${selected.provider} ${selected.model}` })) : null,
    Number.isFinite(selected.input_tokens) ? h("span", {}, "tokens ", h("b", { text: `${count(selected.input_tokens)} in · ${count(selected.output_tokens)} out` })) : null,
    Number.isFinite(selected.duration_seconds) ? h("span", {}, "took ", h("b", { text: duration(selected.duration_seconds) })) : null,
    Number.isFinite(selected.cost_usd) ? h("span", {}, "cost ", h("b", { text: usd(selected.cost_usd) })) : null,
    h("span", { id: "token-count" }),
  );
  const legend = h(
    "div",
    { class: "legend" },
    "token probability (hover or focus a token for its alternatives):",
    [["p0", "< 0.1"], ["p1", "0.1–0.3"], ["p2", "0.3–0.6"], ["p3", "0.6–0.9"], ["p4", "≥ 0.9"], ["pu", "unknown"]].map(([cls, label]) => h("span", {}, h("span", { class: `swatch ${cls}`, style: { border: "1px solid #d0d5dc" } }), label)),
  );
  const extra = h(
    "div",
    {},
    selected.choice ? h("details", {}, h("summary", { text: "choice (scored options)" }), h("pre", { text: pretty(selected.choice) })) : null,
    selected.prompt ? h("details", {}, h("summary", { text: "prompt (messages)" }), promptView(selected.prompt)) : null,
    selected.output ? h("details", {}, h("summary", { text: "output as stored" }), h("pre", { text: selected.output })) : null,
  );
  const view = { purpose: selected.purpose, lastSeq: 0, node: stream, count: 0, loaded: false, pending: [] };
  state.view = view;
  loadTokens(view, selected);
  return h("div", { class: "tokens-layout" }, list, h("div", {}, meta, legend, stream, extra));
}

function promptView(prompt) {
  const messages = typeof prompt === "string" ? safeParse(prompt) : prompt;
  if (!Array.isArray(messages)) return h("pre", { text: pretty(prompt) });
  return h("div", { class: "cards" }, messages.map((message) => h("div", {}, h("div", { class: "hint", text: message.role || "?" }), h("pre", { text: message.content ?? pretty(message) }))));
}

function safeParse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

async function loadTokens(view, call) {
  let body;
  try {
    body = await api(`/api/v1/tasks/${taskId}/llm-calls/${encodeURIComponent(view.purpose)}/tokens`);
  } catch (error) {
    if (state.view !== view) return;
    if (error.status !== 404) {
      fill(view.node, errorBox(error));
      return;
    }
    // A server without the tokens route: the stored output unshaded, then whatever streams live.
    view.loaded = true;
    fill(view.node, call.output ? h("span", { class: "pu", text: call.output }) : note("waiting for tokens…"));
    appendTokens(view, view.pending);
    view.pending = [];
    $("token-count").textContent = "this server does not serve stored tokens";
    return;
  }
  if (state.view !== view) return;
  view.node.replaceChildren();
  view.loaded = true;
  // Tokens that arrived over the socket while the list was read follow it (those already read are skipped).
  appendTokens(view, [...(body.tokens || []), ...view.pending]);
  view.pending = [];
  if (!view.count) fill(view.node, note(body.finished ? "no tokens were streamed" : "waiting for tokens…"));
}

function tokenClass(p) {
  if (!Number.isFinite(p)) return "pu";
  if (p < 0.1) return "p0";
  if (p < 0.3) return "p1";
  if (p < 0.6) return "p2";
  if (p < 0.9) return "p3";
  return "p4";
}

/** A token's accessible label: its probability and, where the provider gave them, the five likeliest tokens there. */
function tokenTitle(p, top) {
  const own = Number.isFinite(p) ? `p = ${p.toFixed(3)}` : "p unknown";
  if (!Array.isArray(top) || !top.length) return own;
  const alternatives = top.map((alternative) => `${JSON.stringify(alternative.text)} ${Number(alternative.p).toFixed(3)}`);
  return `${own}\nalternatives: ${alternatives.join(", ")}`;
}

/** Appends tokens in one pass (a fragment), skipping those already shown. */
function appendTokens(view, tokens) {
  const fragment = document.createDocumentFragment();
  for (const token of tokens) {
    if (token.seq <= view.lastSeq) continue;
    view.lastSeq = token.seq;
    view.count += 1;
    const p = token.p;
    const span = h("span", { class: tokenClass(p), "aria-label": tokenTitle(p, token.top), text: token.text });
    describeToken(span, token);
    fragment.append(span);
  }
  if (view.node.querySelector(".note, .loading")) view.node.replaceChildren();
  const atBottom = view.node.scrollTop + view.node.clientHeight >= view.node.scrollHeight - 20;
  view.node.append(fragment);
  if (atBottom) view.node.scrollTop = view.node.scrollHeight;
  const counter = $("token-count");
  if (counter) counter.textContent = `${count(view.count)} tokens shown`;
}

// ---- memory, tools, sandbox ----------------------------------------------------------------------------

function renderMemory() {
  const reads = ofKind("memory.read");
  if (!reads.length) return note("no memory was searched");
  return h(
    "div",
    { class: "cards" },
    reads.map((event) => {
      const data = event.data || {};
      const hits = data.hits || [];
      return h(
        "div",
        { class: "card" },
        h(
          "div",
          { class: "title" },
          agentChip(event.agent),
          h("b", { text: data.purpose || "search" }),
          data.step !== undefined && data.step !== null ? h("span", { class: "hint", text: `step ${data.step}` }) : null,
          h("span", { class: "hint", text: `${data.used ?? 0} of ${hits.length} used · min score ${prob(data.min_score)} · k ${data.k ?? "–"} · ${data.backend || ""}` }),
          data.error ? badge("failed", data.error) : null,
        ),
        h("div", { class: "query" }, "“", data.query || "", "”"),
        data.error ? h("div", { class: "error-box", text: data.error }) : null,
        hits.length
          ? h(
              "table",
              { style: { marginTop: "6px" } },
              h("thead", {}, h("tr", {}, h("th", { text: "score" }), h("th", { text: "used" }), h("th", { text: "kind" }), h("th", { text: "from" }), h("th", { text: "content" }))),
              h(
                "tbody",
                {},
                hits.map((hit) =>
                  h(
                    "tr",
                    { class: hit.used ? "used" : "unused" },
                    h("td", { style: { whiteSpace: "nowrap", width: "140px" } }, h("span", { class: "score-bar" }, h("span", { style: { width: `${Math.max(0, Math.min(1, hit.score || 0)) * 100}%` } })), prob(hit.score)),
                    h("td", { text: hit.used ? "✓ used" : "–" }),
                    h("td", { text: hit.kind || "" }),
                    h("td", {}, hit.task_id ? h("a", { href: `/tasks/${hit.task_id}`, class: "mono", text: shortId(hit.task_id) }) : "", hit.agent ? [" ", agentChip(hit.agent)] : null),
                    h("td", { style: { width: "55%" }, text: hit.content || "" }),
                  ),
                ),
              ),
            )
          : note("no hits"),
      );
    }),
  );
}

function renderTools() {
  const calls = ofKind("tool.called");
  if (!calls.length) return note("no tool was called");
  return h(
    "table",
    { class: "tools" },
    h("thead", {}, h("tr", {}, h("th", { text: "at" }), h("th", { text: "agent" }), h("th", { text: "tool" }), h("th", { text: "outcome" }), h("th", { class: "num", text: "took" }), h("th", { text: "arguments" }), h("th", { text: "result" }))),
    h(
      "tbody",
      {},
      calls.map((event) => {
        const data = event.data || {};
        return h(
          "tr",
          {},
          h("td", { class: "num", text: clock(event.at) }),
          h("td", {}, agentChip(event.agent)),
          h("td", { class: "mono", text: data.tool }),
          h("td", {}, badge(data.outcome === "ok" ? "ok" : "failed", data.outcome)),
          h("td", { class: "num", text: duration(data.duration_seconds) }),
          h("td", { style: { maxWidth: "380px" } }, argumentsView(data.arguments)),
          h("td", { style: { maxWidth: "460px" } }, data.error ? h("div", { class: "error-box", text: data.error }) : h("details", {}, h("summary", { text: shortText(data.result, 60) }), h("pre", { text: pretty(data.result ?? "") }))),
        );
      }),
    ),
  );
}

function argumentsView(text) {
  const value = safeParse(text);
  if (value && typeof value.code === "string" && value.language === "python") return python(value.code);
  if (value && typeof value.content === "string" && /\.py$/.test(value.name || value.path || value.file || "")) {
    return h("div", {}, h("div", { class: "hint mono", text: value.name || value.path || value.file }), python(value.content));
  }
  return h("pre", { text: pretty(text ?? "") });
}

function shortText(value, chars) {
  const text = typeof value === "string" ? value : JSON.stringify(value ?? "");
  return text.length > chars ? `${text.slice(0, chars)}…` : text;
}

/** Sandbox runs: every run_code call with its report (read leniently: the stored result may be cut). */
function sandboxRuns() {
  return ofKind("tool.called")
    .filter((event) => event.data && event.data.tool === "run_code")
    .map((event) => {
      const text = typeof event.data.result === "string" ? event.data.result : JSON.stringify(event.data.result || {});
      const report = safeParse(text);
      const field = (name) => {
        if (report && typeof report === "object" && name in report) return report[name];
        const match = new RegExp(`"${name}":\\s*("(?:[^"\\\\]|\\\\.)*"|-?[\\d.eE+-]+|null|true|false)`).exec(text);
        return match ? safeParse(match[1]) : undefined;
      };
      return { event, outcome: field("outcome"), exit: field("exit_code"), wall: field("wall_seconds"), cpu: field("cpu_seconds"), peak: field("peak_rss_bytes"), stdout: field("stdout"), stderr: field("stderr"), violations: field("violations") || [], truncated: typeof report !== "object" };
    });
}

function renderSandbox() {
  const runs = sandboxRuns();
  const violations = ofKind("sandbox.violation");
  if (!runs.length && !violations.length) return note("nothing ran in the sandbox");
  return h(
    "div",
    { class: "cards" },
    runs.map(({ event, outcome, exit, wall, cpu, peak, stdout, stderr, violations: found, truncated }) =>
      h(
        "div",
        { class: "card sandbox-run" },
        h("div", { class: "title" }, agentChip(event.agent), h("b", { text: "run_code" }), badge(outcome || event.data.outcome || "?"), h("span", { class: "hint", text: clock(event.at) })),
        h(
          "dl",
          { class: "kv" },
          h("dt", { text: "exit code" }), h("dd", { text: exit ?? "–" }),
          h("dt", { text: "wall time" }), h("dd", { text: duration(wall) }),
          h("dt", { text: "CPU time" }), h("dd", { text: duration(cpu) }),
          h("dt", { text: "peak memory" }), h("dd", { text: bytes(peak) }),
          h("dt", { text: "violations" }), h("dd", { text: Array.isArray(found) && found.length ? found.map((v) => `${v.kind}: ${v.detail}`).join("; ") : "none" }),
        ),
        stdout ? h("details", {}, h("summary", { text: "stdout" }), h("pre", { text: stdout })) : null,
        stderr ? h("details", { open: outcome && outcome !== "ok" }, h("summary", { text: "stderr" }), h("pre", { text: stderr })) : null,
        truncated ? h("div", { class: "hint", text: "the stored report was shortened; fields read from what is left" }) : null,
        event.data.error ? h("div", { class: "error-box", text: event.data.error }) : null,
      ),
    ),
    violations.length
      ? h("div", { class: "card" }, h("div", { class: "title" }, h("b", { text: "contained by the sandbox" })), h("ul", {}, violations.map((event) => h("li", {}, badge("violation"), ` ${event.data.kind}: ${event.data.detail} (${event.data.outcome})`))))
      : null,
  );
}

// ---- result --------------------------------------------------------------------------------------------

function renderResult() {
  const task = state.task;
  if (!TERMINAL.has(task.status)) return note(`the task is ${task.status}; its result comes at the end`);
  if (task.status !== "completed") return h("div", {}, h("div", { class: "error-box", text: task.error || `the task ${task.status}` }));
  const result = task.result || {};
  const sections = [];
  if (result.answer !== undefined && result.answer !== null) sections.push(section("Answer", outputView(result.answer)));
  if (result.verdict) sections.push(section("QA verdict", h("div", {}, badge(result.verdict.verdict), " ", result.verdict.feedback || "")));
  for (const found of result.tables || []) sections.push(section(`Table from step ${found.step}`, richTable(found.table)));
  const steps = (result.steps || []).filter((step) => step.output && step.output !== result.answer);
  for (const step of steps) sections.push(section(`Step ${step.idx} (${step.agent}): ${step.instruction}`, outputView(step.output)));
  if ((result.tests || []).length) {
    sections.push(
      section(
        "Tests",
        h(
          "div",
          { class: "cards" },
          result.tests.map((test) => h("div", {}, h("div", { class: "title" }, badge(test.passed ? "passed" : test.vacuous ? "vacuous" : "failed"), ` attempt ${test.attempt} of ${test.of} · run ${test.run_outcome}`), test.failure ? h("pre", { text: test.failure }) : null)),
        ),
      ),
    );
  }
  if (result.model) sections.push(section("Model", h("span", { class: "mono", text: `${result.provider || ""} ${result.model}` })));
  sections.push(h("details", {}, h("summary", { text: "the result as JSON" }), h("pre", { text: pretty(result) })));
  return h("div", {}, sections);
}

/** A table found in a step's output (`result.tables`): the table, and a bar chart of its first numeric column
 * by its first other column. */
function richTable(table) {
  const numericAt = table.numeric.findIndex((numeric, i) => numeric && i > 0);
  const labelAt = table.numeric.findIndex((numeric) => !numeric);
  const value = (cell) => Number.parseFloat(cell);
  return h(
    "div",
    { class: "rich-table" },
    h(
      "table",
      { class: "table result-table" },
      h("thead", {}, h("tr", {}, table.columns.map((column, i) => h("th", { class: table.numeric[i] ? "num" : "", text: column })))),
      h("tbody", {}, table.rows.map((row) => h("tr", {}, row.map((cell, i) => h("td", { class: table.numeric[i] ? "num" : "", text: cell }))))),
    ),
    numericAt >= 0 && table.rows.length > 1
      ? barChart(table.rows.map((row, i) => ({ label: labelAt >= 0 ? row[labelAt] : String(i + 1), value: value(row[numericAt]) })))
      : null,
  );
}

function section(title, body) {
  return h("div", { class: "result-section" }, h("h3", { text: title }), body);
}

/** Shows an output: JSON (code and test, tables, numbers as a chart) or text with fenced code blocks. */
function outputView(output) {
  const value = typeof output === "string" ? safeParse(output.trim()) : output;
  if (value && typeof value === "object") return valueView(value);
  const text = String(output);
  const parts = [];
  const fence = /```(\w*)\n([\s\S]*?)(?:```|$)/g;
  let last = 0;
  for (const match of text.matchAll(fence)) {
    if (match.index > last) parts.push(h("div", { class: "answer-text", text: text.slice(last, match.index).trim() }));
    parts.push(!match[1] || match[1] === "python" || match[1] === "py" ? python(match[2]) : h("pre", { text: match[2] }));
    last = match.index + match[0].length;
  }
  if (last === 0 && looksLikePython(text)) return python(text);
  if (last < text.length) parts.push(h("div", { class: "answer-text", text: text.slice(last).trim() }));
  return h("div", {}, parts);
}

function valueView(value) {
  if (Array.isArray(value)) {
    if (value.length && value.every((item) => Number.isFinite(item))) return barChart(value.map((item, i) => ({ label: String(i + 1), value: item })));
    if (value.length && value.every((item) => item && typeof item === "object" && !Array.isArray(item))) return tableView(value);
    return h("pre", { text: pretty(value) });
  }
  const parts = [];
  if (typeof value.code === "string") parts.push(h("div", { class: "hint", text: "code" }), python(value.code));
  if (typeof value.test === "string") parts.push(h("div", { class: "hint", text: "test" }), python(value.test));
  const rest = Object.entries(value).filter(([key]) => key !== "code" && key !== "test");
  if (rest.length) {
    const numbers = rest.filter(([, v]) => Number.isFinite(v));
    if (numbers.length >= 2) parts.push(barChart(numbers.map(([label, v]) => ({ label, value: v }))));
    parts.push(
      h("dl", { class: "kv" }, rest.map(([key, v]) => [h("dt", { text: key }), h("dd", {}, v && typeof v === "object" ? valueView(v) : h("span", { class: "answer-text", text: String(v) }))])),
    );
  }
  return h("div", {}, parts);
}

function tableView(rows) {
  const columns = [...new Set(rows.flatMap((row) => Object.keys(row)))].slice(0, 12);
  const numeric = columns.find((column) => rows.every((row) => Number.isFinite(row[column])));
  const label = columns.find((column) => rows.every((row) => typeof row[column] === "string"));
  return h(
    "div",
    {},
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, columns.map((column) => h("th", { text: column })))),
      h("tbody", {}, rows.slice(0, 500).map((row) => h("tr", {}, columns.map((column) => h("td", { class: Number.isFinite(row[column]) ? "num" : "", text: typeof row[column] === "object" ? JSON.stringify(row[column]) : String(row[column] ?? "") }))))),
    ),
    numeric && rows.length > 1 ? barChart(rows.slice(0, 40).map((row, i) => ({ label: label ? row[label] : String(i + 1), value: row[numeric] }))) : null,
  );
}

// ---- raw events (virtualised) --------------------------------------------------------------------------

const ROW = 26;

function renderEvents() {
  const kinds = [...new Set(state.events.map((event) => event.kind))].sort();
  const kindFilter = query().get("kind") || "";
  const list = kindFilter ? state.events.filter((event) => event.kind === kindFilter) : state.events;
  const origin = state.events.length ? Date.parse(state.events[0].at) : 0;
  const detail = h("div", { id: "event-detail" });
  const inner = h("div", { style: { height: `${list.length * ROW}px`, position: "relative" } });
  const scroller = h("div", { class: "vlist", role: "listbox", "aria-label": "events", tabindex: 0 }, inner);
  const select = (event, push = true) => {
    setQuery({ event: event.seq }, { push });
    showEvent(detail, event);
    for (const row of inner.children) row.setAttribute("aria-selected", String(Number(row.dataset.seq) === event.seq));
  };
  let drawn = "";
  const draw = () => {
    const first = Math.max(0, Math.floor(scroller.scrollTop / ROW) - 10);
    const last = Math.min(list.length, first + Math.ceil((scroller.clientHeight || 560) / ROW) + 20);
    if (drawn === `${first}-${last}`) return;
    drawn = `${first}-${last}`;
    const selected = Number(query().get("event"));
    const fragment = document.createDocumentFragment();
    for (let i = first; i < last; i++) {
      const event = list[i];
      fragment.append(
        h(
          "button",
          { type: "button", class: "row", role: "option", "aria-selected": String(event.seq === selected), dataset: { seq: event.seq }, style: { top: `${i * ROW}px` }, onclick: () => select(event) },
          h("span", { class: "seq", text: event.seq }),
          h("span", { class: "at", text: `+${((Date.parse(event.at) - origin) / 1000).toFixed(2)}s` }),
          h("span", { class: "kind", text: event.kind }),
          h("span", {}, event.agent ? agentChip(event.agent) : ""),
          h("span", { class: "data", text: summarize(event) }),
        ),
      );
    }
    inner.replaceChildren(fragment);
  };
  scroller.addEventListener(
    "scroll",
    () => {
      state.eventsScroll = scroller.scrollTop;
      requestAnimationFrame(draw);
    },
    { passive: true },
  );
  const filter = h(
    "select",
    {
      "aria-label": "only events of kind",
      onchange: (change) => {
        setQuery({ kind: change.target.value, event: null }, { push: true });
        invalidate("events");
      },
    },
    h("option", { value: "", text: `all kinds (${state.events.length})` }),
    kinds.map((kind) => h("option", { value: kind, text: kind, selected: kind === kindFilter })),
  );
  const chosen = list.find((event) => event.seq === Number(query().get("event")));
  if (chosen) showEvent(detail, chosen);
  else fill(detail, note("select an event to see it whole"));
  // Drawn again (a live event came): the list stays where the person left it.
  const keep = state.eventsScroll;
  requestAnimationFrame(() => {
    if (keep !== undefined) scroller.scrollTop = keep;
    else if (chosen) scroller.scrollTop = Math.max(0, list.indexOf(chosen) * ROW - 200);
    draw();
  });
  draw();
  return h(
    "div",
    {},
    h("div", { class: "toolbar" }, filter, h("span", { class: "hint", text: `${list.length} events; llm.token events are shown per model call under Tokens` })),
    h("div", { class: "events-wrap" }, h("div", {}, h("div", { class: "vlist-head" }, h("span", { text: "seq" }), h("span", { text: "at" }), h("span", { text: "kind" }), h("span", { text: "agent" }), h("span", { text: "data" })), scroller), detail),
  );
}

function showEvent(node, event) {
  fill(node, h("div", { class: "title" }, h("b", { text: `#${event.seq} ${event.kind}` }), " ", h("span", { class: "hint", text: event.at })), h("pre", { style: { maxHeight: "560px" }, text: pretty(event) }));
}

const RENDER = {
  decisions: renderDecisions,
  timeline: renderTimeline,
  tokens: renderTokens,
  memory: renderMemory,
  tools: renderTools,
  sandbox: renderSandbox,
  result: renderResult,
  events: renderEvents,
};

// ---- live ----------------------------------------------------------------------------------------------

function onLive(event) {
  if (event.seq <= state.maxSeq) return;
  state.maxSeq = event.seq;
  if (event.kind === "llm.token") {
    const purpose = event.data && event.data.purpose;
    const known = state.calls && state.calls.some((call) => call.purpose === purpose);
    if (!known && !state.liveCalls.has(purpose)) {
      state.liveCalls.set(purpose, { agent: event.agent });
      invalidate("tokens");
    }
    const view = state.view;
    if (view && view.purpose === purpose && currentPanel() === "tokens") {
      const token = { seq: event.seq, text: event.data.text, p: event.data.p, top: event.data.top };
      if (view.loaded) appendTokens(view, [token]);
      else view.pending.push(token);
    }
    return;
  }
  state.events.push(event);
  const status = statusAfter(event.kind);
  if (status && state.task) {
    state.task.status = status;
    renderHead();
  }
  if (event.kind === "llm.finished") {
    state.calls = null; // read again when shown: the call is now stored
    invalidate("tokens");
  }
  if (["plan.created", "agent.started", "agent.finished", "llm.finished", "code.attempt", "qa.verdict"].includes(event.kind) || status) refreshTaskSoon();
  invalidate(...PANELS.filter((panel) => panel !== "tokens"));
}

// ---- start ---------------------------------------------------------------------------------------------

function notFound(error) {
  const missing = error.status === 404 || error.status === 400;
  fill($("main"), h("div", { class: "panel not-found" }, h("h1", { text: missing ? "No such task" : "This task cannot be shown" }), h("p", { class: "hint", text: missing ? `There is no task “${taskId}”.` : error.message }), h("p", {}, h("a", { href: "/", text: "← all tasks" }))));
  $("live").dataset.state = "done";
  $("live").textContent = "";
}

function wireTabs() {
  const tabs = PANELS.map((panel) => $(`tab-${panel}`));
  for (const tab of tabs) {
    tab.addEventListener("click", () => showPanel(tab.dataset.panel, { push: true }));
    tab.addEventListener("keydown", (event) => {
      const index = tabs.indexOf(tab);
      const next = event.key === "ArrowRight" ? index + 1 : event.key === "ArrowLeft" ? index - 1 : null;
      if (next === null) return;
      event.preventDefault();
      const target = tabs[(next + tabs.length) % tabs.length];
      target.focus();
      showPanel(target.dataset.panel, { push: true });
    });
  }
  window.addEventListener("popstate", () => {
    state.view = null; // the URL says which call
    invalidate("tokens", "events");
    showPanel(currentPanel());
  });
}

async function start() {
  wireTabs();
  let events;
  try {
    [, events] = await Promise.all([loadTask(), loadEvents()]);
  } catch (error) {
    notFound(error);
    markReady();
    return;
  }
  state.events = events;
  state.maxSeq = events.length ? events[events.length - 1].seq : 0;
  pause.update(state.task, state.events);
  await showPanel(currentPanel());
  updateCounts();
  markReady();
  if (TERMINAL.has(state.task.status)) {
    liveIndicator($("live"))("done");
    return;
  }
  state.socket = new LiveSocket({
    path: () => `/api/v1/tasks/${taskId}/events?after=${state.maxSeq}`,
    onEvent: onLive,
    onState: liveIndicator($("live")),
    endOnNormalClose: true,
  });
  setInterval(tickDuration, 1000);
}

start();
