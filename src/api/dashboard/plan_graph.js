// Troupe dashboard: a task's plan drawn as a graph. Each step is a node in the column of its depth (one more
// than the deepest step it waits for), with its agent (the pool instance that ran it), status and duration;
// an arrow runs from each step to every step that waits for it directly (an arrow implied by a longer path is
// left out: the verification waits for every step, but only the last ones point at it). The task page draws
// it again whenever a step starts or ends, so it fills in live.

import { h, s, duration, secondsBetween } from "./common.js";

const NODE_W = 220;
const NODE_H = 62;
const COL_GAP = 70;
const ROW_GAP = 18;
const PAD = 10;

const STATUS_FILL = {
  pending: "#eceef1",
  running: "#e3ecfb",
  done: "#dcf3e5",
  failed: "#fbe2e0",
  cancelled: "#fdf0d9",
  skipped: "#eceef1",
};
const AGENT_COLOR = { director: "#7c4dcc", research: "#0f8b8d", code: "#2f6fd6", qa: "#d9822b" };

/** Each step's column: 0 for a step that waits for nothing, else one more than its deepest dependency. */
export function depths(steps) {
  const byIdx = new Map(steps.map((step) => [step.idx, step]));
  const depth = new Map();
  const visit = (idx, seen) => {
    if (depth.has(idx)) return depth.get(idx);
    const step = byIdx.get(idx);
    if (!step || seen.has(idx)) return 0;
    seen.add(idx);
    const deps = (step.depends_on || []).filter((dep) => byIdx.has(dep));
    const d = deps.length ? 1 + Math.max(...deps.map((dep) => visit(dep, seen))) : 0;
    depth.set(idx, d);
    return d;
  };
  for (const step of steps) visit(step.idx, new Set());
  return depth;
}

/** For each step, the steps it waits for that no other step it waits for already waits for. */
export function directDependencies(steps) {
  const byIdx = new Map(steps.map((step) => [step.idx, step]));
  const reach = new Map();
  const reachable = (idx) => {
    if (reach.has(idx)) return reach.get(idx);
    const found = new Set();
    reach.set(idx, found);
    for (const dep of (byIdx.get(idx) || {}).depends_on || []) {
      found.add(dep);
      for (const further of reachable(dep)) found.add(further);
    }
    return found;
  };
  const direct = new Map();
  for (const step of steps) {
    const deps = (step.depends_on || []).filter((dep) => byIdx.has(dep));
    direct.set(step.idx, deps.filter((dep) => !deps.some((other) => other !== dep && reachable(other).has(dep))));
  }
  return direct;
}

/** The instance of each step's agent, from its latest `agent.started` event (`code-2`). */
function instances(events) {
  const found = new Map();
  for (const event of events) {
    if (event.kind === "agent.started" && event.data && Number.isInteger(event.data.instance) && event.data.instance > 0) {
      if (event.data.kind !== "test") found.set(event.data.step, `${event.agent}-${event.data.instance}`);
    }
  }
  return found;
}

function stepDuration(step, now) {
  if (!step.started_at) return "";
  const end = step.finished_at || (step.status === "running" ? now : null);
  return end ? duration(secondsBetween(step.started_at, end)) : "";
}

/**
 * The plan graph of `steps` (the task's stored steps: idx, agent, instruction, status, depends_on,
 * started_at, finished_at); `events` give each step's agent instance.
 */
export function planGraph(steps, events) {
  if (!steps.length) return null;
  const depth = depths(steps);
  const columns = [];
  for (const step of steps) {
    const d = depth.get(step.idx) || 0;
    (columns[d] = columns[d] || []).push(step);
  }
  const rows = Math.max(...columns.map((column) => (column ? column.length : 0)));
  const width = PAD * 2 + columns.length * NODE_W + (columns.length - 1) * COL_GAP;
  const height = PAD * 2 + rows * NODE_H + (rows - 1) * ROW_GAP;
  const at = new Map();
  columns.forEach((column, d) => {
    if (!column) return;
    // A column shorter than the tallest is centred.
    const top = PAD + ((rows - column.length) * (NODE_H + ROW_GAP)) / 2;
    column.forEach((step, row) => at.set(step.idx, [PAD + d * (NODE_W + COL_GAP), top + row * (NODE_H + ROW_GAP)]));
  });
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": "plan graph: steps and what each waits for" });
  svg.append(
    s(
      "defs",
      {},
      s("marker", { id: "plan-arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 9, markerHeight: 9, markerUnits: "userSpaceOnUse", orient: "auto" }, s("path", { d: "M0,0 L10,5 L0,10 z", fill: "#9aa5b4" })),
    ),
  );
  const edges = s("g", { class: "plan-edges" });
  const direct = directDependencies(steps);
  for (const step of steps) {
    const [x2, y2] = at.get(step.idx);
    for (const dep of direct.get(step.idx) || []) {
      if (!at.has(dep)) continue;
      const [x1, y1] = at.get(dep);
      const sx = x1 + NODE_W;
      const sy = y1 + NODE_H / 2;
      const ex = x2 - 2;
      const ey = y2 + NODE_H / 2;
      const mid = (sx + ex) / 2;
      edges.append(s("path", { d: `M${sx},${sy} C${mid},${sy} ${mid},${ey} ${ex},${ey}`, fill: "none", stroke: "#9aa5b4", "stroke-width": 1.5, "marker-end": "url(#plan-arrow)", dataset: { from: dep, to: step.idx } }));
    }
  }
  svg.append(edges);
  const agentOf = instances(events);
  const now = new Date().toISOString();
  for (const step of steps) {
    const [x, y] = at.get(step.idx);
    const who = agentOf.get(step.idx) || step.agent || "unassigned";
    const took = stepDuration(step, now);
    const label = step.instruction.length > 34 ? `${step.instruction.slice(0, 33)}…` : step.instruction;
    svg.append(
      s(
        "g",
        { class: `plan-node ${step.status}`, dataset: { step: step.idx, status: step.status, agent: step.agent || "" } },
        s("rect", { x, y, width: NODE_W, height: NODE_H, rx: 7, fill: STATUS_FILL[step.status] || "#eceef1", stroke: step.status === "running" ? "#2f6fd6" : "#c9d1db", "stroke-width": step.status === "running" ? 2 : 1 }),
        s("rect", { x, y, width: 5, height: NODE_H, rx: 2, fill: AGENT_COLOR[step.agent] || "#6b7280" }),
        s("text", { x: x + 12, y: y + 18, class: "plan-title", text: `${step.idx} · ${who}` }),
        s("text", { x: x + NODE_W - 9, y: y + 18, class: "plan-status", "text-anchor": "end", text: `${step.status}${took ? ` · ${took}` : ""}` }),
        s("text", { x: x + 12, y: y + 42, class: "plan-instruction", text: label }),
        s("title", { text: `step ${step.idx} (${who}): ${step.instruction}\n${step.status}${took ? `, ${took}` : ""}${(step.depends_on || []).length ? `\nafter ${step.depends_on.join(", ")}` : "\nwaits for nothing"}` }),
      ),
    );
  }
  return h("div", { class: "plan-graph", "aria-label": "plan graph" }, svg);
}
