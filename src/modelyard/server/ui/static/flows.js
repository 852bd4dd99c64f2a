// Flows: the list (name, chat or not, nodes, version) from the page's data, and each flow's last run read
// from the flow API (GET /api/flows/NAME/runs?limit=1, which the session cookie may call). Also what the
// flow page shares with the list: how a run's outcome is shown.

import { api, el, fmt, pageData } from "./console.js";

/** A run's outcome as a pill: "ok" for HTTP 200, else the status and its error code. */
export function runPill(run) {
  if (run.status === 200) return el("span", { class: "pill state-ready" }, "ok");
  return el("span", { class: "pill state-failed", title: run.error_code || "" }, `${run.status}${run.error_code ? ` ${run.error_code}` : ""}`);
}

function row(flow) {
  const names = flow.nodes.map((n) => n.name);
  return el("tr", { dataset: { flow: flow.name } },
    el("td", {}, el("a", { href: `/ui/flows/${encodeURIComponent(flow.name)}`, class: "mono strong" }, flow.name),
      flow.description ? el("div", { class: "muted small" }, flow.description) : null),
    el("td", { class: "flow-chat" }, flow.is_chat ? el("span", { class: "pill ok" }, "chat") : el("span", { class: "muted" }, "no")),
    el("td", { class: "flow-nodes" }, el("span", { class: "strong" }, String(names.length)), " ",
      el("span", { class: "muted small mono break" }, names.join(", "))),
    el("td", { class: "num" }, `v${flow.version}`),
    el("td", { class: "flow-last-run nowrap" }, el("span", { class: "muted" }, "…")));
}

async function lastRun(flow, cell) {
  try {
    const run = ((await api("GET", `/api/flows/${encodeURIComponent(flow.name)}/runs?limit=1`)).data || [])[0];
    cell.replaceChildren(run
      ? el("span", {}, fmt.time(run.created_at, true), " ", runPill(run), " ", el("span", { class: "muted small" }, fmt.usd(run.cost_usd)))
      : el("span", { class: "muted" }, "never"));
  } catch (err) {
    cell.replaceChildren(el("span", { class: "muted", title: err.message }, "—"));
  }
}

const table = document.getElementById("flows-table");
if (table) {
  const flows = pageData.flows || [];
  const body = table.querySelector("tbody");
  body.replaceChildren(...flows.map(row));
  document.getElementById("no-flows").hidden = flows.length > 0;
  Promise.all(flows.map((f, i) => lastRun(f, body.rows[i].querySelector(".flow-last-run"))))
    .finally(() => { document.body.dataset.loaded = "true"; });
}
