// The deploy wizard: model → endpoint → name → instances → traffic → review → deploy with live progress.
//
// Every step is checked as one types (the same rules as the server's specs), and the deploy itself is a
// sequence of management API calls: pull the weights (POST /api/catalog/ID/pull, polled), create the
// endpoint if it is new, create the deployment (POST .../deployments, which answers once its instances
// are ready; its state is polled meanwhile), then set a mirror. A failure stops the sequence, shows the
// server's message, and undoes what this run made (a new endpoint is deleted again).

import { ApiError, api, copyText, el, fmt, nameProblem, pageData, showError } from "./console.js";

const STEPS = ["model", "endpoint", "name", "settings", "traffic", "review", "progress"];
const $ = (id) => document.getElementById(id);
const models = pageData.models;
const endpoints = pageData.endpoints;
let step = 0;
let deploying = false;

// --- the form ----------------------------------------------------------------------------------

$("wizard").addEventListener("submit", (ev) => ev.preventDefault());
const modelSelect = $("w-model");
for (const m of models) {
  modelSelect.append(el("option", { value: m.id }, `${m.name || m.id} — ${m.task}, ${m.format}${m.size ? ", " + m.size : ""}`));
}
if (pageData.model && models.some((m) => m.id === pageData.model)) modelSelect.value = pageData.model;

const epSelect = $("w-ep-select");
for (const e of endpoints) epSelect.append(el("option", { value: e.name }, `${e.name} (${e.deployments.length} deployment${e.deployments.length === 1 ? "" : "s"})`));
if (endpoints.length === 0) { $("w-ep-existing").disabled = true; $("w-ep-existing-box").hidden = true; }
if (pageData.endpoint && endpoints.some((e) => e.name === pageData.endpoint)) {
  $("w-ep-existing").checked = true;
  epSelect.value = pageData.endpoint;
} else {
  $("w-ep-new").checked = true;
}

const model = () => models.find((m) => m.id === modelSelect.value);
const epMode = () => (document.querySelector('input[name="ep-mode"]:checked') || {}).value;
const endpointName = () => (epMode() === "new" ? $("w-ep-name").value.trim() : epSelect.value);
const existing = () => (epMode() === "existing" ? endpoints.find((e) => e.name === epSelect.value) : null);
const trafficMode = () => (document.querySelector('input[name="traffic"]:checked') || {}).value;
const intOrNull = (id) => ($(id).value.trim() === "" ? null : Number($(id).value));

function slug(text) {
  let s = text.replace(/[^A-Za-z0-9-]+/g, "-").replace(/-+/g, "-").replace(/^[^A-Za-z]+/, "").replace(/-$/, "");
  s = s.slice(0, 32).replace(/-$/, "");
  return s.length >= 3 ? s : `${s || "dep"}-1`.slice(0, 32);
}

function suggestNames() {
  const m = model();
  if (!m) return;
  if (!$("w-ep-name").dataset.touched) $("w-ep-name").value = slug(m.id.split(/[.]/)[0]);
  if (!$("w-dep-name").dataset.touched) {
    const taken = new Set(existing()?.deployments || []);
    let name = slug(m.id);
    for (let i = 2; taken.has(name); i++) name = `${slug(m.id).slice(0, 29)}-${i}`;
    $("w-dep-name").value = name;
  }
}
["w-ep-name", "w-dep-name"].forEach((id) => $(id).addEventListener("input", () => { $(id).dataset.touched = "1"; }));

function showModelInfo() {
  const m = model();
  const box = $("w-model-info");
  box.replaceChildren();
  if (!m) return;
  box.append(
    el("p", {}, el("strong", {}, m.name || m.id), ` · ${m.task} · ${m.format} · license ${m.license}`),
    m.hosted
      ? el("p", {}, "Hosted model: requests go to its API; no instances run here.")
      : el("p", {}, `Download ${m.size_bytes ? fmt.num(m.size_bytes / 1e6) + " MB" : "size unknown"} · memory ≈ ${m.memory_mb ? fmt.num(m.memory_mb) + " MB" : "unknown"} per instance`),
    el("p", { class: m.available ? "ok-text" : "warn-text" },
      m.available ? "Ready to run: nothing to fetch."
        : m.hosted ? `Not usable yet (${m.availability}): set that variable where the gateway runs.`
        : m.source === "hub" ? "Not downloaded yet: the deploy fetches it from the Hugging Face Hub first."
        : `Not usable yet (${m.availability}).`),
  );
  $("w-instances-hint").textContent = m.hosted ? "For a hosted model: its share of the remote service (64 requests at once each)."
    : m.memory_mb ? `≈ ${fmt.num(m.memory_mb)} MB each (weights shared between instances).` : "";
}

function syncEndpointMode() {
  $("w-ep-new-box").hidden = epMode() !== "new";
  $("w-ep-existing-box").hidden = epMode() !== "existing";
}

function firstDeployment() {
  const ep = existing();
  return !ep || Object.values(ep.traffic || {}).reduce((a, b) => a + b, 0) === 0;
}

function syncTraffic() {
  const ep = existing();
  const router = ep?.policy === "router";
  const first = firstDeployment();
  for (const id of ["w-tr-none", "w-tr-mirror"]) $(id).disabled = first || router;
  $("w-tr-all").disabled = router;
  if ((first || router) && trafficMode() !== "all") $("w-tr-all").checked = !router;
  if (!trafficMode() && !router) (first ? $("w-tr-all") : $("w-tr-none")).checked = true;
  $("w-mirror").disabled = trafficMode() !== "mirror";
  $("w-traffic-hint").textContent = router
    ? `Endpoint ${ep.name} routes by its router tiers: add the new deployment to its tiers to send it traffic.`
    : first ? "This is the endpoint's first deployment with traffic: it gets all of it."
    : `Now: ${Object.entries(ep.traffic).map(([k, v]) => `${k} ${v}%`).join(", ")}.`;
}

// --- checking each step ------------------------------------------------------------------------

function check(name) {
  if (name === "model") return model() ? null : "Choose a model.";
  if (name === "endpoint") {
    if (!epMode()) return "Choose a new or an existing endpoint.";
    if (epMode() === "existing") return existing() ? null : "Choose an endpoint.";
    const value = endpointName();
    const problem = nameProblem(value, "endpoint");
    if (problem) return problem;
    if (endpoints.some((e) => e.name === value)) return `There is already an endpoint "${value}"; pick it under "An existing endpoint" or choose another name.`;
    return null;
  }
  if (name === "name") {
    const value = $("w-dep-name").value.trim();
    const problem = nameProblem(value, "deployment");
    if (problem) return problem;
    if (existing()?.deployments.includes(value)) return `Endpoint ${existing().name} already has a deployment "${value}".`;
    return null;
  }
  if (name === "settings") {
    const n = intOrNull("w-instances");
    if (!Number.isInteger(n) || n < 1 || n > 64) return "Instances: a whole number from 1 to 64.";
    const t = intOrNull("w-timeout");
    if (!Number.isInteger(t) || t < 100) return "Request timeout: a whole number of milliseconds, at least 100.";
    const c = intOrNull("w-concurrent");
    if (c !== null && (!Number.isInteger(c) || c < 1)) return "Requests at once per instance: a whole number of at least 1 (or empty for the default).";
    const q = intOrNull("w-queue");
    if (!Number.isInteger(q) || q < 0) return "Queue per instance: a whole number of at least 0.";
    return null;
  }
  if (name === "traffic") {
    if (trafficMode() === "mirror") {
      const pct = intOrNull("w-mirror");
      if (!Number.isInteger(pct) || pct < 1 || pct > 50) return "Mirror between 1 and 50 percent of live traffic.";
    }
    return null;
  }
  return null;
}

const ERROR_BOX = { endpoint: "w-ep-name-error", name: "w-dep-name-error", settings: "w-settings-error",
                    traffic: "w-traffic-error", model: "w-settings-error" };

function showStepError(name) {
  const problem = check(name);
  if (ERROR_BOX[name]) showError($(ERROR_BOX[name]), problem);
  const input = { endpoint: $("w-ep-name"), name: $("w-dep-name") }[name];
  input?.setAttribute("aria-invalid", problem ? "true" : "false");
  return problem;
}

// --- the spec, as YAML and as commands ----------------------------------------------------------

function deploymentSpec() {
  const settings = { request_timeout_ms: intOrNull("w-timeout"), max_queue_size_per_instance: intOrNull("w-queue") };
  if (intOrNull("w-concurrent") !== null) settings.max_concurrent_requests_per_instance = intOrNull("w-concurrent");
  return { name: $("w-dep-name").value.trim(), endpoint_name: endpointName(), model: model().id,
           instance_count: intOrNull("w-instances"), request_settings: settings };
}

function review() {
  const dep = deploymentSpec();
  const ep = endpointName();
  const mode = trafficMode();
  const docs = [];
  if (epMode() === "new") docs.push({ name: ep, auth_mode: "key" });
  docs.push(dep);
  const dump = window.jsyaml ? (d) => window.jsyaml.dump(d, { noRefs: true, lineWidth: 100 })
                             : (d) => JSON.stringify(d, null, 2) + "\n";
  let yaml = docs.map(dump).join("---\n");
  if (mode === "mirror") yaml += `# then: mirror ${intOrNull("w-mirror")}% of live traffic to ${dep.name}\n`;
  $("w-yaml").textContent = yaml;
  const cli = [];
  if (epMode() === "new") cli.push(`modelyard endpoint create ${ep}`);
  let create = `modelyard deployment create ${ep} ${dep.name} --model ${dep.model} --instances ${dep.instance_count} --timeout-ms ${dep.request_settings.request_timeout_ms}`;
  if (dep.request_settings.max_concurrent_requests_per_instance) create += ` --max-concurrent ${dep.request_settings.max_concurrent_requests_per_instance}`;
  if (mode === "all" && !firstDeployment()) create += " --all-traffic";
  cli.push(create);
  if (mode === "mirror") cli.push(`modelyard endpoint update ${ep} --mirror ${dep.name}=${intOrNull("w-mirror")}`);
  $("w-cli").textContent = cli.join("\n");
  const trafficText = mode === "all" ? "all live traffic" : mode === "mirror" ? `a ${intOrNull("w-mirror")}% mirror` : "no live traffic (0%)";
  $("w-summary").replaceChildren(el("p", {},
    `Deploy ${dep.model} as `, el("strong", {}, `${ep}/${dep.name}`),
    ` (${epMode() === "new" ? "new endpoint" : "existing endpoint"}), ${dep.instance_count} instance${dep.instance_count > 1 ? "s" : ""}, with ${trafficText}.`));
}

// --- moving between steps ----------------------------------------------------------------------

function render() {
  const name = STEPS[step];
  document.querySelectorAll("#wizard fieldset[data-step]").forEach((fs) => { fs.hidden = fs.dataset.step !== name; });
  document.querySelectorAll("#stepper li").forEach((li, i) => {
    li.className = i < step ? "done" : i === step ? "current" : "";
    if (i === step) li.setAttribute("aria-current", "step"); else li.removeAttribute("aria-current");
  });
  $("w-back").hidden = step === 0 || (name === "progress" && (deploying || !$("w-done").hidden));
  $("w-back").textContent = name === "progress" ? "Back to edit" : "Back";
  $("w-next").hidden = name === "progress";
  $("w-next").textContent = name === "review" ? "Deploy" : "Next";
  if (name === "model") showModelInfo();
  if (name === "endpoint") syncEndpointMode();
  if (name === "traffic") syncTraffic();
  if (name === "review") review();
  refreshNext();
}

function refreshNext() {
  const name = STEPS[step];
  $("w-next").disabled = Boolean(check(name));
}

$("w-next").addEventListener("click", () => {
  const name = STEPS[step];
  if (showStepError(name)) return;
  if (name === "review") { step += 1; render(); deploy(); return; }
  step = Math.min(step + 1, STEPS.length - 1);
  if (STEPS[step] === "name" || STEPS[step] === "endpoint") suggestNames();
  render();
});
$("w-back").addEventListener("click", () => { step = STEPS[step] === "progress" ? STEPS.indexOf("review") : Math.max(0, step - 1); render(); });

modelSelect.addEventListener("change", () => { showModelInfo(); suggestNames(); refreshNext(); });
document.querySelectorAll('input[name="ep-mode"]').forEach((r) => r.addEventListener("change", () => { syncEndpointMode(); suggestNames(); showStepError("endpoint"); refreshNext(); }));
epSelect.addEventListener("change", () => { suggestNames(); refreshNext(); });
document.querySelectorAll('input[name="traffic"]').forEach((r) => r.addEventListener("change", () => { syncTraffic(); refreshNext(); }));
for (const [id, name] of [["w-ep-name", "endpoint"], ["w-dep-name", "name"], ["w-instances", "settings"], ["w-timeout", "settings"],
                          ["w-concurrent", "settings"], ["w-queue", "settings"], ["w-mirror", "traffic"]]) {
  $(id).addEventListener("input", () => { showStepError(name); refreshNext(); });
}

// --- deploying ---------------------------------------------------------------------------------

function progressItem(label) {
  const status = el("span", { class: "status" }, "waiting");
  const item = el("li", { class: "waiting" }, el("span", { class: "label" }, label), status);
  $("w-progress").append(item);
  return {
    item,
    set(state, text) { item.className = state; status.textContent = text; },
  };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function pullWeights(m, row) {
  if (m.hosted) { row.set("done", "hosted: nothing to download"); return; }
  row.set("running", "checking…");
  let job = await api("POST", `/api/catalog/${encodeURIComponent(m.id)}/pull`);
  while (job.state === "running") {
    const pct = job.bytes_total ? ` ${fmt.num(100 * job.bytes_done / job.bytes_total)}%` : "";
    row.set("running", `downloading${pct} (${fmt.num(job.bytes_done / 1e6, 1)} MB)`);
    await sleep(500);
    job = await api("GET", `/api/catalog/${encodeURIComponent(m.id)}/pull`);
  }
  if (job.state === "failed") throw new ApiError(502, { error: job.error }, "");
  row.set("done", job.bytes_done ? `downloaded ${fmt.num(job.bytes_done / 1e6, 1)} MB` : "already here");
}

async function createDeployment(spec, allTraffic, row) {
  const path = `/api/endpoints/${encodeURIComponent(spec.endpoint_name)}/deployments`;
  const { endpoint_name: _ignored, ...body } = spec;
  let finished = false;
  const watch = (async () => {
    while (!finished) {
      await sleep(600);
      if (finished) break;
      try {
        const dep = await api("GET", `${path}/${encodeURIComponent(spec.name)}`);
        const ready = dep.instances.filter((i) => i.state === "ready").length;
        if (!finished) row.set("running", dep.hosted ? "opening the API client…" : `${dep.state}: ${ready}/${spec.instance_count} instances ready`);
      } catch { /* not registered yet */ }
    }
  })();
  row.set("running", `starting ${spec.instance_count} instance${spec.instance_count > 1 ? "s" : ""}…`);
  try {
    const dep = await api("POST", path + (allTraffic ? "?all_traffic=true" : ""), body);
    finished = true;
    row.set("done", dep.hosted ? "ready (hosted)" : `${dep.instances.filter((i) => i.state === "ready").length}/${spec.instance_count} instances ready`);
    return dep;
  } finally {
    finished = true;
    await watch;
  }
}

function showKeys(keys) {
  const box = $("w-new-keys");
  box.replaceChildren();
  if (!keys) return;
  box.append(el("p", {}, "The endpoint's keys, shown this once: copy them now."));
  for (const [slot, key] of Object.entries(keys)) {
    box.append(el("p", { class: "key-row" }, el("span", { class: "slot" }, slot), el("code", { class: "key" }, key),
      el("button", { type: "button", class: "small", onclick: () => copyText(key) }, "Copy")));
  }
}

async function deploy() {
  deploying = true;
  render();
  $("w-progress").replaceChildren();
  showError($("w-deploy-error"), "");
  $("w-done").hidden = true;
  const spec = deploymentSpec();
  const m = model();
  const isNew = epMode() === "new";
  const mode = trafficMode();
  const rows = { pull: progressItem(m.hosted ? "Model API" : "Download weights") };
  if (isNew) rows.endpoint = progressItem(`Create endpoint ${spec.endpoint_name}`);
  rows.start = progressItem(`Start ${spec.endpoint_name}/${spec.name}`);
  rows.traffic = progressItem("Traffic");
  rows.ready = progressItem("Ready");
  let current = rows.pull;
  let createdEndpoint = false;
  let keys = null;
  try {
    await pullWeights(m, rows.pull);
    if (isNew) {
      current = rows.endpoint;
      current.set("running", "creating…");
      const made = await api("POST", "/api/endpoints", { name: spec.endpoint_name });
      createdEndpoint = true;
      keys = made.keys;
      current.set("done", "created, with two keys");
    }
    current = rows.start;
    await createDeployment(spec, mode === "all" && !firstDeployment(), rows.start);
    current = rows.traffic;
    if (mode === "mirror") {
      current.set("running", "setting the mirror…");
      await api("PATCH", `/api/endpoints/${encodeURIComponent(spec.endpoint_name)}`, { mirror_traffic: { [spec.name]: intOrNull("w-mirror") } });
      current.set("done", `mirroring ${intOrNull("w-mirror")}% of live traffic`);
    } else {
      const ep = await api("GET", `/api/endpoints/${encodeURIComponent(spec.endpoint_name)}`);
      current.set("done", `${ep.traffic[spec.name] || 0}% of live traffic`);
    }
    rows.ready.set("done", "serving");
    $("w-done-text").textContent = `${spec.endpoint_name}/${spec.name} runs ${spec.model}.`;
    $("w-open-endpoint").href = `/ui/endpoints/${encodeURIComponent(spec.endpoint_name)}`;
    showKeys(keys);
    $("w-done").hidden = false;
  } catch (err) {
    current.set("failed", "failed");
    let message = err.message;
    if (createdEndpoint) {
      try {
        await api("DELETE", `/api/endpoints/${encodeURIComponent(spec.endpoint_name)}`);
        message += ` The endpoint ${spec.endpoint_name} made for this deployment was removed again: nothing changed.`;
      } catch (undo) {
        message += ` The endpoint ${spec.endpoint_name} made for it could not be removed (${undo.message}).`;
      }
    } else {
      message += " Nothing was changed.";
    }
    showError($("w-deploy-error"), message);
  } finally {
    deploying = false;
    render();
  }
}

showModelInfo();
suggestNames();
render();
