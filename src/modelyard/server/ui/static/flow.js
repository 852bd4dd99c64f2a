// One flow: its graph (an SVG drawn by the server, coloured here as nodes end), a Test panel that runs the
// flow streamed and shows each node's output as the node ends, the run history, and a run's trace as a
// waterfall (a bar per node from its start to its end, relative to the run's start).
//
// A streamed run is a POST answered with server-sent events (`node_start`, `node`, `delta`, `done` or
// `error`), so it is read with fetch and a ReadableStream reader: EventSource can only GET.

import { ApiError, api, csrf, el, fmt, pageData, serverEvents, showError } from "./console.js";
import { runPill } from "./flows.js";

const $ = (id) => document.getElementById(id);
const flow = pageData.flow;
const streamed = pageData.streamed_node;
const base = `/api/flows/${encodeURIComponent(flow.name)}`;
// The run route takes the console's session cookie (with the CSRF header) in place of a key.
const RUN_URL = `/api/flows/${encodeURIComponent(flow.name)}/run`;
/** The nodes in the graph's order (level by level, top to bottom). */
const order = [...document.querySelectorAll("#dag [data-node]")].map((g) => g.dataset.node);

const STATE_TEXT = { waiting: "waiting", running: "running…", streaming: "streaming…", ok: "ok", error: "error", bypassed: "bypassed",
                     cancelled: "cancelled", skipped: "not run" };
const STATE_PILL = { waiting: "state-new", running: "state-running", streaming: "state-running", ok: "state-ready", error: "state-failed",
                     bypassed: "state-stopped", cancelled: "state-cancelled", skipped: "state-stopped" };

// --- showing values ------------------------------------------------------------------------------

/** A span's inputs/output preview (JSON text, maybe cut) or an output value, as text to read. */
function readable(value, isPreview = false) {
  if (value === null || value === undefined) return "";
  if (isPreview) {
    try { value = JSON.parse(value); } catch { return String(value); }  // a cut preview is not JSON
  }
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

function tokens(s) {
  return (s.prompt_tokens || 0) + (s.completion_tokens || 0);
}

/** What one span says about where it ran: "12 ms · 30 tokens · $0.000040 · small/small · cache miss". */
function spanFacts(s) {
  const where = s.endpoint ? `${s.endpoint}${s.deployment ? `/${s.deployment}` : ""}` : null;
  return [fmt.ms(s.latency_ms), tokens(s) ? `${fmt.num(tokens(s))} tokens` : null, fmt.usd(s.cost_usd || 0), where,
          s.cache ? `cache ${s.cache}` : null, s.attempts > 1 ? `${s.attempts} attempts` : null].filter(Boolean);
}

// --- the graph -----------------------------------------------------------------------------------

function paintGraph(node, state) {
  const box = document.querySelector(`#dag [data-node="${CSS.escape(node)}"]`);
  if (box) box.dataset.state = state;
}

// --- the Test panel ------------------------------------------------------------------------------

/** The form's values as the run's inputs; throws an Error naming the field whose JSON does not parse. */
function readInputs() {
  const inputs = {};
  for (const field of document.querySelectorAll("#run-form [data-input]")) {
    field.setAttribute("aria-invalid", "false");
    const name = field.dataset.input;
    const type = field.dataset.type;
    if (type === "bool") inputs[name] = field.checked;
    else if (type === "int" || type === "double") {
      if (field.value !== "") inputs[name] = Number(field.value);
    } else if (type === "json") {
      try { inputs[name] = JSON.parse(field.value || "null"); } catch (err) {
        field.setAttribute("aria-invalid", "true");
        field.focus();
        throw new Error(`Input '${name}' is not valid JSON: ${err.message}`);
      }
    } else inputs[name] = field.value;
  }
  return inputs;
}

function readVariants() {
  const chosen = {};
  document.querySelectorAll("#run-form [data-variant-of]").forEach((sel) => { chosen[sel.dataset.variantOf] = sel.value; });
  return chosen;
}

const cards = new Map();

function nodeCard(name) {
  const pill = el("span", { class: "pill" });
  const meta = el("span", { class: "muted small node-meta" });
  const output = el("pre", { class: "node-output", "aria-label": `Output of ${name}` });
  const error = el("p", { class: "error-text node-error", hidden: true });
  const item = el("li", { class: "node-out", dataset: { node: name } },
    el("div", { class: "node-out-head" }, el("span", { class: "mono strong" }, name), pill, meta), output, error);
  const card = { item, pill, meta, output, error, text: "" };
  setState(card, name, "waiting");
  return card;
}

function setState(card, name, state) {
  card.item.dataset.state = state;
  card.pill.className = `pill ${STATE_PILL[state] || ""}`;
  card.pill.textContent = STATE_TEXT[state] || state;
  paintGraph(name, state);
}

function startRun() {
  cards.clear();
  $("node-outputs").replaceChildren(...order.map((name) => {
    const card = nodeCard(name);
    cards.set(name, card);
    return card.item;
  }));
  $("run-answer").hidden = true;
  $("run-outputs").replaceChildren();
  $("run-status").textContent = "Running…";
  $("run-status").className = "muted";
}

function onStart(span) {
  const card = cards.get(span.node);
  if (card && card.item.dataset.state === "waiting") setState(card, span.node, "running");
}

function onNode(span) {
  const card = cards.get(span.node);
  if (!card) return;
  setState(card, span.node, span.status);
  card.meta.textContent = spanFacts(span).join(" · ");
  if (span.status === "ok") card.output.textContent = readable(span.output, true);
  else if (span.status === "bypassed") card.output.textContent = "(bypassed)";
  if (span.error) {
    card.error.textContent = span.error;
    card.error.hidden = false;
  }
}

let liveAnswer = null;

function onDelta(text) {
  const card = streamed ? cards.get(streamed) : null;
  if (card && card.item.dataset.state !== "ok") {
    if (["waiting", "running"].includes(card.item.dataset.state)) setState(card, streamed, "streaming");
    card.text += text;
    card.output.textContent = card.text;
  }
  if (!liveAnswer) {
    liveAnswer = el("pre", { class: "node-output", id: "run-live" });
    $("run-outputs").replaceChildren(el("dt", {}, "answer"), el("dd", {}, liveAnswer));
    $("run-answer").hidden = false;
  }
  liveAnswer.textContent += text;
}

function showOutputs(outputs) {
  $("run-outputs").replaceChildren(...Object.entries(outputs || {}).flatMap(([key, value]) => [
    el("dt", { class: "mono" }, key), el("dd", {}, el("pre", { class: "node-output", dataset: { output: key } }, readable(value)))]));
  $("run-answer").hidden = false;
}

function endRun() {
  liveAnswer = null;
  for (const [name, card] of cards) {
    if (card.item.dataset.state === "waiting" || card.item.dataset.state === "streaming") setState(card, name, "skipped");
  }
}

function onDone(done) {
  endRun();
  showOutputs(done.outputs);
  const t = done.trace || {};
  $("run-status").replaceChildren(el("span", { class: "pill state-ready" }, "done"), " ",
    `${fmt.ms(t.latency_ms)} · ${fmt.num(tokens(t))} tokens · ${fmt.usd(done.cost_usd)} · run `, el("code", {}, done.id));
  $("run-status").className = "";
  showTrace(done.trace, done.id);
  loadRuns();
}

function onFailed(body) {
  endRun();
  const message = body.error?.message || "The run failed.";
  $("run-status").replaceChildren(el("span", { class: "pill state-failed" }, "failed"), " ", message);
  $("run-status").className = "error-text";
  showError($("run-error"), message);
  if (body.trace) showTrace(body.trace, body.trace.run_id);
  loadRuns();
}

async function run(ev) {
  ev.preventDefault();
  const error = $("run-error");
  showError(error, "");
  let body;
  try {
    body = { inputs: readInputs(), variants: readVariants(), stream: true };
  } catch (err) {
    showError(error, err.message);
    return;
  }
  const button = $("run");
  button.disabled = true;
  startRun();
  try {
    const res = await fetch(RUN_URL, {
      method: "POST", credentials: "same-origin", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json", Accept: "text/event-stream", "X-Modelyard-CSRF": csrf },
    });
    if (!res.ok) {
      const text = await res.text();
      let json = null;
      try { json = JSON.parse(text); } catch { json = null; }
      const err = new ApiError(res.status, json, text);
      err.runId = res.headers.get("x-request-id");
      throw err;
    }
    let ended = false;
    for await (const { event, data } of serverEvents(res.body)) {
      if (event === "node_start") onStart(data);
      else if (event === "node") onNode(data);
      else if (event === "delta") onDelta(data.delta || "");
      else if (event === "done") { onDone(data); ended = true; }
      else if (event === "error") { onFailed(data); ended = true; }
    }
    if (!ended) throw new Error("The run's stream ended before the run did.");
  } catch (err) {
    endRun();
    $("run-status").replaceChildren(el("span", { class: "pill state-failed" }, "failed"),
      err.status ? ` HTTP ${err.status}${err.code ? ` ${err.code}` : ""}` : "");
    $("run-status").className = "";
    showError(error, err.message);
    const field = err.param && document.querySelector(`#run-form [data-input="${CSS.escape(err.param.replace(/^inputs\./, ""))}"]`);
    if (field) field.setAttribute("aria-invalid", "true");
    // A run that failed before its stream began answered with a plain error; it is recorded with its trace.
    if (err.runId) {
      await loadRuns();
      if (document.querySelector(`#runs-table tr[data-run="${CSS.escape(err.runId)}"]`)) {
        const run = await openRun(err.runId);
        (run?.trace?.spans || []).forEach(onNode);
      }
    }
  } finally {
    button.disabled = false;
  }
}

// --- run history ---------------------------------------------------------------------------------

let selected = null;

function markSelected() {
  document.querySelectorAll("#runs-table tbody tr").forEach((tr) => {
    tr.setAttribute("aria-selected", tr.dataset.run === selected ? "true" : "false");
  });
}

async function loadRuns() {
  showError($("runs-error"), "");
  let runs;
  try {
    runs = (await api("GET", `${base}/runs?limit=25`)).data || [];
  } catch (err) {
    showError($("runs-error"), err.message);
    return;
  }
  $("runs-table").querySelector("tbody").replaceChildren(...runs.map((r) => el("tr", { dataset: { run: r.id } },
    el("td", {}, el("button", { type: "button", class: "link mono", title: "Show this run's trace", onclick: () => openRun(r.id) }, r.id)),
    el("td", { class: "nowrap" }, fmt.time(r.created_at, true)),
    el("td", {}, runPill(r), r.stream ? el("span", { class: "muted small" }, " streamed") : null),
    el("td", { class: "num" }, fmt.num((r.prompt_tokens || 0) + (r.completion_tokens || 0))),
    el("td", { class: "num" }, fmt.usd(r.cost_usd)),
    el("td", { class: "num" }, fmt.ms(r.latency_ms)))));
  $("no-runs").hidden = runs.length > 0;
  markSelected();
}

async function openRun(id) {
  let run;
  try {
    run = await api("GET", `${base}/runs/${encodeURIComponent(id)}`);
  } catch (err) {
    showError($("runs-error"), err.message);
    return null;
  }
  history.replaceState(null, "", `#run-${id}`);
  showTrace(run.trace, id, run);
  $("trace").scrollIntoView({ block: "nearest" });
  return run;
}

// --- the trace waterfall -------------------------------------------------------------------------

/** A run's trace: a summary line, a time axis and a bar per span (left: when it started after the run
 *  did; width: how long it took), coloured by status, with its latency, tokens, USD, endpoint and cache. */
function showTrace(trace, id, run = null) {
  selected = id;
  markSelected();
  $("trace").hidden = false;
  $("trace-title").replaceChildren("Trace of run ", el("code", {}, id || "?"));
  const box = $("waterfall");
  if (!trace || !trace.spans) {
    $("trace-summary").textContent = "";
    box.replaceChildren(el("p", { class: "empty" }, "No trace was stored for this run."));
    return;
  }
  const spans = trace.spans;
  const t0 = trace.started_at ?? Math.min(...spans.map((s) => s.started_at));
  const t1 = Math.max(trace.ended_at ?? t0, ...spans.map((s) => s.ended_at ?? s.started_at));
  const total = Math.max(t1 - t0, 0.001);
  const totalMs = trace.latency_ms ?? total * 1000;
  $("trace-summary").replaceChildren(
    el("span", { class: `pill ${trace.status === "ok" ? "state-ready" : "state-failed"}` }, trace.status || "?"), " ",
    `${fmt.ms(totalMs)} · ${spans.length} node${spans.length === 1 ? "" : "s"} · ${fmt.num(tokens(trace))} tokens · `,
    el("strong", { id: "trace-cost" }, fmt.usd(trace.cost_usd)),
    run?.created_at ? ` · ${fmt.time(run.created_at, true)}` : "",
    trace.error ? el("span", { class: "error-text" }, ` · ${trace.error}`) : "");
  const axis = el("div", { class: "wf-track wf-axis", "aria-hidden": "true" },
    ...[0, 0.25, 0.5, 0.75, 1].map((f) => {
      const tick = el("span", { class: "wf-tick" }, fmt.ms(totalMs * f));
      tick.style.left = `${f * 100}%`;
      return tick;
    }));
  const rows = spans.map((s) => {
    const start = (s.started_at - t0) / total;
    const end = ((s.ended_at ?? t1) - t0) / total;
    const facts = spanFacts(s);
    const bar = el("span", { class: `wf-bar status-${s.status}`, title: `${s.node}: ${s.status} · ${facts.join(" · ")}` });
    bar.style.left = `${(start * 100).toFixed(3)}%`;
    bar.style.width = `${Math.max((end - start) * 100, 0.6).toFixed(3)}%`;
    return el("div", { class: "wf-row", role: "listitem", dataset: { node: s.node, status: s.status } },
      el("div", { class: "wf-label" }, el("span", { class: "mono strong" }, s.node), " ",
        el("span", { class: "muted small" }, [s.kind, s.variant].filter(Boolean).join(" · "))),
      el("div", { class: "wf-track" }, bar),
      el("div", { class: "wf-meta small" },
        el("span", { class: "wf-latency" }, fmt.ms(s.latency_ms)), " · ",
        el("span", { class: "wf-tokens" }, `${fmt.num(tokens(s))} tok`), " · ",
        el("span", { class: "wf-cost" }, fmt.usd(s.cost_usd || 0)),
        s.endpoint ? el("span", { class: "wf-where mono" }, ` · ${s.endpoint}${s.deployment ? `/${s.deployment}` : ""}`) : null,
        s.cache ? el("span", { class: "wf-cache" }, ` · cache ${s.cache}`) : null,
        s.error ? el("div", { class: "error-text" }, s.error) : null));
  });
  box.replaceChildren(el("div", { class: "wf-row wf-head" }, el("div", { class: "wf-label muted small" }, "node"), axis,
    el("div", { class: "wf-meta muted small" }, "latency · tokens · USD · where")),
  el("div", { role: "list", "aria-label": "Spans" }, ...rows));
}

// --- start ---------------------------------------------------------------------------------------

$("run-form").addEventListener("submit", run);
$("runs-refresh").addEventListener("click", loadRuns);
const runFromHash = () => {
  if (location.hash.startsWith("#run-") && location.hash.slice(5) !== selected) openRun(decodeURIComponent(location.hash.slice(5)));
};
window.addEventListener("hashchange", runFromHash);
loadRuns().then(() => {
  runFromHash();
  document.body.dataset.loaded = "true";
});
