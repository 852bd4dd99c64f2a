// One fine-tuning job: status and progress, the loss curves (training and validation loss per step, from the
// job's `metrics` events), its evaluations, checkpoints, hyperparameters and lineage, its events, Cancel while
// it runs, and Deploy once it has succeeded.
//
// Events come newest first, a page at a time (`after` = the last id of the page before); each poll reads
// pages only until it meets an event it already has. A job resumed after a gateway restart repeats the
// steps after its last checkpoint: the newest metrics of a step are the ones drawn.
//
// Deploy goes through the endpoints API as the deploy wizard does: POST /api/endpoints for a new endpoint
// (its keys are shown once), then POST /api/endpoints/NAME/deployments, which answers once the instances
// are ready; when that fails the error is shown with its status and code, and an endpoint made for the
// deployment is deleted again.

import { api, el, fmt, nameProblem, pageData, showError, copyText } from "./console.js";
import { chartPanel, chartsAvailable, drawChart } from "./charts.js";
import { FINAL, JOBS, POLL_MS, cancelJob, modelLink, statusPill } from "./finetune.js";

const $ = (id) => document.getElementById(id);
const jobUrl = `${JOBS}/${encodeURIComponent(pageData.id)}`;
/** Events seen so far, by id. */
const events = new Map();
/** How many events the Events panel shows before "Show all". */
const EVENTS_SHOWN = 50;
let showAllEvents = false;
let lineageFor = null;
let deploying = false;

const eventNumber = (e) => Number(String(e.id).replace(/^\D+/, "")) || 0;

async function readNewEvents() {
  let after = null;
  for (;;) {
    const page = await api("GET", `${jobUrl}/events?limit=1000${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    let metKnown = false;
    for (const event of page.data || []) {
      if (events.has(event.id)) { metKnown = true; break; }
      events.set(event.id, event);
    }
    if (metKnown || !page.has_more || !page.data?.length) return;
    after = page.last_id;
  }
}

async function readCheckpoints() {
  const all = [];
  let after = null;
  for (;;) {
    const page = await api("GET", `${jobUrl}/checkpoints?limit=100${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    all.push(...(page.data || []));
    if (!page.has_more || !page.data?.length) return all;
    after = page.last_id;
  }
}

/** The metrics of each step, oldest step first (the newest report of a step wins). */
function stepMetrics(list) {
  const byStep = new Map();
  for (const e of [...list].sort((a, b) => eventNumber(a) - eventNumber(b))) {
    if (e.type === "metrics" && Number.isFinite(Number(e.data?.step))) byStep.set(Number(e.data.step), e.data);
  }
  return [...byStep.entries()].sort((a, b) => a[0] - b[0]).map(([, data]) => data);
}

function num(v, digits = 4) {
  return v === null || v === undefined || v === "" ? "—" : Number(v).toFixed(digits);
}

function facts(pairs) {
  return el("dl", { class: "facts wide" }, ...pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function fileLink(id) {
  return id ? el("a", { href: `/ui/proxy/v1/files/${encodeURIComponent(id)}/content`, class: "mono" }, id) : null;
}

// --- the page's parts ------------------------------------------------------------------------------

function layout() {
  const box = $("ft-job");
  if ($("ft-status")) return;
  box.replaceChildren(
    el("section", { class: "panel", id: "ft-status" }),
    el("div", { id: "ft-charts" }),
    el("section", { class: "panel", id: "ft-evaluations", hidden: true }),
    el("div", { class: "grid-2" },
      el("section", { class: "panel", id: "ft-hyperparameters" }),
      el("section", { class: "panel", id: "ft-lineage" })),
    el("section", { class: "panel", id: "ft-checkpoints" }),
    el("section", { class: "panel", id: "ft-events" }));
}

function renderStatus(job, steps) {
  const last = steps[steps.length - 1];
  const progress = last ? `step ${last.step} of ${last.total_steps ?? "?"}${last.epoch ? `, epoch ${last.epoch}` : ""}` : null;
  const error = job.error && job.error.message
    ? el("span", { class: "field-error", id: "ft-job-error" }, `${job.error.code || "error"}: ${job.error.message}${job.error.param ? ` (${job.error.param})` : ""}`)
    : null;
  $("ft-status").replaceChildren(
    el("div", { class: "card-title" }, el("h2", {}, "Status ", statusPill(job.status))),
    facts([
      ["Base model", modelLink(job.model)],
      ["Tuned model", job.fine_tuned_model ? modelLink(job.fine_tuned_model) : null],
      ["Progress", progress],
      ["Error", error],
      ["Trained tokens", job.trained_tokens === null || job.trained_tokens === undefined ? null : fmt.num(job.trained_tokens)],
      ["Training file", fileLink(job.training_file)],
      ["Validation file", fileLink(job.validation_file)],
      ["Results", job.result_files?.length ? el("span", {}, ...job.result_files.map(fileLink)) : null],
      ["Suffix", job.user_provided_suffix],
      ["Seed", job.seed],
      ["Created", fmt.when(job.created_at)],
      ["Estimated finish", job.estimated_finish ? fmt.when(job.estimated_finish) : null],
      ["Finished", job.finished_at ? fmt.when(job.finished_at) : null],
      ...Object.entries(job.metadata || {}).map(([k, v]) => [k, String(v)]),
    ]));
}

function renderCurves(steps) {
  const canvas = chartPanel($("ft-charts"), "loss", "Loss per step",
    "Training loss of each step's batch and, with a validation file, the validation loss at that step.");
  const hasValidation = steps.some((s) => s.valid_loss !== null && s.valid_loss !== undefined);
  const datasets = [{ label: "Training loss", data: steps.map((s) => s.train_loss ?? null) }];
  if (hasValidation) datasets.push({ label: "Validation loss", data: steps.map((s) => s.valid_loss ?? null) });
  drawChart(canvas, { kind: "line", labels: steps.map((s) => s.step), datasets, yTitle: "loss" });
  canvas.dataset.steps = String(steps.length);
  canvas.dataset.validationPoints = String(hasValidation ? steps.filter((s) => s.valid_loss !== null && s.valid_loss !== undefined).length : 0);
  const panel = $("panel-loss");
  let note = panel.querySelector(".chart-empty");
  if (!note) {
    note = el("p", { class: "muted chart-empty" });
    panel.append(note);
  }
  note.textContent = !steps.length ? "No steps yet: the curves appear once training reports its first step."
    : chartsAvailable() ? "" : `Charts are off (run make install). Last step ${steps[steps.length - 1].step}: training loss ${num(steps[steps.length - 1].train_loss)}.`;
  note.hidden = !note.textContent;
}

function renderEvaluations(list) {
  const evals = list.filter((e) => e.data?.evaluation).sort((a, b) => eventNumber(b) - eventNumber(a));
  const box = $("ft-evaluations");
  box.hidden = !evals.length;
  if (!evals.length) return;
  box.replaceChildren(el("h2", {}, "Evaluations"), el("div", { class: "table-wrap" }, el("table", { class: "data compact", id: "ft-evaluation-table" },
    el("thead", {}, el("tr", {}, ...["When", "Test file", "Metric", "Base", "Tuned", "Base tokens/s", "Tuned tokens/s"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...evals.map(({ created_at: at, data: { evaluation: v } }) => el("tr", {},
      el("td", { class: "nowrap" }, fmt.when(at)), el("td", { class: "mono" }, v.data), el("td", {}, v.metric),
      el("td", { class: "num" }, num(v.base.score, 3)), el("td", { class: "num" }, num(v.tuned.score, 3)),
      el("td", { class: "num" }, num(v.base.tokens_per_s, 1)), el("td", { class: "num" }, num(v.tuned.tokens_per_s, 1))))))));
}

function renderHyperparameters(job) {
  $("ft-hyperparameters").replaceChildren(el("h2", {}, "Hyperparameters"),
    facts(Object.entries(job.hyperparameters || {}).map(([k, v]) => [k, el("span", { class: "mono" }, String(v))])));
}

async function renderLineage(job) {
  const box = $("ft-lineage");
  if (job.status !== "succeeded" || !job.fine_tuned_model) {
    box.replaceChildren(el("h2", {}, "Lineage"), el("p", { class: "muted" }, "The tuned model's lineage is written when the job succeeds."));
    return;
  }
  if (lineageFor === job.fine_tuned_model) return;
  let card;
  try {
    card = await api("GET", `/api/catalog/${encodeURIComponent(job.fine_tuned_model)}`);
  } catch (err) {
    box.replaceChildren(el("h2", {}, "Lineage"), el("p", { class: "field-error" }, `The tuned model ${job.fine_tuned_model} is not in the catalog: ${err.message}`));
    return;
  }
  lineageFor = job.fine_tuned_model;
  const lin = card.adapter?.lineage || {};
  const files = Object.entries(lin.files || {}).map(([kind, f]) => [kind.replace("_", " "),
    el("span", {}, fileLink(f.id), el("div", { class: "muted small mono break" }, `sha256 ${f.sha256}`))]);
  const metrics = Object.entries(lin.metrics || {}).filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => [k, typeof v === "number" && !Number.isInteger(v) ? num(v) : String(v)]);
  box.replaceChildren(el("h2", {}, "Lineage"), facts([
    ["Model", modelLink(card.id)],
    ["Base model", modelLink(card.adapter?.base || lin.base_model)],
    ...files,
    ["Training examples", lin.training_examples],
    ["Adapter", card.adapter?.path ? el("span", { class: "mono small break" }, card.adapter.path) : null],
    ["Adapter sha256", lin.adapter_sha256 ? el("span", { class: "mono small break" }, lin.adapter_sha256) : null],
    ...metrics,
  ]));
}

function renderCheckpoints(list) {
  const box = $("ft-checkpoints");
  box.replaceChildren(el("h2", {}, `Checkpoints (${list.length})`), list.length
    ? el("div", { class: "table-wrap" }, el("table", { class: "data compact", id: "ft-checkpoint-table" },
      el("thead", {}, el("tr", {}, ...["Step", "Checkpoint", "Training loss", "Validation loss", "Created"].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...list.map((c) => el("tr", { dataset: { step: c.step_number } },
        el("td", { class: "num" }, c.step_number), el("td", { class: "mono small break" }, c.fine_tuned_model_checkpoint),
        el("td", { class: "num" }, num(c.metrics?.train_loss)), el("td", { class: "num" }, num(c.metrics?.valid_loss)),
        el("td", { class: "nowrap" }, fmt.when(c.created_at)))))))
    : el("p", { class: "muted" }, "None yet: the job keeps one every few steps while it trains."));
}

function renderEvents(list) {
  const newest = [...list].sort((a, b) => eventNumber(b) - eventNumber(a));
  const shown = showAllEvents ? newest : newest.slice(0, EVENTS_SHOWN);
  const more = newest.length > shown.length
    ? el("button", { type: "button", class: "small", onclick: () => { showAllEvents = true; renderEvents([...events.values()]); } },
      `Show all ${newest.length} events`) : "";
  $("ft-events").replaceChildren(el("h2", {}, `Events (${newest.length})`),
    el("div", { class: "table-wrap" }, el("table", { class: "data compact", id: "ft-event-table" },
      el("thead", {}, el("tr", {}, ...["Time", "Level", "Message"].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...shown.map((e) => el("tr", { dataset: { type: e.type, level: e.level } },
        el("td", { class: "nowrap" }, fmt.when(e.created_at)),
        el("td", {}, e.level === "info" ? e.level : el("span", { class: `pill state-${e.level === "error" ? "failed" : "starting"}` }, e.level)),
        el("td", { class: "break" }, e.message)))))), more);
}

function renderActions(job) {
  const actions = $("ft-actions");
  actions.replaceChildren();
  if (!FINAL.has(job.status)) {
    actions.append(el("button", { type: "button", class: "danger", id: "ft-cancel", onclick: async () => {
      if (await cancelJob(job, $("ft-error"))) refresh();
    } }, "Cancel job"));
  }
}

// --- deploy ------------------------------------------------------------------------------------------

/** A deployment name from the tuned model's id: ``base:ft-tickets-abc123`` → ``ft-tickets-abc123``. */
function deploymentName(modelId) {
  let name = String(modelId).split(":").pop().replace(/[^A-Za-z0-9-]+/g, "-").replace(/^[^A-Za-z]+/, "");
  if (!name.startsWith("ft")) name = `ft-${name}`;
  return name.slice(0, 32).replace(/-+$/, "");
}

function progressItem(label) {
  const status = el("span", { class: "status" }, "waiting");
  const item = el("li", { class: "waiting" }, el("span", { class: "label" }, label), status);
  $("ft-deploy-progress").append(item);
  return { set(state, text) { item.className = state; status.textContent = text; } };
}

function setupDeploy(job) {
  const panel = $("ft-deploy");
  if (job.status !== "succeeded" || !job.fine_tuned_model || !panel.hidden) return;
  panel.hidden = false;
  $("ft-deploy-model").textContent = job.fine_tuned_model;
  $("ft-deployment").value = deploymentName(job.fine_tuned_model);
  const suffix = job.user_provided_suffix;
  if (suffix && !nameProblem(suffix, "endpoint") && !pageData.endpoints.some((e) => e.name === suffix)) $("ft-new-endpoint").value = suffix;
  const chosen = () => { $("ft-new-endpoint-box").hidden = $("ft-endpoint").value !== ""; };
  $("ft-endpoint").addEventListener("change", chosen);
  chosen();
  $("ft-deploy-form").addEventListener("submit", (ev) => { ev.preventDefault(); if (!deploying) deploy(job.fine_tuned_model); });
}

function deployProblem(endpoint, isNew, name) {
  if (isNew) {
    const bad = nameProblem(endpoint, "endpoint");
    if (bad) return bad;
    if (pageData.endpoints.some((e) => e.name === endpoint)) return `There is an endpoint named ${endpoint} already: choose it in the list.`;
  }
  const bad = nameProblem(name, "deployment");
  if (bad) return bad;
  const existing = pageData.endpoints.find((e) => e.name === endpoint);
  if (existing && existing.deployments.includes(name)) return `Endpoint ${endpoint} has a deployment named ${name} already: choose another name.`;
  return null;
}

function describeFailure(err) {
  const what = [err.status || null, err.code].filter(Boolean).join(" ");
  return `${what ? `${what}: ` : ""}${err.message}`;
}

async function deploy(model) {
  const isNew = $("ft-endpoint").value === "";
  const endpoint = isNew ? $("ft-new-endpoint").value.trim() : $("ft-endpoint").value;
  const name = $("ft-deployment").value.trim();
  const errorBox = $("ft-deploy-error");
  const problem = deployProblem(endpoint, isNew, name);
  showError(errorBox, problem);
  $("ft-deploy-done").hidden = true;
  $("ft-deploy-progress").replaceChildren();
  if (problem) return;
  deploying = true;
  $("ft-deploy-button").disabled = true;
  const rows = {};
  if (isNew) rows.endpoint = progressItem(`Create endpoint ${endpoint}`);
  rows.start = progressItem(`Start ${endpoint}/${name}`);
  let current = rows.endpoint || rows.start;
  let created = false;
  let keys = null;
  const epPath = `/api/endpoints/${encodeURIComponent(endpoint)}`;
  try {
    if (isNew) {
      current.set("running", "creating…");
      keys = (await api("POST", "/api/endpoints", { name: endpoint })).keys;
      created = true;
      current.set("done", "created, with two keys");
      current = rows.start;
    }
    current.set("running", "starting the instance (loading the base model and the adapter)…");
    const dep = await api("POST", `${epPath}/deployments`, { name, model });
    const ready = (dep.instances || []).filter((i) => i.state === "ready").length;
    current.set("done", `${ready}/${(dep.instances || []).length} instances ready`);
    const ep = await api("GET", epPath);
    $("ft-deploy-done-text").textContent = `${endpoint}/${name} runs ${model}; it gets ${ep.traffic?.[name] || 0}% of the endpoint's live traffic.`;
    $("ft-open-endpoint").href = `/ui/endpoints/${encodeURIComponent(endpoint)}`;
    showKeys(keys);
    $("ft-deploy-done").hidden = false;
    const known = pageData.endpoints.find((e) => e.name === endpoint);
    if (known) known.deployments.push(name);
    else {
      pageData.endpoints.push({ name: endpoint, deployments: [name] });
      $("ft-endpoint").insertBefore(el("option", { value: endpoint }, endpoint), $("ft-endpoint").lastElementChild);
    }
  } catch (err) {
    current.set("failed", "failed");
    let message = `Deploying ${model} failed (${describeFailure(err)}).`;
    if (created) {
      try {
        await api("DELETE", epPath);
        message += ` The endpoint ${endpoint} made for it was deleted again: nothing changed.`;
      } catch (undo) {
        message += ` The endpoint ${endpoint} made for it could not be deleted (${undo.message}).`;
      }
    } else {
      message += " Nothing was changed.";
    }
    showError(errorBox, message);
  } finally {
    deploying = false;
    $("ft-deploy-button").disabled = false;
  }
}

function showKeys(keys) {
  const box = $("ft-new-keys");
  box.replaceChildren();
  if (!keys) return;
  box.append(el("p", {}, "The new endpoint's keys, shown this once: copy them now."));
  for (const [slot, key] of Object.entries(keys)) {
    box.append(el("p", { class: "key-row" }, el("span", { class: "slot" }, slot), el("code", { class: "key" }, key),
      el("button", { type: "button", class: "small", onclick: () => copyText(key) }, "Copy")));
  }
}

// --- polling -----------------------------------------------------------------------------------------

async function refresh() {
  let job;
  try {
    job = await api("GET", jobUrl);
    await readNewEvents();
  } catch (err) {
    showError($("ft-error"), err.message);
    return err.status === 0 || err.status >= 500;  // the gateway restarting: try again
  }
  showError($("ft-error"), "");
  layout();
  const list = [...events.values()];
  const steps = stepMetrics(list);
  renderStatus(job, steps);
  renderCurves(steps);
  renderEvaluations(list);
  renderHyperparameters(job);
  renderEvents(list);
  renderActions(job);
  try {
    renderCheckpoints(await readCheckpoints());
    await renderLineage(job);
  } catch (err) {
    showError($("ft-error"), err.message);
  }
  setupDeploy(job);
  document.title = `Fine-tuning job ${job.id} (${job.status}) · modelyard`;
  // A succeeded job may still get evaluations; poll slowly then.
  return FINAL.has(job.status) ? "slow" : true;
}

async function poll() {
  const more = await refresh();
  document.body.dataset.loaded = "true";
  if (more) setTimeout(poll, more === "slow" ? 10_000 : POLL_MS);
}

if ($("ft-job")) poll();
