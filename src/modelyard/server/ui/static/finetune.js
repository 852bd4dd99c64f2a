// Fine-tuning jobs, OpenAI fine-tuning API shape: the list (GET /v1/fine_tuning/jobs) with status, base and
// tuned model, trained tokens and Cancel for unfinished jobs. Calls go through the console proxy
// (/ui/proxy/v1/...). The list polls, quickly while a job is unfinished. One job's page is finetune_job.js.

import { ApiError, api, confirmAction, el, fmt, showError, toast } from "./console.js";

/** The states a job does not leave (OpenAI's: validating_files → queued → running → one of these). */
export const FINAL = new Set(["succeeded", "failed", "cancelled"]);
export const POLL_MS = 1500;
export const JOBS = "/ui/proxy/v1/fine_tuning/jobs";

const PILL = { validating_files: "starting", queued: "new", running: "running", succeeded: "succeeded",
               failed: "failed", cancelled: "cancelled" };

export function statusPill(status) {
  return el("span", { class: `pill state-${PILL[status] || "new"}`, dataset: { status } }, status.replace("_", " "));
}

/** A link to a model's catalog page. */
export function modelLink(id) {
  return id ? el("a", { href: `/ui/catalog/${encodeURIComponent(id)}`, class: "mono" }, id) : el("span", { class: "muted" }, "—");
}

/** Cancel a job after asking; resolves to true when it was cancelled. */
export async function cancelJob(job, errorBox) {
  if (!(await confirmAction(`Cancel fine-tuning job ${job.id}? Its training process is stopped; the steps done so far are not published.`, "Cancel job"))) {
    return false;
  }
  try {
    await api("POST", `${JOBS}/${encodeURIComponent(job.id)}/cancel`);
    toast(`Cancelled ${job.id}`, "ok");
    return true;
  } catch (err) {
    showError(errorBox, `Could not cancel ${job.id}: ${err.message}`);
    return false;
  }
}

function unavailable(err) {
  return err instanceof ApiError && (err.status === 404 || err.status === 405 || err.status === 501);
}

async function list() {
  const box = document.getElementById("ft-jobs");
  const errorBox = document.getElementById("ft-error");
  let page;
  try {
    page = await api("GET", `${JOBS}?limit=100`);
  } catch (err) {
    if (unavailable(err)) {
      box.replaceChildren(el("p", { class: "empty", id: "no-jobs" }, "No fine-tuning jobs: this gateway has no fine-tuning API (/v1/fine_tuning/jobs)."));
      return false;
    }
    showError(errorBox, err.message);
    return true;  // 503 while the gateway starts its runner: try again
  }
  showError(errorBox, "");
  const jobs = page.data || [];
  if (!jobs.length) {
    box.replaceChildren(el("p", { class: "empty", id: "no-jobs" }, "No fine-tuning jobs yet. Create one with ",
      el("code", {}, "modelyard finetune create --model MODEL --data train.jsonl"), " or the OpenAI client."));
    return true;
  }
  box.replaceChildren(el("div", { class: "table-wrap" }, el("table", { class: "data", id: "ft-table" },
    el("thead", {}, el("tr", {}, ...["Job", "Status", "Base model", "Tuned model", "Created", "Trained tokens", ""].map((h, i) =>
      el("th", { class: i === 5 ? "num" : null }, h)))),
    el("tbody", {}, ...jobs.map((job) => el("tr", { dataset: { job: job.id, status: job.status } },
      el("td", {}, el("a", { href: `/ui/fine-tuning/${encodeURIComponent(job.id)}`, class: "mono" }, job.id),
        job.user_provided_suffix ? el("div", { class: "muted small" }, job.user_provided_suffix) : null),
      el("td", {}, statusPill(job.status)),
      el("td", {}, modelLink(job.model)),
      el("td", { class: "break" }, modelLink(job.fine_tuned_model)),
      el("td", { class: "nowrap" }, fmt.when(job.created_at)),
      el("td", { class: "num" }, job.trained_tokens === null || job.trained_tokens === undefined ? "—" : fmt.num(job.trained_tokens)),
      el("td", {}, FINAL.has(job.status) ? null : el("button", { type: "button", class: "danger small", "aria-label": `Cancel ${job.id}`,
        onclick: async () => { if (await cancelJob(job, errorBox)) list(); } }, "Cancel"))))))));
  return jobs.some((job) => !FINAL.has(job.status));
}

// Quickly while a job is unfinished; slowly otherwise, so a job created elsewhere shows up.
async function poll() {
  const busy = await list();
  document.body.dataset.loaded = "true";
  setTimeout(poll, busy ? POLL_MS : 10_000);
}

if (document.getElementById("ft-jobs")) poll();
