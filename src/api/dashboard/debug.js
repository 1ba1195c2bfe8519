// Troupe dashboard, debug mode on the task page: the panel of a paused task (what is pending, the actions
// continue / step / abort / override, and the task's state at the pause, from GET /api/v1/tasks/{id}/state),
// the cloud-fallback question, "fork from here" on a finished task's steps, and links to compare a fork or a
// replay with its source. What is shown comes from /api/v1; each action is a POST whose refusal (a 4xx) is
// shown where it was asked.

import { h, fill, api, post, badge, agentChip, note, errorBox, prob, clock, shortId, pretty } from "./common.js";

const SPECIALISTS = ["research", "code", "qa"];

// ---- the paused task's panel ---------------------------------------------------------------------------

/**
 * The panel of a paused task in `node`: `update(task, events)` shows it when the task is paused (reading its
 * state) and hides it otherwise; a person's action posts to the API and the task's events redraw the rest.
 */
export function pausePanel(node, taskId) {
  let shownKey = null; // the pause on screen, so a redraw does not wipe what a person is typing
  let reading = null;
  let again = null; // asked again while reading: read once more after
  const hide = () => {
    shownKey = null;
    node.hidden = true;
    node.replaceChildren();
  };
  const update = async (task, events) => {
    if (!task || task.status !== "paused") return hide();
    const paused = [...events].reverse().find((event) => event.kind === "task.paused");
    const data = (paused && paused.data) || {};
    if (data.reason === "cloud_fallback") {
      const key = `cloud:${paused.seq}`;
      if (shownKey === key) return;
      shownKey = key;
      node.hidden = false;
      fill(node, cloudFallback(taskId, data));
      return;
    }
    if (reading) {
      again = [task, events];
      return reading;
    }
    reading = (async () => {
      try {
        const state = await api(`/api/v1/tasks/${taskId}/state`);
        if (!state.pending) {
          if (state.status !== "paused") return hide();
          shownKey = null;
          node.hidden = false;
          fill(node, h("header", {}, h("h2", { text: "Paused" }), badge("paused")), note("the task is paused; what it waits for is being read…"));
          return;
        }
        const key = `${state.pending.key}@${state.pending.since}`;
        if (shownKey === key) return;
        shownKey = key;
        node.hidden = false;
        fill(node, pendingView(taskId, state));
      } catch (error) {
        shownKey = null;
        node.hidden = false;
        fill(node, errorBox(error));
      } finally {
        reading = null;
      }
      if (again) {
        const [nextTask, nextEvents] = again;
        again = null;
        await update(nextTask, nextEvents);
      }
    })();
    return reading;
  };
  return { update };
}

/** Posts an action; the answer (or the server's refusal) goes to `status`; buttons are off meanwhile. */
async function act(taskId, body, status, controls) {
  for (const control of controls.querySelectorAll("button")) control.disabled = true;
  fill(status, h("span", { class: "hint", text: `${body.action}…` }));
  try {
    await post(`/api/v1/tasks/${taskId}/resume`, body);
    fill(status, h("span", { class: "hint", text: `${body.action}: sent; the task goes on` }));
  } catch (error) {
    fill(status, errorBox(error));
    for (const control of controls.querySelectorAll("button")) control.disabled = false;
  }
}

function pendingView(taskId, state) {
  const pending = state.pending;
  const point = pending.point || {};
  const detail = pending.detail || {};
  const breakpoint = pending.breakpoint;
  const status = h("div", { class: "pause-status", role: "status", id: "pause-status" });
  const panel = h("div", { class: "pause-body" });
  const send = (body) => act(taskId, body, status, panel);
  const what = { decision: "a decision", tool: "a tool call", step: "a step", llm: "a model call" }[point.on] || point.on;
  const where = [point.agent ? agentChip(point.agent) : null, point.kind ? h("span", { class: "mono", text: point.kind }) : null, point.tool ? h("span", { class: "mono", text: point.tool }) : null, Number.isInteger(point.step) ? h("span", { text: `step ${point.step}` }) : null, point.purpose ? h("span", { class: "mono", text: point.purpose }) : null];
  fill(
    panel,
    h(
      "header",
      {},
      h("h2", {}, "Paused before ", what),
      badge("paused", pending.reason),
      h("span", { class: "pause-where" }, where),
      h("span", { class: "hint", text: `since ${clock(pending.since)} · ${pending.reason === "restart" ? "paused again after a restart" : pending.reason}` }),
    ),
    breakpoint
      ? h("div", { class: "hint" }, "breakpoint ", h("a", { href: "/breakpoints", class: "mono", text: shortId(breakpoint.id) }), `: on ${breakpoint.on}`, breakpoint.kind ? ` · kind ${breakpoint.kind}` : "", breakpoint.tool ? ` · tool ${breakpoint.tool}` : "", breakpoint.when ? ` · when ${breakpoint.when}` : "")
      : null,
    h("div", { class: "pause-pending", dataset: { on: point.on, key: pending.key } }, pendingDetail(point.on, detail, send)),
    h(
      "div",
      { class: "pause-actions" },
      h("button", { type: "button", class: "primary", dataset: { action: "continue" }, onclick: () => send({ action: "continue" }), text: "Continue", title: "go on; pause at the next breakpoint" }),
      h("button", { type: "button", dataset: { action: "step" }, onclick: () => send({ action: "step" }), text: "Step", title: "go on to the next decision, tool call, step or model call and pause there" }),
      h("button", { type: "button", class: "danger", dataset: { action: "abort" }, onclick: () => send({ action: "abort" }), text: "Abort", title: "end the task (cancelled)" }),
      status,
    ),
    stateView(state),
  );
  return panel;
}

function pendingDetail(on, detail, send) {
  if (on === "decision") return decisionPending(detail, send);
  if (on === "tool") return toolPending(detail, send);
  if (on === "step") return stepPending(detail, send);
  if (on === "llm") return llmPending(detail);
  return h("pre", { text: pretty(detail) });
}

function decisionPending(detail, send) {
  const options = detail.options || [];
  const rows = options.map((option) => {
    const chosen = option.name === detail.chosen;
    const p = Number(option.probability);
    return h(
      "tr",
      { class: chosen ? "chosen" : "", dataset: { option: option.name } },
      h("td", {}, chosen ? h("b", { text: `✓ ${option.name}` }) : option.name),
      h("td", { class: "num", text: Number.isFinite(p) ? prob(p) : "–" }),
      h("td", {}, h("span", { class: "alt-bar wide" }, h("span", { style: { width: `${Math.max(0, Math.min(1, p || 0)) * 100}%` } }))),
      h(
        "td",
        {},
        chosen
          ? h("span", { class: "hint", text: "the model's choice" })
          : h("button", { type: "button", class: "override", dataset: { option: option.name }, onclick: () => send({ action: "override", chosen: option.name }), text: `Override: take ${option.name}` }),
      ),
    );
  });
  return h(
    "div",
    {},
    h("div", { class: "title" }, h("b", { text: `${detail.kind || "decision"}${Number.isInteger(detail.step) ? ` for step ${detail.step}` : ""} → ${detail.chosen}` }), Number.isFinite(detail.confidence) ? h("span", { class: "hint", text: `confidence ${prob(detail.confidence)}` }) : null),
    h("table", { class: "pending-options" }, h("thead", {}, h("tr", {}, h("th", { text: "option" }), h("th", { class: "num", text: "p" }), h("th", { text: "" }), h("th", { text: "" }))), h("tbody", {}, rows)),
    detail.context ? h("details", {}, h("summary", { text: "what the decision is about" }), h("pre", { text: pretty(detail.context) })) : null,
  );
}

function toolPending(detail, send) {
  const editor = h("textarea", { class: "mono json-editor", rows: 8, "aria-label": "the tool call's arguments (JSON)", spellcheck: "false" });
  editor.value = pretty(detail.arguments ?? {});
  const problem = h("div", { class: "hint", role: "status" });
  const override = () => {
    let value;
    try {
      value = JSON.parse(editor.value);
    } catch (error) {
      fill(problem, errorBox(`the arguments are not JSON: ${error.message}`));
      return;
    }
    fill(problem);
    send({ action: "override", arguments: value });
  };
  return h(
    "div",
    { class: "pending-grid" },
    h("div", {}, h("div", { class: "title" }, h("b", { class: "mono", text: detail.tool }), h("span", { class: "hint mono", text: detail.call_id || "" })), h("label", { class: "hint", text: "arguments (editable)" }), editor, problem, h("button", { type: "button", class: "override", onclick: override, text: "Override: run with these arguments" })),
    h("div", {}, h("div", { class: "hint", text: "the tool's input schema" }), h("pre", { text: pretty(detail.input_schema ?? {}) })),
  );
}

function stepPending(detail, send) {
  const editor = h("textarea", { rows: 4, "aria-label": "the step's instruction" });
  editor.value = detail.instruction || "";
  return h(
    "div",
    {},
    h("div", { class: "title" }, h("b", { text: `step ${detail.step} to ` }), agentChip(detail.agent), h("span", { class: "hint", text: `${detail.kind || "work"} · attempt ${detail.attempt ?? 1} · revision ${detail.revision ?? 1}` })),
    h("label", { class: "hint", text: "instruction (editable)" }),
    editor,
    detail.feedback ? h("details", {}, h("summary", { text: "feedback it carries" }), h("pre", { text: detail.feedback })) : null,
    h("button", { type: "button", class: "override", onclick: () => send({ action: "override", instruction: editor.value }), text: "Override: send this instruction" }),
  );
}

function llmPending(detail) {
  const messages = Array.isArray(detail.messages) ? detail.messages : [];
  return h(
    "div",
    {},
    h("div", { class: "title" }, h("b", { text: "the model request" }), detail.purpose ? h("span", { class: "mono", text: detail.purpose }) : null),
    messages.length ? h("div", { class: "cards" }, messages.map((message) => h("div", {}, h("div", { class: "hint", text: message.role || "?" }), h("pre", { text: typeof message.content === "string" ? message.content : pretty(message.content) })))) : h("pre", { text: pretty(detail) }),
  );
}

/** The task's state at the pause: steps, scratchpad, window, recalled memories, workspace files. */
function stateView(state) {
  const part = (title, count, body, open = false) => h("details", { class: "state-part", open }, h("summary", {}, title, h("span", { class: "count", text: ` ${count}` })), body);
  const recalled = state.recalled || [];
  const hits = recalled.flatMap((entry) => ((entry.read || {}).hits || []).map((hit) => ({ ...hit, query: (entry.read || {}).query, agent: entry.agent })));
  return h(
    "div",
    { class: "pause-state" },
    h("h3", { text: "State at the pause" }),
    part(
      "Steps",
      (state.steps || []).length,
      (state.steps || []).length
        ? h("table", {}, h("tbody", {}, state.steps.map((step) => h("tr", {}, h("td", { class: "num", text: step.idx }), h("td", {}, step.agent ? agentChip(step.agent) : ""), h("td", {}, badge(step.status || "?")), h("td", { text: step.instruction || "" })))))
        : note("no step stored yet (steps are stored once every one has its agent)"),
    ),
    part("Scratchpad", Object.keys(state.scratchpad || {}).length, h("pre", { text: pretty(state.scratchpad || {}) })),
    part("Window", (state.window || []).length, (state.window || []).length ? h("pre", { text: pretty(state.window) }) : note("the conversation window is empty")),
    part(
      "Recalled memories",
      hits.length,
      hits.length
        ? h("table", {}, h("thead", {}, h("tr", {}, h("th", { class: "num", text: "score" }), h("th", { text: "used" }), h("th", { text: "query" }), h("th", { text: "content" }))), h("tbody", {}, hits.map((hit) => h("tr", { class: hit.used ? "used" : "unused" }, h("td", { class: "num", text: prob(hit.score) }), h("td", { text: hit.used ? "✓" : "–" }), h("td", { class: "hint", text: hit.query || "" }), h("td", { text: hit.content || "" })))))
        : note("no memory recalled so far"),
    ),
    part(
      "Workspace files",
      (state.files || []).length,
      (state.files || []).length
        ? h("div", { class: "cards" }, state.files.map((file) => h("details", {}, h("summary", { class: "mono", text: `${file.name} (${file.chars} chars${file.truncated ? ", cut" : ""})` }), h("pre", { text: file.content || "" }))))
        : note(state.files_error || "no file in the workspace"),
    ),
    state.short_term_error ? h("div", { class: "hint", text: `short-term memory: ${state.short_term_error}` }) : null,
  );
}

/** The cloud-fallback question (a task paused before a paid call): allow it or fail the task. */
function cloudFallback(taskId, data) {
  const status = h("div", { class: "pause-status", role: "status" });
  const controls = h("div", { class: "pause-actions" });
  const answer = async (allow) => {
    for (const button of controls.querySelectorAll("button")) button.disabled = true;
    try {
      await post(`/api/v1/tasks/${taskId}/confirm`, { allow });
      fill(status, h("span", { class: "hint", text: allow ? "allowed; the call goes to the cloud" : "refused; the task fails" }));
    } catch (error) {
      fill(status, errorBox(error));
      for (const button of controls.querySelectorAll("button")) button.disabled = false;
    }
  };
  fill(
    controls,
    h("button", { type: "button", class: "primary", dataset: { action: "allow" }, onclick: () => answer(true), text: "Allow the cloud call" }),
    h("button", { type: "button", class: "danger", dataset: { action: "deny" }, onclick: () => answer(false), text: "Refuse (fail the task)" }),
    status,
  );
  const facts = Object.entries(data).filter(([key]) => !["reason", "again"].includes(key));
  return h("div", {}, h("header", {}, h("h2", { text: "Paused before a cloud fallback" }), badge("paused", "cloud_fallback")), h("dl", { class: "kv" }, facts.map(([key, value]) => [h("dt", { text: key }), h("dd", { class: "mono", text: typeof value === "string" ? value : JSON.stringify(value) })])), controls);
}

// ---- fork from a step ----------------------------------------------------------------------------------

/**
 * "Fork from here" for step `step` of finished task `taskId`: optional other agent (the step's assign_agent
 * decision taken otherwise) and optional prompt; the new task's page opens; a refusal shows in the form.
 */
export function forkControl(taskId, step, { agent = null, options = SPECIALISTS } = {}) {
  const choices = options.filter((name) => name !== agent);
  const select = h("select", { name: "chosen", "aria-label": `agent for step ${step} in the fork` }, h("option", { value: "", text: agent ? `as before (${agent})` : "as before" }), choices.map((name) => h("option", { value: name, text: name })));
  const prompt = h("textarea", { name: "prompt", rows: 2, placeholder: "the same prompt (or write another: then nothing is replayed)", "aria-label": "prompt of the fork" });
  const status = h("div", { class: "fork-status", role: "status" });
  const button = h("button", { type: "submit", class: "primary", text: "Fork" });
  const form = h("form", { class: "fork-form", dataset: { step } }, h("label", {}, "agent ", select), h("label", { class: "wide" }, "prompt ", prompt), h("div", { class: "fork-actions" }, button, status));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { from_step: step };
    if (select.value) body.override = { decision: "assign_agent", step, chosen: select.value };
    if (prompt.value.trim()) body.prompt = prompt.value;
    button.disabled = true;
    fill(status, h("span", { class: "hint", text: "forking…" }));
    try {
      const fork = await post(`/api/v1/tasks/${taskId}/fork`, body);
      location.assign(`/tasks/${fork.id}`);
    } catch (error) {
      button.disabled = false;
      fill(status, errorBox(error));
    }
  });
  return h("details", { class: "fork", dataset: { step } }, h("summary", { text: "Fork from here" }), h("div", { class: "hint", text: `a new task: the steps before ${step} answered from this run's recording, step ${step} and after live` }), form);
}

// ---- compare -------------------------------------------------------------------------------------------

/** The header's links of a fork or a replay: its source, and the two side by side. */
export function compareLink(task) {
  const forkOf = task.options && task.options.fork_of;
  const source = forkOf ? forkOf.task : task.replay_of;
  if (!source) return null;
  return h(
    "span",
    { class: "origin" },
    forkOf ? `fork of ` : "replay of ",
    h("a", { href: `/tasks/${source}`, class: "mono", text: shortId(source) }),
    forkOf ? ` from step ${forkOf.from_step}${forkOf.override ? ` (${forkOf.override.chosen} for step ${forkOf.override.step ?? forkOf.from_step})` : ""}` : "",
    " · ",
    h("a", { href: `/compare/${source}/${task.id}`, class: "compare-link", text: "compare with source" }),
  );
}
