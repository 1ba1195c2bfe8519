// Troupe dashboard, experiments: at /experiments the latest ones; at /experiments/{id} one experiment's report
// (per variant the pass rate with its 95% interval, usage and latency, drawn as charts; per pair the
// significance tests), read from /api/v1/experiments and read again every two seconds while it runs.

import { h, s, fill, api, badge, note, errorBox, duration, count, usd, prob, clock, shortId, markReady, liveIndicator } from "./common.js";

const $ = (id) => document.getElementById(id);
const id = decodeURIComponent(location.pathname.split("/")[2] || "");
const live = liveIndicator($("live"));
const COLORS = ["#2f6fd6", "#d9822b", "#0f8b8d", "#7c4dcc"];

async function list() {
  const body = await api("/api/v1/experiments");
  const rows = body.experiments.map((e) =>
    h("tr", { dataset: { experiment: e.id } },
      h("td", {}, h("a", { href: `/experiments/${e.id}`, text: e.name || shortId(e.id) })),
      h("td", {}, badge(e.status)),
      h("td", { text: e.variants.join(" · ") }),
      h("td", { class: "num", text: count(e.runs) }),
      h("td", { text: clock(e.created_at) })));
  fill($("experiment"), h("h1", { text: "Experiments" }),
    rows.length ? h("table", { class: "table" }, h("thead", {}, h("tr", {}, ["name", "status", "variants", "runs", "created"].map((t) => h("th", { text: t })))), h("tbody", {}, rows))
      : note("No experiment yet: POST /api/v1/experiments or troupe experiment run FILE."));
  live("done");
}

/** Pass rates with their 95% intervals as horizontal bars and whiskers, one row per variant. */
function passChart(variants) {
  const width = 560, row = 34, left = 120, right = 70;
  const height = variants.length * row + 28;
  const x = (p) => left + p * (width - left - right);
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": "pass rate per variant with its 95% interval", class: "experiment-chart" });
  for (const p of [0, 0.25, 0.5, 0.75, 1]) {
    svg.append(s("line", { x1: x(p), x2: x(p), y1: 4, y2: height - 20, stroke: "#dde2e8" }), s("text", { x: x(p), y: height - 6, "text-anchor": "middle", class: "axis", text: `${p * 100}%` }));
  }
  variants.forEach((v, i) => {
    const y = 8 + i * row;
    const rate = v.pass_rate ?? 0;
    const [low, high] = v.pass_rate_ci95 || [0, 1];
    svg.append(
      s("text", { x: left - 8, y: y + 15, "text-anchor": "end", class: "label", text: v.name }),
      s("rect", { x: x(0), y, width: Math.max(1, x(rate) - x(0)), height: 20, rx: 3, fill: COLORS[i % COLORS.length], opacity: 0.85, dataset: { variant: v.name, rate } }, s("title", { text: `${v.name}: ${v.passed}/${v.ended} passed (${prob(rate)}), 95% CI ${prob(low)}–${prob(high)}` })),
      s("line", { x1: x(low), x2: x(high), y1: y + 10, y2: y + 10, stroke: "#1d2430", "stroke-width": 1.5, class: "ci" }),
      s("line", { x1: x(low), x2: x(low), y1: y + 4, y2: y + 16, stroke: "#1d2430", "stroke-width": 1.5 }),
      s("line", { x1: x(high), x2: x(high), y1: y + 4, y2: y + 16, stroke: "#1d2430", "stroke-width": 1.5 }),
      s("text", { x: width - right + 8, y: y + 15, class: "value", text: v.pass_rate === null ? "–" : `${(rate * 100).toFixed(0)}%` }),
    );
  });
  return svg;
}

/** Latency p50 (bar) and p95 (tick) per variant. */
function latencyChart(variants) {
  const width = 560, row = 34, left = 120, right = 70;
  const height = variants.length * row + 28;
  const most = Math.max(0.001, ...variants.map((v) => v.latency_p95_seconds || 0));
  const x = (t) => left + (t / most) * (width - left - right);
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": "latency p50 and p95 per variant", class: "experiment-chart" });
  variants.forEach((v, i) => {
    const y = 8 + i * row;
    svg.append(
      s("text", { x: left - 8, y: y + 15, "text-anchor": "end", class: "label", text: v.name }),
      s("rect", { x: x(0), y, width: Math.max(1, x(v.latency_p50_seconds || 0) - x(0)), height: 20, rx: 3, fill: COLORS[i % COLORS.length], opacity: 0.6 }, s("title", { text: `p50 ${duration(v.latency_p50_seconds)}, p95 ${duration(v.latency_p95_seconds)}` })),
      s("line", { x1: x(v.latency_p95_seconds || 0), x2: x(v.latency_p95_seconds || 0), y1: y, y2: y + 20, stroke: "#1d2430", "stroke-width": 2 }),
      s("text", { x: width - right + 8, y: y + 15, class: "value", text: duration(v.latency_p50_seconds) }),
    );
  });
  svg.append(s("text", { x: left, y: height - 6, class: "axis", text: `bar: p50 · tick: p95 (max ${duration(most)})` }));
  return svg;
}

function variantTable(variants) {
  const head = ["variant", "passed", "pass rate", "95% CI", "code steps passed", "tokens / run", "cost", "p50", "p95"];
  return h("table", { class: "table", "aria-label": "variants" },
    h("thead", {}, h("tr", {}, head.map((t) => h("th", { text: t })))),
    h("tbody", {}, variants.map((v) => h("tr", { dataset: { variant: v.name } },
      h("td", { text: v.name }),
      h("td", { class: "num", text: `${v.passed}/${v.ended}` }),
      h("td", { class: "num", text: v.pass_rate === null ? "–" : prob(v.pass_rate) }),
      h("td", { class: "num", text: `${prob(v.pass_rate_ci95[0])}–${prob(v.pass_rate_ci95[1])}` }),
      h("td", { class: "num", text: `${v.code_steps_passed}/${v.code_steps}` }),
      h("td", { class: "num", text: v.tokens_per_run === null ? "–" : count(Math.round(v.tokens_per_run)) }),
      h("td", { class: "num", text: usd(v.cost_usd) }),
      h("td", { class: "num", text: duration(v.latency_p50_seconds) }),
      h("td", { class: "num", text: duration(v.latency_p95_seconds) })))));
}

function pairTable(pairs) {
  const head = ["pair", "Δ pass rate", "Fisher p", "Cohen's h", "latency (Mann-Whitney) p", "rank-biserial"];
  const p = (value, significant) => h("td", { class: `num ${significant ? "significant" : ""}`, text: value.toFixed(4), title: significant ? "significant at 0.05" : "not significant at 0.05" });
  return h("table", { class: "table", "aria-label": "pairs" },
    h("thead", {}, h("tr", {}, head.map((t) => h("th", { text: t })))),
    h("tbody", {}, pairs.map((pair) => h("tr", { dataset: { a: pair.a, b: pair.b } },
      h("td", { text: `${pair.a} vs ${pair.b}` }),
      h("td", { class: "num", text: pair.pass_rate.difference.toFixed(3) }),
      p(pair.pass_rate.p_value, pair.pass_rate.significant_at_0_05),
      h("td", { class: "num", text: pair.pass_rate.cohens_h.toFixed(3) }),
      p(pair.latency.p_value, pair.latency.significant_at_0_05),
      h("td", { class: "num", text: pair.latency.rank_biserial.toFixed(3) })))));
}

function runsList(runs) {
  return h("details", {}, h("summary", { text: `${runs.length} runs` }),
    h("table", { class: "table" }, h("tbody", {}, runs.map((run) => h("tr", {},
      h("td", { text: run.variant }), h("td", { text: `prompt ${run.prompt} · ${run.repetition}` }),
      h("td", {}, run.task ? h("a", { href: `/tasks/${run.task}`, text: shortId(run.task) }) : h("span", { class: "hint", text: run.error || "not submitted yet" })),
      h("td", {}, run.status ? badge(run.status) : null),
      h("td", { text: run.passed === null ? "" : run.passed ? "passed" : "did not pass" }))))));
}

async function one() {
  const report = await api(`/api/v1/experiments/${id}`);
  const ended = report.variants.reduce((n, v) => n + v.ended, 0);
  fill($("experiment"),
    h("div", { class: "title" }, h("h1", { text: report.name || `experiment ${shortId(report.id)}` }), badge(report.status)),
    h("p", { class: "hint", text: `${report.spec.prompts.length} prompts × ${report.variants.length} variants × ${report.spec.repetitions} repetitions · ${ended} of ${report.runs.length} runs ended · created ${clock(report.created_at)}` }),
    h("h2", { text: "Pass rate" }), passChart(report.variants),
    h("h2", { text: "Latency" }), latencyChart(report.variants),
    h("h2", { text: "Variants" }), variantTable(report.variants),
    h("h2", { text: "Pairs" }), pairTable(report.pairs),
    runsList(report.runs));
  if (report.status === "completed") live("done");
  else {
    live("open");
    setTimeout(() => one().catch(show), 2000);
  }
}

function show(error) {
  fill($("experiment"), errorBox(error));
  live("done");
}

(id ? one() : list()).catch(show).finally(markReady);
