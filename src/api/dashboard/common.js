// Troupe dashboard: what both pages share: DOM builders, the API client, formatting, URL state and a
// WebSocket that reconnects with backoff. Everything shown comes from /api/v1.

/** Builds an HTML element: h("a", {href, class, text, onclick}, ...children). */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** Builds an SVG element. */
export function s(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "class") node.setAttribute("class", value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "style") Object.assign(node.style, value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces the children of `node`. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

/** An API failure: the HTTP status and the API's error code and message. */
export class ApiFailure extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** GET a JSON document from the API; throws ApiFailure on a non-2xx answer. */
export async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { headers: { Accept: "application/json" }, ...options });
  } catch (error) {
    throw new ApiFailure(0, "network", `the server did not answer (${error.message})`);
  }
  if (response.status === 401) {
    // Behind a token: the login page brings the person back here.
    window.location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
    throw new ApiFailure(401, "unauthorized", "login required");
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const error = body && body.error ? body.error : {};
    throw new ApiFailure(response.status, error.code || "http", error.message || `HTTP ${response.status}`);
  }
  return body;
}

/** POST a JSON body to the API. */
export function post(path, body) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(body),
  });
}

/** A number of seconds as "850 ms", "4.2 s", "3 m 05 s", "1 h 02 m". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} m ${String(Math.floor(seconds % 60)).padStart(2, "0")} s`;
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} m`;
}

/** A count with thousands separators. */
export function count(n) {
  if (n === null || n === undefined || !Number.isFinite(Number(n))) return "–";
  return Number(n).toLocaleString("en-US");
}

/** US dollars: "$0" for free local models, more digits for small amounts. */
export function usd(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  if (value === 0) return "$0";
  if (value < 0.01) return `$${value.toFixed(5)}`;
  return `$${value.toFixed(value < 1 ? 4 : 2)}`;
}

/** A probability as "0.83". */
export function prob(p) {
  return Number.isFinite(p) ? p.toFixed(2) : "–";
}

/** An RFC 3339 time as local "14:03:21" (with the date when not today). */
export function clock(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "–";
  const time = date.toLocaleTimeString("en-GB", { hour12: false });
  const today = new Date();
  if (date.toDateString() === today.toDateString()) return time;
  return `${date.toISOString().slice(0, 10)} ${time}`;
}

/** Seconds between two RFC 3339 times (or until now when `to` is absent). */
export function secondsBetween(from, to) {
  if (!from) return null;
  const start = Date.parse(from);
  const end = to ? Date.parse(to) : Date.now();
  return Number.isFinite(start) && Number.isFinite(end) ? Math.max(0, (end - start) / 1000) : null;
}

/** A short form of an id for links: its last 8 characters, the random end of a UUIDv7 (its start is the
 * time, the same for ids made together). */
export function shortId(id) {
  const text = String(id || "");
  return text.length > 8 ? text.slice(-8) : text;
}

/** A status badge. */
export function badge(status, title) {
  return h("span", { class: `badge ${status}`, text: String(status).replace("_", " "), title });
}

/** A coloured chip naming an agent. */
export function agentChip(agent) {
  return h("span", { class: `agent-chip ${agent}`, text: agent || "?" });
}

/** A "loading…" or message line. */
export function note(text, kind = "note") {
  return h("div", { class: kind, text });
}

/** An error box for an ApiFailure or any error. */
export function errorBox(error) {
  return h("div", { class: "error-box", role: "alert", text: error && error.message ? error.message : String(error) });
}

/** Reads the page's query string. */
export function query() {
  return new URLSearchParams(location.search);
}

/**
 * Changes the query string: `changes` maps keys to values (null or "" removes them). `push` makes a
 * history entry (back/forward return to it); otherwise the current entry is replaced.
 */
export function setQuery(changes, { push = false, state = null } = {}) {
  const params = query();
  for (const [key, value] of Object.entries(changes)) {
    if (value === null || value === undefined || value === "") params.delete(key);
    else params.set(key, value);
  }
  const text = params.toString();
  const url = `${location.pathname}${text ? `?${text}` : ""}${location.hash}`;
  if (url === `${location.pathname}${location.search}${location.hash}` && !state) return;
  if (push) history.pushState(state, "", url);
  else history.replaceState(state ?? history.state, "", url);
}

/** The WebSocket URL of an API path on this host. */
export function wsUrl(path) {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}${path}`;
}

/**
 * A WebSocket that reconnects with exponential backoff (0.5 s doubling to 10 s) until `close()` or, when
 * `endOnNormalClose`, the server closing it normally. `path()` is read at each (re)connect, so a resumable
 * stream asks from its last seq. `onOpen` runs at each (re)connect, `onEvent` with each parsed frame,
 * `onState` with "connecting" | "open" | "retrying" | "done".
 */
export class LiveSocket {
  constructor({ path, onEvent, onOpen = () => {}, onState = () => {}, endOnNormalClose = false }) {
    Object.assign(this, { path, onEvent, onOpen, onState, endOnNormalClose });
    this.delay = 500;
    this.closed = false;
    this.connect();
  }

  connect() {
    if (this.closed) return;
    this.onState("connecting");
    const socket = new WebSocket(wsUrl(this.path()));
    this.socket = socket;
    socket.onopen = () => {
      this.delay = 500;
      this.onState("open");
      this.onOpen();
    };
    socket.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      this.onEvent(event);
    };
    socket.onclose = (close) => {
      if (this.closed) return;
      if (this.endOnNormalClose && close.code === 1000) {
        this.closed = true;
        this.onState("done");
        return;
      }
      this.onState("retrying");
      const wait = this.delay;
      this.delay = Math.min(this.delay * 2, 10000);
      this.timer = setTimeout(() => this.connect(), wait);
    };
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close();
  }
}

/** Shows a LiveSocket's state in the header's indicator. */
export function liveIndicator(node) {
  const labels = { connecting: "connecting…", open: "live", retrying: "reconnecting…", done: "finished" };
  return (state) => {
    node.dataset.state = state;
    node.textContent = labels[state] || state;
  };
}

/** Runs `work` now and then every `seconds` (not while the tab is hidden); returns a stop function. */
export function every(seconds, work) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try {
        await work();
      } catch (error) {
        console.warn(error);
      }
    }
    timer = setTimeout(tick, seconds * 1000);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/** Calls `work` at most once per animation frame however often it is asked. */
export function coalesce(work) {
  let pending = false;
  return () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      work();
    });
  };
}

/** Tells tests and the benchmark that the first render is complete. */
export function markReady() {
  if (document.body.dataset.ready === "1") return;
  performance.mark("troupe-ready");
  document.body.dataset.ready = "1";
}

/** Pretty JSON of a value, or the text itself when it is a string that is not JSON. */
export function pretty(value) {
  if (typeof value === "string") {
    try {
      return JSON.stringify(JSON.parse(value), null, 2);
    } catch {
      return value;
    }
  }
  return JSON.stringify(value, null, 2);
}

/** The terminal statuses. */
export const TERMINAL = new Set(["completed", "failed", "cancelled"]);

/** The task status an event moves its task to, if any. */
export function statusAfter(kind) {
  return {
    "task.queued": "queued",
    "task.started": "running",
    "task.paused": "paused",
    "task.resumed": "running",
    "task.completed": "completed",
    "task.failed": "failed",
    "task.cancelled": "cancelled",
  }[kind];
}
