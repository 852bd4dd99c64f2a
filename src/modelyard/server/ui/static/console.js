// Shared by every console page: calling the management API, building DOM safely, formatting, copying.
//
// Every request carries the session's CSRF token (X-Modelyard-CSRF); the session cookie itself is
// HttpOnly and travels on its own. A 401 sends the browser back to the sign-in page.

export const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";
export const pageData = JSON.parse(document.getElementById("page-data")?.textContent || "{}");

/** Endpoint and deployment names (serving/spec.py NAME). */
export const NAME_RE = /^[A-Za-z][A-Za-z0-9-]{2,31}$/;

/** What is wrong with a name, in words, or null when it is fine. */
export function nameProblem(value, what) {
  if (!value) return `Give the ${what} a name.`;
  if (value.length < 3 || value.length > 32) return `${cap(what)} names are 3–32 characters long ("${value}" has ${value.length}).`;
  if (!/^[A-Za-z]/.test(value)) return `${cap(what)} names start with a letter.`;
  if (!NAME_RE.test(value)) return `${cap(what)} names use only letters, digits and dashes ("${value}" has ${JSON.stringify(value.replace(/[A-Za-z0-9-]/g, "").slice(0, 3))}).`;
  return null;
}

function cap(s) { return s.charAt(0).toUpperCase() + s.slice(1); }

/** A failed API call: the OpenAI error object's message, param and code. */
export class ApiError extends Error {
  constructor(status, body, text) {
    const err = body && body.error ? body.error : null;
    super(err?.message || (text ? `HTTP ${status}: ${text.slice(0, 200)}` : `HTTP ${status}`));
    this.status = status;
    this.param = err?.param || null;
    this.code = err?.code || null;
  }
}

function toLogin() {
  location.href = "/ui/login?next=" + encodeURIComponent(location.pathname + location.search);
}

/** Call the management API (or /ui/proxy/v1/...) and return the parsed JSON; throws ApiError. */
export async function api(method, path, body, extraHeaders = {}) {
  const init = { method, credentials: "same-origin", headers: { "X-Modelyard-CSRF": csrf, ...extraHeaders } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, null, `the gateway did not answer (${e.message})`);
  }
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (res.status === 401 && !path.startsWith("/ui/proxy")) toLogin();
  if (!res.ok) throw new ApiError(res.status, json, text);
  json = json ?? {};
  Object.defineProperty(json, "_headers", { value: res.headers, enumerable: false });
  return json;
}

/** The events of a server-sent-event response body, as {event, data} with data parsed from JSON ([DONE] left out). */
export async function* serverEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        const text = data.join("\n");
        if (data.length && text !== "[DONE]") yield { event, data: JSON.parse(text) };
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/** Stream a chat completion through the console proxy; calls onDelta(text) per chunk. */
export async function streamChat(body, { headers = {}, onDelta, signal } = {}) {
  const res = await fetch("/ui/proxy/v1/chat/completions", {
    method: "POST", credentials: "same-origin", signal,
    headers: { "Content-Type": "application/json", "X-Modelyard-CSRF": csrf, ...headers },
    body: JSON.stringify({ ...body, stream: true }),
  });
  if (!res.ok) {
    const text = await res.text();
    let json = null;
    try { json = JSON.parse(text); } catch { json = null; }
    throw new ApiError(res.status, json, text);
  }
  let text = "", chunks = 0;
  for await (const { data: msg } of serverEvents(res.body)) {
    if (msg.error) throw new ApiError(500, msg, "");
    const delta = msg.choices?.[0]?.delta?.content || "";
    if (delta) {
      text += delta;
      chunks += 1;
      onDelta?.(delta, text);
    }
  }
  return { text, chunks, headers: res.headers };
}

/** Build an element: el("a", {href: "/x", class: "button"}, "text", child). Text is never parsed as HTML. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Show a message under a form field (or hide it with an empty message). */
export function showError(node, message) {
  if (!node) return;
  node.textContent = message || "";
  node.hidden = !message;
}

let toastTimer = null;
/** A short message at the bottom of the page. */
export function toast(message, kind = "info") {
  const box = document.getElementById("toast");
  if (!box) return;
  box.textContent = message;
  box.className = `toast ${kind}`;
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, 3500);
}

/** Copy text to the clipboard (the Clipboard API, or a hidden textarea where it is refused). */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = el("textarea", { class: "visually-hidden", "aria-hidden": "true" }, text);
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  toast("Copied to the clipboard", "ok");
}

/** Wire every [data-copy="#selector"] button under root to copy that element's text. */
export function setupCopyButtons(root = document) {
  root.querySelectorAll("[data-copy]").forEach((button) => {
    button.addEventListener("click", () => {
      const target = document.querySelector(button.dataset.copy);
      if (target) copyText(target.dataset.value || target.textContent);
    });
  });
}

export const fmt = {
  num(v, digits = 0) {
    if (v === null || v === undefined || Number.isNaN(v)) return "—";
    return Number(v).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
  },
  usd(v) {
    if (v === null || v === undefined) return "—";
    const abs = Math.abs(v);
    const digits = abs === 0 ? 2 : abs < 0.01 ? 6 : abs < 1 ? 4 : 2;
    return "$" + Number(v).toFixed(digits);
  },
  ms(v) { return v === null || v === undefined ? "—" : `${fmt.num(v, v < 10 ? 1 : 0)} ms`; },
  pct(v, digits = 1) { return v === null || v === undefined ? "—" : `${(v * 100).toFixed(digits)}%`; },
  mb(v) { return v === null || v === undefined ? "—" : `${fmt.num(v)} MB`; },
  time(iso, withDate = false) {
    const d = new Date(iso);
    const hm = d.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" });
    return withDate ? `${d.toLocaleDateString("en-GB", { day: "2-digit", month: "short" })} ${hm}` : hm;
  },
  when(seconds) {
    if (!seconds) return "—";
    return new Date(seconds * 1000).toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "short" });
  },
};

/** A small "state" pill: ready (green), starting (amber), failed (red)… */
export function statePill(state) {
  return el("span", { class: `pill state-${state}` }, state);
}

/** Ask before doing something that cannot be undone (a modal dialog); resolves to true or false. */
export function confirmAction(message, confirmLabel = "Confirm") {
  return new Promise((resolve) => {
    const yes = el("button", { type: "button", class: "danger", id: "confirm-yes" }, confirmLabel);
    const no = el("button", { type: "button", id: "confirm-no" }, "Cancel");
    const dialog = el("dialog", { class: "confirm", "aria-labelledby": "confirm-text" },
      el("p", { id: "confirm-text" }, message), el("div", { class: "row end" }, no, yes));
    const close = (answer) => { dialog.close(); dialog.remove(); resolve(answer); };
    yes.addEventListener("click", () => close(true));
    no.addEventListener("click", () => close(false));
    dialog.addEventListener("cancel", (ev) => { ev.preventDefault(); close(false); });
    document.body.append(dialog);
    dialog.showModal();
    no.focus();
  });
}

/** Tabs: [role=tab][data-tab] buttons show #panel-ID; the URL hash remembers the open one. */
export function setupTabs(onShow) {
  const tabs = [...document.querySelectorAll('[role="tab"][data-tab]')];
  const show = (id) => {
    tabs.forEach((tab) => {
      const on = tab.dataset.tab === id;
      tab.setAttribute("aria-selected", on ? "true" : "false");
      document.getElementById(`panel-${tab.dataset.tab}`).hidden = !on;
    });
    onShow?.(id);
  };
  tabs.forEach((tab) => tab.addEventListener("click", () => {
    history.replaceState(null, "", `#${tab.dataset.tab}`);
    show(tab.dataset.tab);
  }));
  document.querySelectorAll("[data-goto]").forEach((a) => a.addEventListener("click", (ev) => {
    ev.preventDefault();
    history.replaceState(null, "", `#${a.dataset.goto}`);
    show(a.dataset.goto);
  }));
  const fromHash = () => {
    const id = location.hash.slice(1);
    show(tabs.some((t) => t.dataset.tab === id) ? id : tabs[0]?.dataset.tab);
  };
  window.addEventListener("hashchange", fromHash);
  fromHash();
  return show;
}
