// Batch jobs, OpenAI Batch API shape: the list (GET /v1/batches) with progress bars, and one job
// (GET /v1/batches/ID) with counts, errors, download links and Cancel. Calls go through the console
// proxy (/ui/proxy/v1/...). A gateway without batch routes answers 404: the page says there are no jobs.

import { ApiError, api, confirmAction, el, fmt, pageData, showError, toast } from "./console.js";

const TERMINAL = new Set(["completed", "failed", "expired", "cancelled"]);

function counts(b) {
  const c = b.request_counts || { total: 0, completed: 0, failed: 0 };
  const done = (c.completed || 0) + (c.failed || 0);
  return { ...c, done, pct: c.total ? Math.round((100 * done) / c.total) : (b.status === "completed" ? 100 : 0) };
}

function progress(b) {
  const c = counts(b);
  const bar = el("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": c.pct,
                          "aria-label": `${b.id} progress` },
    el("span", { class: "ok", dataset: { width: c.total ? (100 * c.completed) / c.total : 0 } }),
    el("span", { class: "bad", dataset: { width: c.total ? (100 * c.failed) / c.total : 0 } }));
  bar.querySelectorAll("span").forEach((s) => { s.style.width = `${s.dataset.width}%`; });
  return el("div", { class: "progress" }, bar, el("span", { class: "small muted" }, `${c.done}/${c.total} (${c.pct}%)${c.failed ? ` · ${c.failed} failed` : ""}`));
}

function statusPill(status) {
  const kind = { completed: "ready", failed: "failed", expired: "failed", cancelled: "stopped", cancelling: "starting" }[status] || "starting";
  return el("span", { class: `pill state-${kind}` }, status);
}

function unavailable(err) {
  return err instanceof ApiError && (err.status === 404 || err.status === 405 || err.status === 501);
}

async function list() {
  const box = document.getElementById("batches");
  let page;
  try {
    page = await api("GET", "/ui/proxy/v1/batches?limit=100");
  } catch (err) {
    if (unavailable(err)) {
      box.replaceChildren(el("p", { class: "empty", id: "no-batches" }, "No batch jobs: this gateway has no batch API (/v1/batches) yet."));
      return false;
    }
    showError(document.getElementById("b-error"), err.message);
    return true;
  }
  const jobs = page.data || [];
  if (!jobs.length) {
    box.replaceChildren(el("p", { class: "empty", id: "no-batches" }, "No batch jobs yet."));
    return true;
  }
  box.replaceChildren(el("div", { class: "table-wrap" }, el("table", { class: "data", id: "batch-table" },
    el("thead", {}, el("tr", {}, ...["Batch", "Status", "Progress", "Endpoint", "Created"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...jobs.map((b) => el("tr", { dataset: { batch: b.id } },
      el("td", {}, el("a", { href: `/ui/batches/${encodeURIComponent(b.id)}`, class: "mono" }, b.id),
        b.metadata?.description ? el("div", { class: "muted small" }, b.metadata.description) : null),
      el("td", {}, statusPill(b.status)), el("td", {}, progress(b)),
      el("td", { class: "mono small" }, b.model || b.metadata?.endpoint || b.endpoint || "—"),
      el("td", { class: "nowrap" }, fmt.when(b.created_at))))))));
  return jobs.some((b) => !TERMINAL.has(b.status));
}

function fileLink(label, id) {
  if (!id) return null;
  return el("li", {}, el("a", { href: `/ui/proxy/v1/files/${encodeURIComponent(id)}/content`, download: `${id}.jsonl` }, label), " ", el("code", { class: "small" }, id));
}

async function detail(id) {
  const box = document.getElementById("batch");
  let b;
  try {
    b = await api("GET", `/ui/proxy/v1/batches/${encodeURIComponent(id)}`);
  } catch (err) {
    box.replaceChildren(el("p", { class: "empty" }, unavailable(err) && err.code === "unknown_route"
      ? "No batch jobs: this gateway has no batch API (/v1/batches) yet." : err.message));
    return false;
  }
  const c = counts(b);
  const times = [["Created", b.created_at], ["In progress", b.in_progress_at], ["Finalizing", b.finalizing_at],
                 ["Completed", b.completed_at], ["Failed", b.failed_at], ["Expired", b.expired_at],
                 ["Cancelling", b.cancelling_at], ["Cancelled", b.cancelled_at], ["Expires", b.expires_at]].filter(([, t]) => t);
  const errors = b.errors?.data || [];
  box.replaceChildren(
    el("section", { class: "panel" }, el("div", { class: "card-title" }, el("h2", {}, "Status ", statusPill(b.status))), progress(b),
      el("dl", { class: "facts wide" },
        el("dt", {}, "Requests"), el("dd", {}, `${c.total} total · ${c.completed} completed · ${c.failed} failed`),
        el("dt", {}, "API"), el("dd", { class: "mono" }, b.endpoint || "—"),
        el("dt", {}, "Window"), el("dd", {}, b.completion_window || "—"),
        ...(b.model ? [el("dt", {}, "Model"), el("dd", { class: "mono" }, b.model)] : []),
        ...(b.usage ? [el("dt", {}, "Tokens"), el("dd", {}, `${fmt.num(b.usage.input_tokens)} in / ${fmt.num(b.usage.output_tokens)} out`)] : []),
        ...(b.modelyard?.cost_usd !== undefined ? [el("dt", {}, "Cost"), el("dd", {}, fmt.usd(b.modelyard.cost_usd))] : []),
        ...times.flatMap(([k, t]) => [el("dt", {}, k), el("dd", {}, fmt.when(t))]),
        ...Object.entries(b.metadata || {}).flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]))),
    el("section", { class: "panel" }, el("h2", {}, "Files"),
      el("ul", { class: "files" }, fileLink("Input file", b.input_file_id), fileLink("Results (output file)", b.output_file_id),
        fileLink("Errors (error file)", b.error_file_id)) ),
    el("section", { class: "panel" }, el("h2", {}, `Errors (${errors.length})`),
      errors.length ? el("div", { class: "table-wrap" }, el("table", { class: "data compact" },
        el("thead", {}, el("tr", {}, ...["Line", "Code", "Parameter", "Message"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...errors.map((e) => el("tr", {}, el("td", {}, e.line ?? "—"), el("td", { class: "mono" }, e.code || "—"),
          el("td", { class: "mono" }, e.param || "—"), el("td", {}, e.message || "")))))) : el("p", { class: "muted" }, "None.")));
  const actions = document.getElementById("b-actions");
  actions.replaceChildren();
  if (!TERMINAL.has(b.status) && b.status !== "cancelling") {
    actions.append(el("button", { type: "button", class: "danger", onclick: async () => {
      if (!(await confirmAction(`Cancel batch ${b.id}? Requests not yet run are dropped.`, "Cancel batch"))) return;
      try { await api("POST", `/ui/proxy/v1/batches/${encodeURIComponent(b.id)}/cancel`); toast("Cancelling", "ok"); detail(id); }
      catch (err) { showError(document.getElementById("b-error"), err.message); }
    } }, "Cancel batch"));
  }
  return !TERMINAL.has(b.status);
}

async function poll(fn) {
  const more = await fn();
  document.body.dataset.loaded = "true";
  if (more) setTimeout(() => poll(fn), 3000);
}

poll(pageData.id ? () => detail(pageData.id) : list);
