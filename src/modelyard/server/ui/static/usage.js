// Usage & cost: spend by endpoint, key and day, and what the cache and the router saved against sending
// everything to the top tier (GET /api/usage/spend?days=N). Refreshed every 15 s.

import { api, el, fmt, showError } from "./console.js";
import { drawChart } from "./charts.js";

let days = 30;

function tiles(t) {
  const share = t.baseline_usd ? t.saved_usd / t.baseline_usd : null;
  const items = [
    ["Spent", fmt.usd(t.cost_usd), `${fmt.num(t.requests)} requests`],
    ["Saved", fmt.usd(t.saved_usd), share === null ? "nothing to compare yet" : `${fmt.pct(share)} of the top-tier cost`],
    ["Cache saved", fmt.usd(t.cache_saved_usd), `${fmt.num(t.cache_hits)} cache hits`],
    ["Router saved", fmt.usd(t.router_saved_usd), `${fmt.num(t.routed)} routed requests`],
    ["Without savings", fmt.usd(t.baseline_usd), "everything to the top tier"],
    ["Batch jobs", fmt.usd(t.batch_cost_usd), `${fmt.num(t.batch_requests)} batch requests`],
  ];
  document.getElementById("u-tiles").replaceChildren(...items.map(([k, v, sub]) =>
    el("div", { class: "tile", dataset: { tile: k } }, el("span", { class: "k" }, k), el("span", { class: "v" }, v), el("span", { class: "sub" }, sub))));
}

const COLUMNS = [["Requests", (r) => fmt.num(r.requests)], ["Errors", (r) => fmt.num(r.errors)],
  ["Tokens in / out", (r) => `${fmt.num(r.prompt_tokens)} / ${fmt.num(r.completion_tokens)}`],
  ["Spent", (r) => fmt.usd(r.cost_usd)], ["Cache saved", (r) => fmt.usd(r.cache_saved_usd)],
  ["Router saved", (r) => fmt.usd(r.router_saved_usd)], ["Without savings", (r) => fmt.usd(r.baseline_usd)]];

function fillTable(id, first, rows, label) {
  const table = document.getElementById(id);
  table.replaceChildren(
    el("thead", {}, el("tr", {}, el("th", {}, first), ...COLUMNS.map(([h]) => el("th", { class: "num" }, h)))),
    el("tbody", {}, ...(rows.length ? rows.map((r) => el("tr", {}, el("th", { scope: "row" }, label(r)),
      ...COLUMNS.map(([, f]) => el("td", { class: "num" }, f(r)))))
      : [el("tr", {}, el("td", { colspan: COLUMNS.length + 1, class: "muted" }, `No requests in the last ${days} day${days > 1 ? "s" : ""}.`))])));
}

function keyLabel(r) {
  if (r.key_id === null) return el("span", { class: "muted" }, "no key (refused)");
  const who = r.is_admin ? "admin key (CLI, console)" : `${r.key_name}${r.key_endpoint ? ` of ${r.key_endpoint}` : ""}`;
  return el("span", {}, who, " ", el("code", { class: "small" }, `${r.key_prefix || "?"}…`));
}

async function load() {
  try {
    const report = await api("GET", `/api/usage/spend?days=${days}`);
    showError(document.getElementById("u-error"), "");
    tiles(report.totals);
    fillTable("u-endpoints", "Endpoint", report.by_endpoint, (r) => el("a", { href: `/ui/endpoints/${encodeURIComponent(r.endpoint)}`, class: "mono" }, r.endpoint));
    fillTable("u-keys", "Key", report.by_key, keyLabel);
    fillTable("u-days-table", "Day (UTC)", report.by_day, (r) => r.day);
    const byDay = [...report.by_day].reverse();
    drawChart(document.getElementById("u-chart-days"), {
      kind: "bar", labels: byDay.map((r) => r.day), yTitle: "USD", format: (v) => fmt.usd(v),
      datasets: [{ label: "spent", data: byDay.map((r) => r.cost_usd), color: "#2563eb" },
                 { label: "saved", data: byDay.map((r) => r.saved_usd), color: "#16a34a" }],
    });
    drawChart(document.getElementById("u-chart-endpoints"), {
      kind: "bar", labels: report.by_endpoint.map((r) => r.endpoint), yTitle: "USD", format: (v) => fmt.usd(v),
      datasets: [{ label: "spent", data: report.by_endpoint.map((r) => r.cost_usd), color: "#2563eb" },
                 { label: "saved", data: report.by_endpoint.map((r) => r.saved_usd), color: "#16a34a" }],
    });
    document.body.dataset.loaded = "true";
  } catch (err) {
    showError(document.getElementById("u-error"), err.message);
  }
}

document.querySelectorAll("[data-days]").forEach((b) => b.addEventListener("click", () => {
  days = Number(b.dataset.days);
  document.querySelectorAll("[data-days]").forEach((x) => x.setAttribute("aria-pressed", x === b ? "true" : "false"));
  load();
}));
load();
setInterval(() => { if (!document.hidden) load(); }, 15000);
