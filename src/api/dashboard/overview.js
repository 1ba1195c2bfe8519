// Troupe dashboard, the overview: agents and the model worker (re-read every 2 s), charts from
// /api/v1/stats, the collaboration graph, and the task list (filters and page in the URL), kept live by the
// global event stream /api/v1/events (re-read on every (re)connect).

import {
  h, fill, api, post, badge, agentChip, note, errorBox, duration, count, usd, clock, shortId, query, setQuery,
  LiveSocket, liveIndicator, every, markReady, secondsBetween, statusAfter, TERMINAL,
} from "./common.js";
import { lineChart, stackedBars, bucket, collaborationGraph } from "./charts.js";

const PAGE = 25;
const $ = (id) => document.getElementById(id);

// ---- agents and the model ------------------------------------------------------------------------------

async function loadAgents() {
  let body;
  try {
    body = await api("/api/v1/agents");
  } catch (error) {
    fill($("agents"), errorBox(error));
    return;
  }
  const rows = (body.agents || []).map((agent) =>
    h(
      "tr",
      { dataset: { agent: agent.name } },
      h("td", {}, agentChip(agent.name)),
      h("td", {}, badge(agent.status === "running" && agent.in_flight > 0 ? "running" : agent.status === "running" ? "ready" : agent.status, agent.status)),
      h("td", { class: "num" }, count(agent.in_flight)),
      h("td", { class: "num", title: Array.isArray(agent.busy) ? `steps in flight per instance: ${agent.busy.join(" · ")}` : "" }, count(agent.instances)),
      h("td", { class: "num" }, count(agent.mailbox_depth)),
      h("td", { class: "num" }, count(agent.restarts)),
      h(
        "td",
        {},
        Array.isArray(agent.tasks) && agent.tasks.length
          ? agent.tasks.map((id) => h("a", { href: `/tasks/${id}`, class: "mono", text: shortId(id), title: id, style: { marginRight: "6px" } }))
          : h("span", { class: "hint", text: Array.isArray(agent.tasks) ? "idle" : "–" }),
      ),
    ),
  );
  fill(
    $("agents"),
    h(
      "table",
      { class: "agents" },
      h("thead", {}, h("tr", {}, h("th", { text: "agent" }), h("th", { text: "status" }), h("th", { class: "num", text: "in flight" }), h("th", { class: "num", text: "instances" }), h("th", { class: "num", text: "mailbox" }), h("th", { class: "num", text: "restarts" }), h("th", { text: "current tasks" }))),
      h("tbody", {}, rows),
    ),
  );
  const model = body.model || {};
  const worker = model.worker;
  const models = body.models || {};
  fill(
    $("model"),
    h(
      "dl",
      { class: "kv" },
      h("dt", { text: "primary" }),
      h("dd", {}, h("b", { text: model.provider || "?" }), " ", h("span", { class: "mono", text: model.model || "" })),
      h("dt", { text: "worker" }),
      h("dd", {}, worker ? [badge(worker.state), ` pid ${worker.pid ?? "–"} · ${count(worker.restarts)} restarts`] : h("span", { class: "hint", text: "no local worker (remote provider)" })),
    ),
    h(
      "table",
      { style: { marginTop: "10px" } },
      h("thead", {}, h("tr", {}, h("th", { text: "used by" }), h("th", { text: "provider" }), h("th", { text: "model" }))),
      h(
        "tbody",
        {},
        Object.entries(models).map(([who, named]) =>
          h("tr", {}, h("td", {}, ["director", "research", "code", "qa"].includes(who) ? agentChip(who) : h("span", { text: who })), h("td", { text: named.provider }), h("td", { class: "mono", text: named.model })),
        ),
      ),
    ),
  );
}

// ---- charts --------------------------------------------------------------------------------------------

async function loadStats() {
  let body;
  try {
    body = await api("/api/v1/stats");
  } catch (error) {
    for (const id of ["chart-tokens", "chart-queue", "chart-outcomes"]) fill($(id), error.status === 404 ? note("no statistics from this server") : errorBox(error));
    return;
  }
  const samples = body.samples || [];
  const interval = body.interval_seconds || 2;
  const lines = bucket(samples, 240, (group) => {
    const last = group[group.length - 1];
    const mean = (key) => group.reduce((sum, sample) => sum + (sample[key] || 0), 0) / group.length;
    return { t: last.t, values: { tokens: mean("tokens_per_second"), queue: last.queue_depth || 0, running: last.running_tasks || 0 } };
  });
  fill($("chart-tokens"), lineChart({ points: lines, series: [{ key: "tokens", label: "tokens/s", color: "#2f6fd6" }] }));
  fill(
    $("chart-queue"),
    lineChart({
      points: lines,
      series: [
        { key: "queue", label: "queued", color: "#d9822b" },
        { key: "running", label: "running", color: "#1f8a4c" },
      ],
    }),
  );
  const bars = bucket(samples, 40, (group) => {
    const sum = (key) => group.reduce((total, sample) => total + (sample[key] || 0), 0);
    const completed = sum("completed");
    const failed = sum("failed");
    const cancelled = sum("cancelled");
    const ended = completed + failed + cancelled;
    return { t: group[group.length - 1].t, values: { completed, failed, cancelled, rate: ended ? failed / ended : 0, llm_errors: sum("llm_errors") } };
  });
  fill(
    $("chart-outcomes"),
    stackedBars({
      bars,
      series: [
        { key: "completed", label: "completed", color: "#1f8a4c" },
        { key: "failed", label: "failed", color: "#c23a32" },
        { key: "cancelled", label: "cancelled", color: "#9aa5b4" },
        { key: "llm_errors", label: "model errors", color: "#f0a63a" },
      ],
      rate: { key: "rate", label: "error rate", color: "#1d2430" },
    }),
    h("div", { class: "hint", text: `every ${interval} s, ${samples.length} samples` }),
  );
}

async function loadCollaboration() {
  try {
    const body = await api("/api/v1/collaboration");
    const edges = body.edges || [];
    fill($("collaboration"), collaborationGraph(edges), edges.length ? null : note("no hand-offs yet: run a task"));
  } catch (error) {
    fill($("collaboration"), error.status === 404 ? note("no collaboration data from this server") : errorBox(error));
  }
}

async function loadLearning() {
  try {
    const body = await api("/api/v1/learning?hours=720&bucket_hours=24");
    const points = body.curve.map((point) => ({
      t: point.start,
      values: {
        first: point.first_attempt_pass_rate ?? 0,
        fix: point.with_fix.pass_rate ?? 0,
        none: point.without_fix.pass_rate ?? 0,
      },
    }));
    const total = body.total;
    const top = body.signatures.filter((s) => s.signature !== "(passed at once)").slice(0, 5);
    fill(
      $("learning"),
      points.length
        ? lineChart({
            points,
            series: [
              { key: "first", label: "first attempt passed", color: "#1f8a4c" },
              { key: "fix", label: "after a failure, fix offered", color: "#2f6fd6" },
              { key: "none", label: "after a failure, no fix", color: "#d9822b" },
            ],
          })
        : note("no Code/QA loop in the last 30 days"),
      h("div", { class: "hint", dataset: { loops: total.loops }, text: `${total.loops} loops, ${total.passed} passed; mean attempts to pass ${total.mean_attempts_to_pass === null ? "–" : total.mean_attempts_to_pass.toFixed(2)}; after a failure: ${total.with_fix.passed}/${total.with_fix.attempts} passed with a learned fix offered, ${total.without_fix.passed}/${total.without_fix.attempts} without` }),
      top.length
        ? h("table", { class: "table", "aria-label": "error signatures" },
            h("thead", {}, h("tr", {}, ["error signature", "loops", "passed", "mean attempts", "with fix", "without"].map((t) => h("th", { text: t })))),
            h("tbody", {}, top.map((s) => h("tr", {},
              h("td", { class: "mono", text: s.signature }),
              h("td", { class: "num", text: s.loops }),
              h("td", { class: "num", text: s.passed }),
              h("td", { class: "num", text: s.mean_attempts_to_pass === null ? "–" : s.mean_attempts_to_pass.toFixed(2) }),
              h("td", { class: "num", text: `${s.with_fix.passed}/${s.with_fix.attempts}` }),
              h("td", { class: "num", text: `${s.without_fix.passed}/${s.without_fix.attempts}` })))))
        : null,
    );
  } catch (error) {
    fill($("learning"), errorBox(error));
  }
}

// ---- tasks ---------------------------------------------------------------------------------------------

/** The rows on screen, by task id: their row element and the task. */
const shown = new Map();

function filters() {
  const params = query();
  return { status: params.get("status") || "", q: params.get("q") || "", before: params.get("before") || "" };
}

let listing = 0;

async function loadTasks() {
  const { status, q, before } = filters();
  $("status").value = status;
  if (document.activeElement !== $("q")) $("q").value = q;
  const params = new URLSearchParams({ limit: String(PAGE) });
  if (status) params.set("status", status);
  if (q) params.set("q", q);
  if (before) params.set("before", before);
  const mine = ++listing;
  let body;
  try {
    body = await api(`/api/v1/tasks?${params}`);
  } catch (error) {
    if (mine === listing) fill($("tasks"), errorBox(error));
    return;
  }
  if (mine !== listing) return; // a newer listing was asked for meanwhile
  const previous = new Set(shown.keys());
  shown.clear();
  const tasks = body.tasks || [];
  const rows = tasks.map((task) => {
    const row = taskRow(task);
    if (previous.size && !previous.has(task.id)) row.classList.add("fresh");
    shown.set(task.id, { row, task });
    return row;
  });
  fill(
    $("tasks"),
    tasks.length
      ? h(
          "table",
          { class: "tasks" },
          h("thead", {}, h("tr", {}, h("th", { text: "status" }), h("th", { text: "prompt" }), h("th", { text: "agents" }), h("th", { class: "num", text: "duration" }), h("th", { class: "num", text: "tokens" }), h("th", { class: "num", text: "cost" }), h("th", { class: "num", text: "created" }))),
          h("tbody", {}, rows),
        )
      : note(status || q || before ? "no task matches" : "no tasks yet: submit one above, or POST /api/v1/tasks", "empty"),
  );
  $("older").disabled = !body.next;
  $("older").dataset.next = body.next || "";
  $("newer").disabled = !before;
  $("newest").disabled = !before;
}

function taskRow(task) {
  const tokens = task.tokens ? (task.tokens.input || 0) + (task.tokens.output || 0) : null;
  return h(
    "tr",
    { dataset: { task: task.id, status: task.status } },
    h("td", { class: "status" }, badge(task.status)),
    h("td", { class: "prompt" }, h("a", { href: `/tasks/${task.id}`, text: task.prompt, title: task.prompt })),
    h("td", {}, (task.agents || []).map(agentChip)),
    h("td", { class: "num duration" }, duration(taskSeconds(task))),
    h("td", { class: "num", title: task.tokens ? `${count(task.tokens.input)} in, ${count(task.tokens.output)} out` : "" }, count(tokens)),
    h("td", { class: "num" }, usd(task.cost_usd)),
    h("td", { class: "num", title: task.created_at }, clock(task.created_at)),
  );
}

function taskSeconds(task) {
  if (Number.isFinite(task.duration_seconds) && !(task.status === "running" && task.started_at)) return task.duration_seconds;
  return task.started_at ? secondsBetween(task.started_at, task.finished_at) : null;
}

/** Coalesces list re-reads asked for by events: at most one every 400 ms. */
let reloadTimer = null;
function reloadSoon() {
  if (reloadTimer) return;
  reloadTimer = setTimeout(() => {
    reloadTimer = null;
    loadTasks();
  }, 400);
}

function onEvent(event) {
  const status = statusAfter(event.kind);
  const entry = shown.get(event.task_id);
  if (entry && status) {
    entry.task.status = status;
    if (status === "running" && !entry.task.started_at) entry.task.started_at = event.at;
    if (TERMINAL.has(status)) entry.task.finished_at = event.at;
    entry.row.dataset.status = status;
    fill(entry.row.querySelector("td.status"), badge(status));
    entry.row.querySelector("td.duration").textContent = duration(taskSeconds(entry.task));
  }
  // A new task, an ended one (its tokens and cost are final) or one we do not show: read the page again.
  if (event.kind === "task.queued" || TERMINAL.has(status) || (!entry && status && !filters().before)) reloadSoon();
  if (event.kind === "agent.started" || event.kind === "agent.finished" || TERMINAL.has(status)) loadAgentsSoon();
  // Hand-offs are agent.started, code.attempt and qa.revision events: the graph is read again after them.
  if (["agent.started", "code.attempt", "qa.revision"].includes(event.kind) || TERMINAL.has(status)) collaborationSoon();
}

let collaborationTimer = null;
function collaborationSoon() {
  if (collaborationTimer) return;
  collaborationTimer = setTimeout(() => {
    collaborationTimer = null;
    loadCollaboration();
  }, 500);
}

let agentsTimer = null;
function loadAgentsSoon() {
  if (agentsTimer) return;
  agentsTimer = setTimeout(() => {
    agentsTimer = null;
    loadAgents();
  }, 150);
}

/** Running tasks' durations tick every second without asking the server. */
function tickDurations() {
  for (const { row, task } of shown.values()) {
    if (task.status === "running") row.querySelector("td.duration").textContent = duration(taskSeconds(task));
  }
}

function wireControls() {
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    setQuery({ status: $("status").value, q: $("q").value.trim(), before: null }, { push: true, state: { trail: [] } });
    loadTasks();
  });
  $("status").addEventListener("change", () => $("filters").requestSubmit());
  $("older").addEventListener("click", () => {
    const next = $("older").dataset.next;
    if (!next) return;
    const trail = [...((history.state && history.state.trail) || []), filters().before];
    setQuery({ before: next }, { push: true, state: { trail } });
    loadTasks();
  });
  $("newer").addEventListener("click", () => {
    const trail = [...((history.state && history.state.trail) || [])];
    const before = trail.length ? trail.pop() : "";
    setQuery({ before }, { push: true, state: { trail } });
    loadTasks();
  });
  $("newest").addEventListener("click", () => {
    setQuery({ before: null }, { push: true, state: { trail: [] } });
    loadTasks();
  });
  window.addEventListener("popstate", () => loadTasks());
  $("submit").addEventListener("submit", async (event) => {
    event.preventDefault();
    const prompt = $("prompt").value.trim();
    if (!prompt) return;
    const button = $("submit").querySelector("button");
    button.disabled = true;
    try {
      const body = await post("/api/v1/tasks", { prompt });
      $("prompt").value = "";
      fill($("submit-result"), "Queued ", h("a", { href: `/tasks/${body.id}`, text: `task ${shortId(body.id)}` }), ".");
      reloadSoon();
    } catch (error) {
      fill($("submit-result"), errorBox(error));
    } finally {
      button.disabled = false;
    }
  });
}

async function start() {
  wireControls();
  await Promise.allSettled([loadTasks(), loadAgents()]);
  markReady();
  // While the event stream is down (or the server has none), the list is re-read every 3 s instead.
  let streaming = false;
  const indicate = liveIndicator($("live"));
  new LiveSocket({
    path: () => "/api/v1/events",
    onEvent,
    onOpen: loadTasks,
    onState: (state) => {
      streaming = state === "open";
      indicate(state);
    },
  });
  setInterval(() => {
    if (!streaming && !document.hidden) loadTasks();
  }, 3000);
  every(2, loadStats);
  setTimeout(() => every(2, loadAgents), 2000);
  every(10, loadCollaboration);
  every(10, loadLearning);
  setInterval(tickDurations, 1000);
}

start();
