// One endpoint: deployments (state, instances, scale, logs, delete), the traffic editor, rollouts, keys,
// Consume snippets and a Test tab. Every change is a management API call; its error message is shown
// beside the control that made it. The endpoint is re-read every few seconds (states change as
// instances start), without disturbing a traffic split being edited.

import { ApiError, api, confirmAction, copyText, el, fmt, pageData, setupCopyButtons, setupTabs, showError, statePill, toast } from "./console.js";

const $ = (id) => document.getElementById(id);
let desc = pageData.endpoint;
const name = desc.name;
const base = `/api/endpoints/${encodeURIComponent(name)}`;
let trafficDirty = false;
let openTab = "deployments";

// --- deployments -------------------------------------------------------------------------------

function instancesTable(dep) {
  if (dep.hosted) return el("p", { class: "muted" }, `Hosted API · ${dep.in_flight} request(s) in flight`);
  if (!dep.instances.length) return el("p", { class: "muted" }, "No instances running.");
  return el("div", { class: "table-wrap" }, el("table", { class: "data compact" },
    el("thead", {}, el("tr", {}, ...["Instance", "State", "PID", "Restarts", "In flight", "CPU", "Memory"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...dep.instances.map((i) => el("tr", {},
      el("td", { class: "mono" }, i.name), el("td", {}, statePill(i.state)), el("td", {}, i.pid ?? "—"),
      el("td", {}, i.restarts ?? 0), el("td", {}, i.in_flight ?? 0),
      el("td", {}, i.cpu_percent === undefined || i.cpu_percent === null ? "—" : `${fmt.num(i.cpu_percent, 1)}%`),
      el("td", {}, fmt.mb(i.pss_mb ?? i.rss_mb)))))));
}

function deploymentCard(dep) {
  const live = desc.traffic[dep.name] || 0;
  const mirror = desc.mirror_traffic[dep.name] || 0;
  const error = el("p", { class: "field-error", role: "alert", hidden: true });
  const scale = el("input", { type: "number", min: 1, max: 64, value: dep.instance_count, class: "tiny", "aria-label": `Instances of ${dep.name}` });
  const logs = el("pre", { class: "code logs", hidden: true });
  const events = el("pre", { class: "code logs events", hidden: true });
  const auto = dep.autoscale;
  const sizing = auto
    ? ` · autoscale ${auto.min_instances}–${auto.max_instances} (${dep.instances.length} now, target ${auto.target_in_flight} in flight each)`
    : ` · ${dep.instance_count} instance${dep.instance_count > 1 ? "s" : ""}`;
  const card = el("article", { class: "panel deployment", dataset: { deployment: dep.name } },
    el("div", { class: "card-title" },
      el("h2", {}, el("span", { class: "mono" }, dep.name), " ", statePill(dep.state)),
      el("span", { class: "traffic-badge" }, `${live}% live${mirror ? ` · ${mirror}% mirror` : ""}`)),
    el("p", {}, el("a", { href: `/ui/models/${encodeURIComponent(dep.model)}` }, dep.model), sizing,
      ` · timeout ${fmt.num(dep.request_settings.request_timeout_ms)} ms`, dep.queue_length ? ` · ${dep.queue_length} queued` : ""),
    dep.error ? el("p", { class: "error-text" }, dep.error) : null,
    instancesTable(dep),
    el("div", { class: "row wrap" },
      el("label", { class: "inline" }, "Instances ", scale),
      el("button", { type: "button", class: "small", onclick: async () => {
        showError(error, "");
        try {
          await api("PATCH", `${base}/deployments/${encodeURIComponent(dep.name)}`, { instance_count: Number(scale.value) });
          toast(`${dep.name}: ${scale.value} instance(s)`, "ok");
          refresh();
        } catch (err) { showError(error, err.message); }
      } }, "Scale"),
      el("button", { type: "button", class: "small", onclick: async () => {
        if (!logs.hidden) { logs.hidden = true; return; }
        try {
          const out = await api("GET", `${base}/deployments/${encodeURIComponent(dep.name)}/logs?lines=40`);
          logs.textContent = Object.entries(out.instances).map(([n, t]) => `== ${n} ==\n${t}`).join("\n") || "(no logs)";
          logs.hidden = false;
        } catch (err) { showError(error, err.message); }
      } }, "Logs"),
      el("button", { type: "button", class: "small", onclick: async () => {
        if (!events.hidden) { events.hidden = true; return; }
        try {
          const out = await api("GET", `${base}/deployments/${encodeURIComponent(dep.name)}/events?limit=50`);
          events.textContent = out.data.map((e) => `${e.time.slice(0, 19).replace("T", " ")}  ${e.kind}  ` +
            `${e.from === null ? e.instance : `${e.from} → ${e.to}`}  ${e.reason}`).join("\n") || "(no events yet)";
          events.hidden = false;
        } catch (err) { showError(error, err.message); }
      } }, "Events"),
      el("button", { type: "button", class: "small danger", onclick: async () => {
        showError(error, "");
        if (!(await confirmAction(`Delete deployment ${dep.name} of ${name}? Its instances stop.`, "Delete"))) return;
        try {
          await api("DELETE", `${base}/deployments/${encodeURIComponent(dep.name)}`);
          toast(`Deleted ${dep.name}`, "ok");
          refresh();
        } catch (err) { showError(error, err.message); }
      } }, "Delete")),
    error, logs, events);
  return card;
}

function renderDeployments() {
  const box = $("deployments");
  const open = new Set([...box.querySelectorAll("pre.logs:not([hidden])")].map((p) => p.closest("[data-deployment]").dataset.deployment));
  if (!desc.deployments.length) {
    box.replaceChildren(el("p", { class: "empty" }, "No deployments yet. ", el("a", { href: `/ui/deploy?endpoint=${encodeURIComponent(name)}` }, "Add one")));
    return;
  }
  if (open.size) return; // someone is reading logs: do not redraw under them
  box.replaceChildren(...desc.deployments.map(deploymentCard));
}

// --- traffic editor ----------------------------------------------------------------------------

function renderTraffic() {
  const box = $("traffic-editor");
  if (desc.policy === "router") {
    box.replaceChildren(el("p", {}, "This endpoint routes by cost-aware tiers, cheapest first: ",
      el("strong", {}, (desc.tiers || []).join(" → ") || "none"), ". Weights do not apply."));
    return;
  }
  if (!desc.deployments.length) { box.replaceChildren(el("p", { class: "muted" }, "No deployments to send traffic to.")); return; }
  const mirrorName = Object.keys(desc.mirror_traffic)[0] || "";
  const rows = desc.deployments.map((dep) => el("tr", { dataset: { deployment: dep.name } },
    el("th", { scope: "row", class: "mono" }, dep.name),
    el("td", {}, el("input", { type: "number", min: 0, max: 100, step: 1, class: "tiny weight", value: desc.traffic[dep.name] || 0,
                               name: `weight-${dep.name}`, "aria-label": `Live traffic % for ${dep.name}` }), " %"),
    el("td", {}, el("input", { type: "radio", name: "mirror-target", value: dep.name, checked: dep.name === mirrorName,
                               "aria-label": `Mirror to ${dep.name}` }))));
  const noMirror = el("tr", {}, el("th", { scope: "row", class: "muted" }, "no mirror"), el("td", {}),
    el("td", {}, el("input", { type: "radio", name: "mirror-target", value: "", checked: !mirrorName, "aria-label": "No mirror" })));
  const mirrorPct = el("input", { type: "number", min: 1, max: 50, class: "tiny", id: "mirror-pct", value: desc.mirror_traffic[mirrorName] || 10,
                                  "aria-label": "Mirror percent" });
  const save = el("button", { type: "submit", class: "primary", id: "traffic-save" }, "Save traffic");
  const reset = el("button", { type: "button", id: "traffic-reset", onclick: () => { trafficDirty = false; renderTraffic(); } }, "Reset");
  const form = el("form", { id: "traffic-form", novalidate: true },
    el("div", { class: "table-wrap" }, el("table", { class: "data compact" },
      el("thead", {}, el("tr", {}, el("th", {}, "Deployment"), el("th", {}, "Live traffic"), el("th", {}, "Mirror to"))),
      el("tbody", {}, ...rows, noMirror))),
    el("p", { class: "row wrap" }, el("label", { class: "inline" }, "Mirror share ", mirrorPct, " % of live traffic (answers discarded)")),
    el("div", { class: "sum-bar", id: "traffic-bar", "aria-hidden": "true" }),
    el("p", { id: "traffic-sum", class: "sum", "aria-live": "polite" }),
    el("p", { class: "field-error", id: "traffic-error", role: "alert", hidden: true }),
    el("div", { class: "row" }, save, reset));
  box.replaceChildren(form);
  const onChange = () => { trafficDirty = true; validateTraffic(); };
  form.addEventListener("input", onChange);
  form.addEventListener("change", onChange);
  form.addEventListener("submit", (ev) => { ev.preventDefault(); saveTraffic(); });
  validateTraffic();
}

function readTraffic() {
  const traffic = {};
  document.querySelectorAll("#traffic-form tr[data-deployment]").forEach((tr) => {
    traffic[tr.dataset.deployment] = Number(tr.querySelector("input.weight").value);
  });
  const target = document.querySelector('input[name="mirror-target"]:checked')?.value || "";
  const pct = Number($("mirror-pct").value);
  return { traffic, mirror: target ? { [target]: pct } : {} };
}

function trafficProblem({ traffic, mirror }) {
  for (const [dep, w] of Object.entries(traffic)) {
    if (!Number.isInteger(w) || w < 0 || w > 100) return `The weight of ${dep} must be a whole percentage from 0 to 100.`;
  }
  const total = Object.values(traffic).reduce((a, b) => a + b, 0);
  if (total !== 100 && total !== 0) return `Live traffic weights must add up to 100% — now ${total}% (${Object.entries(traffic).map(([k, v]) => `${k} ${v}`).join(" + ")}).`;
  for (const [dep, pct] of Object.entries(mirror)) {
    if (!Number.isInteger(pct) || pct < 1 || pct > 50) return "The mirror share must be a whole percentage from 1 to 50.";
    if (traffic[dep] > 0) return `${dep} gets live traffic, so it cannot also be the mirror: set its weight to 0 or mirror to another deployment.`;
  }
  return null;
}

function validateTraffic() {
  const value = readTraffic();
  const problem = trafficProblem(value);
  const total = Object.values(value.traffic).reduce((a, b) => (Number.isFinite(b) ? a + b : a), 0);
  $("traffic-sum").textContent = `Total live traffic: ${total}%${total === 0 ? " (no deployment gets live traffic)" : ""}`;
  $("traffic-sum").className = `sum ${problem ? "bad" : "good"}`;
  $("traffic-bar").replaceChildren(...Object.entries(value.traffic).filter(([, w]) => w > 0).map(([k, w], i) =>
    el("span", { class: `seg c${i % 6}`, style: null, title: `${k} ${w}%`, dataset: { width: Math.min(w, 100) } }, w >= 8 ? `${k} ${w}%` : "")));
  $("traffic-bar").querySelectorAll(".seg").forEach((s) => { s.style.flexGrow = s.dataset.width; });
  showError($("traffic-error"), problem);
  document.querySelectorAll("#traffic-form input.weight").forEach((i) => i.setAttribute("aria-invalid", problem && problem.startsWith("Live") ? "true" : "false"));
  $("traffic-save").disabled = Boolean(problem);
  return problem;
}

async function saveTraffic() {
  if (validateTraffic()) return;
  const { traffic, mirror } = readTraffic();
  $("traffic-save").disabled = true;
  try {
    desc = await api("PATCH", base, { traffic, mirror_traffic: mirror });
    trafficDirty = false;
    toast("Traffic saved", "ok");
    renderAll();
  } catch (err) {
    showError($("traffic-error"), err instanceof ApiError ? err.message : String(err));
    $("traffic-save").disabled = false;
  }
}

// --- rollouts ----------------------------------------------------------------------------------

function rolloutCard(r) {
  const steps = el("ol", { class: "steps" }, ...r.steps.map((pct, i) => el("li", {
    class: i < r.current_step ? "done" : i === r.current_step ? (r.state === "running" ? "current" : r.state) : "" }, `${pct}%`)));
  const cancel = r.state === "running" ? el("button", { type: "button", class: "small danger", onclick: async () => {
    if (!(await confirmAction(`Cancel the rollout of ${r.deployment}? Traffic goes back to the split before it.`, "Cancel rollout"))) return;
    try { await api("POST", `/api/rollouts/${r.id}/cancel`); toast("Rollout cancelled", "ok"); refresh(); loadRollouts(); }
    catch (err) { toast(err.message, "error"); }
  } }, "Cancel rollout") : null;
  const history = (r.history || []).map((h) => el("li", {}, `${h.at ? fmt.time(h.at, true) + " · " : ""}${h.event || ""}${h.step >= 0 ? ` (step ${h.step + 1}, ${h.percent}%)` : ""}: ${h.message || ""}`));
  return el("article", { class: "panel rollout", dataset: { rollout: r.id, state: r.state } },
    el("div", { class: "card-title" }, el("h3", {}, `#${r.id} → `, el("span", { class: "mono" }, r.deployment)), statePill(r.state)),
    steps,
    el("p", { class: "muted small" }, `step ${r.step_label || "-"} · every ${fmt.num(r.interval_s)} s · max errors ${fmt.pct(r.max_error_rate)} · max p95 ${fmt.num(r.max_p95_ms)} ms`,
      r.next_check_at && r.state === "running" ? ` · next check ${fmt.time(r.next_check_at)}` : ""),
    r.traffic_now ? el("p", { class: "small" }, "Traffic now: ", Object.entries(r.traffic_now).map(([k, v]) => `${k} ${v}%`).join(" · ")) : null,
    r.reason ? el("p", { class: ["rolled_back", "reverted"].includes(r.state) ? "error-text" : "muted" }, r.reason) : null,
    history.length ? el("details", {}, el("summary", {}, "History"), el("ul", { class: "small" }, ...history)) : null,
    cancel);
}

async function loadRollouts() {
  try {
    const list = (await api("GET", `${base}/rollouts`)).data;
    $("rollouts").replaceChildren(...(list.length ? list.map(rolloutCard) : [el("p", { class: "empty" }, "No rollouts yet.")]));
  } catch (err) {
    $("rollouts").replaceChildren(el("p", { class: "error-text" }, err.message));
  }
}

function setupRolloutForm() {
  const select = $("ro-dep");
  const chosen = select.value;
  select.replaceChildren(...desc.deployments.map((d) => el("option", { value: d.name }, `${d.name} (${desc.traffic[d.name] || 0}% now)`)));
  const zero = desc.deployments.find((d) => !desc.traffic[d.name]);
  if (desc.deployments.some((d) => d.name === chosen)) select.value = chosen;
  else if (zero) select.value = zero.name;
}

$("rollout-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError($("ro-error"), "");
  const steps = $("ro-steps").value.split(/[,\s]+/).filter(Boolean).map(Number);
  if (!steps.length || steps.some((s) => !Number.isInteger(s))) {
    showError($("ro-error"), "Steps: whole percentages separated by commas, e.g. 10,25,50,100.");
    return;
  }
  try {
    await api("POST", `${base}/deployments/${encodeURIComponent($("ro-dep").value)}/rollout`, {
      steps, interval_s: Number($("ro-interval").value), max_error_rate: Number($("ro-err").value) / 100,
      max_p95_ms: Number($("ro-p95").value) });
    toast("Rollout started", "ok");
    refresh();
    loadRollouts();
  } catch (err) {
    showError($("ro-error"), err.message);
  }
});

// --- keys --------------------------------------------------------------------------------------

const freshKeys = {};

function mask(prefix) { return `${prefix}${"•".repeat(24)}`; }

async function loadKeys() {
  let info;
  try { info = await api("GET", `${base}/keys`); } catch (err) { $("keys").replaceChildren(el("p", { class: "error-text" }, err.message)); return; }
  $("keys").replaceChildren(...["primary", "secondary"].map((slot) => {
    const key = info[slot];
    const fresh = freshKeys[slot];
    const shown = el("code", { class: "key", id: `key-${slot}`, dataset: { value: fresh || "" } }, fresh ? mask(fresh.slice(0, 8)) : key ? mask(key.prefix) : "none yet");
    const reveal = el("button", { type: "button", class: "small", id: `reveal-${slot}`, disabled: !fresh,
      title: fresh ? "Show the whole key" : "Keys are stored hashed; regenerate to get a key you can see",
      onclick: () => {
        const hidden = shown.textContent !== fresh;
        shown.textContent = hidden ? fresh : mask(fresh.slice(0, 8));
        reveal.textContent = hidden ? "Hide" : "Reveal";
      } }, "Reveal");
    const copy = el("button", { type: "button", class: "small", disabled: !fresh, onclick: () => copyText(fresh) }, "Copy");
    const regen = el("button", { type: "button", class: "small danger", id: `regenerate-${slot}`, onclick: async () => {
      const ok = await confirmAction(key ? `Regenerate the ${slot} key of ${name}? The current ${slot} key (${key.prefix}…) stops working at once; clients using it must switch to the new key.`
                                         : `Make a ${slot} key for ${name}?`, key ? "Regenerate" : "Make key");
      if (!ok) return;
      try {
        const made = await api("POST", `${base}/keys/regenerate`, { which: slot });
        freshKeys[slot] = made.key;
        toast(`New ${slot} key made: copy it now, it is shown only on this page`, "ok");
        loadKeys();
      } catch (err) { toast(err.message, "error"); }
    } }, key ? "Regenerate" : "Make key");
    return el("div", { class: "key-row", dataset: { slot } },
      el("span", { class: "slot" }, slot), shown, reveal, copy, regen,
      el("span", { class: "muted small" }, key ? `made ${fmt.time(key.created_at, true)}` : "", fresh ? " · new: shown until you leave this page" : ""));
  }));
}

// --- test --------------------------------------------------------------------------------------

function setupTest() {
  const select = $("test-target");
  const current = select.value;
  select.replaceChildren(el("option", { value: "" }, "the endpoint (traffic split)"),
    ...desc.deployments.map((d) => el("option", { value: d.name }, `deployment ${d.name} only`)));
  select.value = [...select.options].some((o) => o.value === current) ? current : "";
}

$("test-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError($("test-error"), "");
  const target = $("test-target").value;
  const headers = target ? { "modelyard-deployment": target } : {};
  const text = $("test-input").value;
  const started = performance.now();
  $("test-send").disabled = true;
  try {
    let out;
    let body;
    if (pageData.task === "embedding") {
      body = await api("POST", "/ui/proxy/v1/embeddings", { model: name, input: [text] }, headers);
      const v = body.data[0].embedding;
      out = `${v.length} dimensions\n[${v.slice(0, 8).map((x) => x.toFixed(5)).join(", ")}, …]`;
    } else {
      body = await api("POST", "/ui/proxy/v1/chat/completions", { model: name, messages: [{ role: "user", content: text }],
                                                                   max_tokens: Number($("test-max").value || 32) }, headers);
      out = body.choices[0].message.content;
    }
    const h = body._headers;
    const meta = [["Answered by", h.get("x-modelyard-deployment")], ["Route", h.get("x-modelyard-route")],
                  ["Time", `${fmt.num(performance.now() - started)} ms`],
                  ["Tokens", body.usage ? `${body.usage.prompt_tokens} in / ${body.usage.completion_tokens ?? 0} out` : "—"],
                  ["Cost", fmt.usd(Number(h.get("x-modelyard-cost-usd") || 0))], ["Request id", h.get("x-request-id")]];
    $("test-meta").replaceChildren(...meta.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { dataset: { field: k } }, v || "—")]));
    $("test-output").textContent = out;
    $("test-result").hidden = false;
  } catch (err) {
    showError($("test-error"), err.message);
  } finally {
    $("test-send").disabled = false;
  }
});

// --- consume -----------------------------------------------------------------------------------

document.querySelectorAll("[data-snippet]").forEach((tab) => tab.addEventListener("click", () => {
  document.querySelectorAll("[data-snippet]").forEach((t) => t.setAttribute("aria-selected", t === tab ? "true" : "false"));
  document.querySelectorAll("[data-snippet-panel]").forEach((p) => { p.hidden = p.dataset.snippetPanel !== tab.dataset.snippet; });
}));
setupCopyButtons();

// --- refresh -----------------------------------------------------------------------------------

function renderAll() {
  renderDeployments();
  if (!trafficDirty) renderTraffic();
  setupTest();
  if (document.activeElement?.id !== "ro-dep") setupRolloutForm();
}

async function refresh() {
  try {
    desc = await api("GET", base);
    renderAll();
  } catch { /* the next refresh may work */ }
}

setupTabs((id) => {
  openTab = id;
  if (id === "keys") loadKeys();
  if (id === "rollouts") loadRollouts();
});
renderAll();
setInterval(() => {
  refresh();
  if (openTab === "rollouts") loadRollouts();
}, 3000);
