// Troupe dashboard, debug mode's breakpoints: the ones in force (GET /api/v1/breakpoints), a form that adds
// one (POST; the server's message shows beside the form when it refuses, and the form keeps what was typed)
// and a button that removes each (DELETE /api/v1/breakpoints/{id}).

import { h, fill, api, post, note, errorBox, clock, shortId, markReady } from "./common.js";

const $ = (id) => document.getElementById(id);
const FIELDS = ["on", "agent", "kind", "tool", "step", "purpose", "when", "task_id"];

/** The form's fields as a request body: empty ones left out, the step a number. */
function body(form) {
  const data = new FormData(form);
  const request = {};
  for (const field of FIELDS) {
    const value = String(data.get(field) ?? "").trim();
    if (!value) continue;
    request[field] = field === "step" && /^\d+$/.test(value) ? Number(value) : value;
  }
  return request;
}

function cell(value, mono = false) {
  if (value === null || value === undefined || value === "") return h("td", { class: "hint", text: "any" });
  return h("td", { class: mono ? "mono" : "", text: String(value) });
}

async function remove(breakpoint, button) {
  button.disabled = true;
  try {
    await api(`/api/v1/breakpoints/${encodeURIComponent(breakpoint.id)}`, { method: "DELETE" });
    await load();
  } catch (error) {
    button.disabled = false;
    fill($("add-result"), errorBox(error));
  }
}

function table(breakpoints) {
  if (!breakpoints.length) return note("no breakpoint is set: tasks run without pausing");
  const hits = breakpoints.some((breakpoint) => breakpoint.hits !== undefined);
  return h(
    "table",
    { class: "breakpoints" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["on", "agent", "kind", "tool", "step", "purpose", "when", "task"].map((name) => h("th", { text: name })),
        hits ? h("th", { class: "num", text: "hits" }) : null,
        h("th", { class: "num", text: "set" }),
        h("th", { text: "" }),
      ),
    ),
    h(
      "tbody",
      {},
      breakpoints.map((breakpoint) => {
        const button = h("button", { type: "button", class: "remove", "aria-label": `remove breakpoint ${shortId(breakpoint.id)}`, text: "Remove" });
        button.addEventListener("click", () => remove(breakpoint, button));
        return h(
          "tr",
          { dataset: { breakpoint: breakpoint.id, on: breakpoint.on } },
          h("td", {}, h("span", { class: "badge paused", text: breakpoint.on })),
          cell(breakpoint.agent),
          cell(breakpoint.kind, true),
          cell(breakpoint.tool, true),
          cell(breakpoint.step),
          cell(breakpoint.purpose, true),
          h("td", { class: "mono when" }, breakpoint.when || h("span", { class: "hint", text: "always" })),
          h("td", {}, breakpoint.task_id ? h("a", { href: `/tasks/${breakpoint.task_id}`, class: "mono", text: shortId(breakpoint.task_id) }) : h("span", { class: "hint", text: "every task" })),
          hits ? h("td", { class: "num", text: breakpoint.hits ?? "–" }) : null,
          h("td", { class: "num", text: clock(breakpoint.created_at) }),
          h("td", {}, button),
        );
      }),
    ),
  );
}

async function load() {
  try {
    const list = await api("/api/v1/breakpoints");
    fill($("breakpoints"), table(list.breakpoints || []));
  } catch (error) {
    fill($("breakpoints"), errorBox(error));
  }
}

function wireForm() {
  const form = $("add");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type='submit']");
    button.disabled = true;
    fill($("add-result"));
    try {
      const created = await post("/api/v1/breakpoints", body(form));
      form.reset();
      fill($("add-result"), h("span", { class: "hint ok-text", text: `added ${shortId(created.id)}` }));
      await load();
    } catch (error) {
      // Refused: the server's reason beside the form; what was typed stays for the person to fix.
      fill($("add-result"), errorBox(error));
    } finally {
      button.disabled = false;
    }
  });
}

async function start() {
  wireForm();
  await load();
  markReady();
}

start();
