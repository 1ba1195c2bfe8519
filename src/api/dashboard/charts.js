// Troupe dashboard: charts drawn as SVG by hand (no library): time-series lines, stacked bars, a plain bar
// chart and the collaboration graph. Each returns an element; hovering a time chart shows its values.

import { h, s, clock } from "./common.js";

const W = 560;
const PAD = { left: 44, right: 12, top: 10, bottom: 22 };

/** "Nice" upper bound and step for an axis from 0 to `max`. */
function niceScale(max, ticks = 4) {
  if (!(max > 0)) return { top: 1, step: 0.25 };
  const raw = max / ticks;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * power).find((f) => f >= raw) || raw;
  return { top: step * Math.ceil(max / step), step };
}

function tickLabel(value) {
  if (value >= 1000) return `${(value / 1000).toFixed(value >= 10000 ? 0 : 1)}k`;
  return Number.isInteger(value) ? String(value) : value.toFixed(value < 1 ? 2 : 1);
}

function axes(svg, { height, top, step, times }) {
  const plotH = height - PAD.top - PAD.bottom;
  const y = (v) => PAD.top + plotH - (v / top) * plotH;
  const grid = s("g", { class: "axis" });
  for (let v = 0; v <= top + 1e-9; v += step) {
    grid.append(
      s("line", { class: "grid-line", x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v) }),
      s("text", { x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end", text: tickLabel(v) }),
    );
  }
  grid.append(s("line", { class: "axis-line", x1: PAD.left, x2: W - PAD.right, y1: y(0), y2: y(0) }));
  if (times.length) {
    const first = times[0];
    const last = times[times.length - 1];
    grid.append(
      s("text", { x: PAD.left, y: height - 6, text: clock(first) }),
      s("text", { x: W - PAD.right, y: height - 6, "text-anchor": "end", text: clock(last) }),
    );
  }
  svg.append(grid);
  return y;
}

/** Groups consecutive samples into at most `buckets` buckets, each reduced by `reduce(samples)`. */
export function bucket(samples, buckets, reduce) {
  if (samples.length <= buckets) return samples.map((sample) => reduce([sample]));
  const size = Math.ceil(samples.length / buckets);
  const out = [];
  for (let i = 0; i < samples.length; i += size) out.push(reduce(samples.slice(i, i + size)));
  return out;
}

/**
 * A line chart. `points` is [{t, values: {name: number}}], `series` [{key, label, color}]. `unit` is appended
 * in the hover readout.
 */
export function lineChart({ points, series, height = 170, unit = "" }) {
  const readout = h("div", { class: "readout", "aria-live": "off" });
  const svg = s("svg", { viewBox: `0 0 ${W} ${height}`, role: "img" });
  const max = Math.max(0, ...points.flatMap((point) => series.map((line) => point.values[line.key] || 0)));
  const { top, step } = niceScale(max);
  const times = points.map((point) => point.t);
  const y = axes(svg, { height, top, step, times });
  const plotW = W - PAD.left - PAD.right;
  const x = (i) => PAD.left + (points.length <= 1 ? plotW : (i / (points.length - 1)) * plotW);
  for (const line of series) {
    const coords = points.map((point, i) => `${x(i).toFixed(1)},${y(point.values[line.key] || 0).toFixed(1)}`);
    if (coords.length === 1) coords.unshift(`${PAD.left},${coords[0].split(",")[1]}`);
    svg.append(
      s("polyline", {
        points: coords.join(" "),
        fill: "none",
        stroke: line.color,
        "stroke-width": 2,
        "stroke-linejoin": "round",
      }),
    );
  }
  const cursor = s("line", { y1: PAD.top, y2: height - PAD.bottom, stroke: "#9aa5b4", visibility: "hidden" });
  svg.append(cursor);
  const describe = (i) => {
    const point = points[i];
    if (!point) return "";
    const parts = series.map((line) => `${line.label} ${tickLabel(point.values[line.key] || 0)}${unit}`);
    return `${clock(point.t)} · ${parts.join(" · ")}`;
  };
  readout.textContent = points.length ? `now: ${describe(points.length - 1)}` : "no samples yet";
  svg.addEventListener("mousemove", (event) => {
    const box = svg.getBoundingClientRect();
    const px = ((event.clientX - box.left) / box.width) * W;
    const i = Math.round(((px - PAD.left) / plotW) * (points.length - 1));
    const index = Math.max(0, Math.min(points.length - 1, i));
    cursor.setAttribute("x1", x(index));
    cursor.setAttribute("x2", x(index));
    cursor.setAttribute("visibility", "visible");
    readout.textContent = describe(index);
  });
  svg.addEventListener("mouseleave", () => {
    cursor.setAttribute("visibility", "hidden");
    readout.textContent = points.length ? `now: ${describe(points.length - 1)}` : "";
  });
  return h("div", { class: "chart" }, svg, legend(series), readout);
}

/** Stacked bars per bucket (`bars`: [{t, values}]) and an optional line on a 0..1 right axis. */
export function stackedBars({ bars, series, rate, height = 170 }) {
  const readout = h("div", { class: "readout" });
  const svg = s("svg", { viewBox: `0 0 ${W} ${height}`, role: "img" });
  const totals = bars.map((bar) => series.reduce((sum, part) => sum + (bar.values[part.key] || 0), 0));
  const { top, step } = niceScale(Math.max(1, ...totals));
  const y = axes(svg, { height, top, step, times: bars.map((bar) => bar.t) });
  const plotW = W - PAD.left - PAD.right;
  const slot = plotW / Math.max(1, bars.length);
  const barW = Math.max(1, slot * 0.78);
  const describe = (i) => {
    const bar = bars[i];
    const parts = series.map((part) => `${part.label} ${bar.values[part.key] || 0}`);
    if (rate) parts.push(`${rate.label} ${Math.round((bar.values[rate.key] || 0) * 100)}%`);
    return `${clock(bar.t)} · ${parts.join(" · ")}`;
  };
  bars.forEach((bar, i) => {
    let base = 0;
    const group = s("g", {});
    for (const part of series) {
      const value = bar.values[part.key] || 0;
      if (!value) continue;
      group.append(
        s("rect", {
          x: PAD.left + i * slot + (slot - barW) / 2,
          y: y(base + value),
          width: barW,
          height: Math.max(0.5, y(base) - y(base + value)),
          fill: part.color,
        }),
      );
      base += value;
    }
    group.append(s("rect", { x: PAD.left + i * slot, y: PAD.top, width: slot, height: height - PAD.top - PAD.bottom, fill: "transparent" }));
    group.addEventListener("mouseenter", () => (readout.textContent = describe(i)));
    svg.append(group);
  });
  if (rate) {
    const plotH = height - PAD.top - PAD.bottom;
    const ry = (v) => PAD.top + plotH - v * plotH;
    const coords = bars.map((bar, i) => `${(PAD.left + i * slot + slot / 2).toFixed(1)},${ry(bar.values[rate.key] || 0).toFixed(1)}`);
    if (coords.length > 1) {
      svg.append(s("polyline", { points: coords.join(" "), fill: "none", stroke: rate.color, "stroke-width": 1.8, "stroke-dasharray": "4 3" }));
    }
    svg.append(s("text", { x: W - PAD.right, y: PAD.top + 8, "text-anchor": "end", text: "error rate →100%" }));
  }
  svg.addEventListener("mouseleave", () => (readout.textContent = summary()));
  const summary = () => {
    const sums = series.map((part) => `${part.label} ${bars.reduce((sum, bar) => sum + (bar.values[part.key] || 0), 0)}`);
    return `in view: ${sums.join(" · ")}`;
  };
  readout.textContent = summary();
  return h("div", { class: "chart" }, svg, legend(rate ? [...series, { ...rate, dashed: true }] : series), readout);
}

function legend(series) {
  return h(
    "div",
    { class: "legend" },
    series.map((line) => h("span", {}, h("span", { class: "swatch", style: { background: line.color } }), line.label)),
  );
}

/** A horizontal bar chart of labelled numbers (for results that hold numbers). */
export function barChart(items, { color = "#2f6fd6" } = {}) {
  const rowH = 22;
  const labelW = 150;
  const height = items.length * rowH + 8;
  const max = Math.max(0, ...items.map((item) => Math.abs(item.value)));
  const svg = s("svg", { viewBox: `0 0 ${W} ${height}`, role: "img" });
  items.forEach((item, i) => {
    const width = max > 0 ? (Math.abs(item.value) / max) * (W - labelW - 70) : 0;
    const top = 4 + i * rowH;
    svg.append(
      s("text", { x: labelW - 8, y: top + 14, "text-anchor": "end", text: String(item.label).slice(0, 24) }),
      s("rect", { x: labelW, y: top + 3, width: Math.max(1, width), height: rowH - 8, fill: color, rx: 2 }, s("title", { text: `${item.label}: ${item.value}` })),
      s("text", { x: labelW + width + 6, y: top + 14, text: String(item.value) }),
    );
  });
  return h("div", { class: "chart" }, svg);
}

const NODE_COLORS = { director: "#7c4dcc", research: "#0f8b8d", code: "#2f6fd6", qa: "#d9822b" };
const NODE_AT = { director: [280, 50], research: [80, 230], code: [280, 230], qa: [480, 230] };

/**
 * The collaboration graph: agents as nodes (director on top, the specialists below), an arrow per
 * (from, to) pair with its count; line width grows with the count. Two opposite edges curve apart.
 */
export function collaborationGraph(edges) {
  const height = 290;
  const svg = s("svg", { viewBox: `0 0 ${W} ${height}`, role: "img", "aria-label": "who handed work to whom" });
  const defs = s(
    "defs",
    {},
    s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 11, markerHeight: 11, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" }, s("path", { d: "M0,0 L10,5 L0,10 z", fill: "#9aa5b4" })),
  );
  svg.append(defs);
  const names = new Set(Object.keys(NODE_AT));
  for (const edge of edges) {
    names.add(edge.from);
    names.add(edge.to);
  }
  const at = { ...NODE_AT };
  let extra = 0;
  for (const name of names) {
    if (!at[name]) at[name] = [90 + 190 * (extra++ % 3), 150];
  }
  const max = Math.max(1, ...edges.map((edge) => edge.count));
  const radius = 36;
  const edgeLayer = s("g", {});
  const labelLayer = s("g", {});
  for (const edge of edges) {
    const [x1, y1] = at[edge.from];
    const [x2, y2] = at[edge.to];
    const title = s("title", { text: `${edge.from} → ${edge.to}: ${edge.count}` });
    if (edge.from === edge.to) {
      const d = `M${x1 - 14},${y1 - radius + 2} C${x1 - 50},${y1 - 90} ${x1 + 50},${y1 - 90} ${x1 + 14},${y1 - radius + 2}`;
      edgeLayer.append(s("g", { class: "edge" }, s("path", { d, "stroke-width": 1.5 + 3 * (edge.count / max), "marker-end": "url(#arrow)" }, title)));
      labelLayer.append(edgeLabel(x1, y1 - 78, edge.count));
      continue;
    }
    const dx = x2 - x1;
    const dy = y2 - y1;
    const length = Math.hypot(dx, dy) || 1;
    const ux = dx / length;
    const uy = dy / length;
    const reverse = edges.some((other) => other.from === edge.to && other.to === edge.from);
    const bend = reverse ? 28 : 0;
    const sx = x1 + ux * radius;
    const sy = y1 + uy * radius;
    const ex = x2 - ux * (radius + 3);
    const ey = y2 - uy * (radius + 3);
    // The control point sits off the middle, to the right of the direction of travel.
    const cx = (sx + ex) / 2 - uy * bend;
    const cy = (sy + ey) / 2 + ux * bend;
    const d = `M${sx.toFixed(1)},${sy.toFixed(1)} Q${cx.toFixed(1)},${cy.toFixed(1)} ${ex.toFixed(1)},${ey.toFixed(1)}`;
    edgeLayer.append(s("g", { class: "edge" }, s("path", { d, "stroke-width": 1.5 + 3 * (edge.count / max), "marker-end": "url(#arrow)" }, title)));
    // The label at the curve's midpoint (a quadratic's t = 0.5).
    labelLayer.append(edgeLabel(0.25 * sx + 0.5 * cx + 0.25 * ex, 0.25 * sy + 0.5 * cy + 0.25 * ey, edge.count));
  }
  svg.append(edgeLayer);
  for (const name of names) {
    const [x, y] = at[name];
    svg.append(
      s("g", { class: "node" }, s("circle", { cx: x, cy: y, r: radius, fill: NODE_COLORS[name] || "#6b7280" }), s("text", { x, y, text: name.length > 9 ? name.slice(0, 8) + "…" : name }), s("title", { text: name })),
    );
  }
  svg.append(labelLayer);
  return h("div", { class: "graph" }, svg);
}

function edgeLabel(x, y, value) {
  const text = String(value);
  const width = 10 + 7 * text.length;
  return s("g", { class: "edge" }, s("rect", { x: x - width / 2, y: y - 9, width, height: 18, rx: 9 }), s("text", { x, y: y + 0.5, text }));
}
