// Monitoring: an endpoint's (or one deployment's) time series over a chosen window, polled every 5 s.
// Reads GET /api/endpoints/NAME/metrics (requests, latency, TTFT, tokens/s, errors, cost, per deployment)
// and GET /api/endpoints/NAME/decisions (cache hit rate, router tier mix and escalations, when present).

import { api, el, fmt, pageData, toast } from "./console.js";
import { STATUS_COLORS, chartPanel, chartsAvailable, drawChart } from "./charts.js";

const POLL_MS = 5000;
const state = { endpoint: pageData.endpoint, window: pageData.window, deployment: pageData.deployment };
const charts = document.getElementById("charts");
const depSelect = document.getElementById("m-deployment");
let timer = null;
let busy = false;

function syncUrl() {
  const params = new URLSearchParams({ window: state.window });
  if (state.deployment) params.set("deployment", state.deployment);
  history.replaceState(null, "", `/ui/monitoring/${encodeURIComponent(state.endpoint)}?${params}`);
}

function labelsOf(series) {
  const long = ["24h", "7d"].includes(state.window);
  return series.map((p) => fmt.time(p.t, long));
}

const perMin = (p, count) => (p.requests ? (p.requests_per_min * count) / p.requests : 0);

function tiles(totals, now) {
  const items = [
    ["Requests", fmt.num(totals.requests), `${fmt.num(totals.requests_per_min, 2)} per min`],
    ["Error rate", fmt.pct(totals.error_rate), `${fmt.num(totals.errors)} errors`],
    ["Latency p50 / p95", `${fmt.ms(totals.latency_ms.p50)}`, `p95 ${fmt.ms(totals.latency_ms.p95)} · p99 ${fmt.ms(totals.latency_ms.p99)}`],
    ["Time to first token", fmt.ms(totals.ttft_ms?.p50), `p95 ${fmt.ms(totals.ttft_ms?.p95)}`],
    ["Tokens / s", fmt.num(totals.tokens_per_s, 1), `${fmt.num(totals.completion_tokens)} generated`],
    ["Cost", fmt.usd(totals.cost_usd), `${fmt.num(totals.prompt_tokens)} prompt tokens`],
    ["In flight now", fmt.num(now.in_flight), `${now.deployments.reduce((n, d) => n + d.queue_length, 0)} queued`],
  ];
  document.getElementById("tiles").replaceChildren(...items.map(([k, v, sub]) =>
    el("div", { class: "tile", dataset: { tile: k } }, el("span", { class: "k" }, k), el("span", { class: "v" }, v), el("span", { class: "sub" }, sub))));
}

function drawSeries(data) {
  const source = state.deployment ? data.by_deployment[state.deployment] : data.series;
  const series = source.series;
  const labels = labelsOf(series);
  const minutes = data.bucket_s / 60;
  drawChart(chartPanel(charts, "requests", "Requests per minute, by status"), {
    kind: "bar", stacked: true, labels, yTitle: "req/min",
    datasets: ["2xx", "4xx", "5xx"].map((c) => ({ label: c, color: STATUS_COLORS[c], data: series.map((p) => perMin(p, p.by_status[c])) })),
  });
  drawChart(chartPanel(charts, "latency", "Latency (ms)"), {
    labels, yTitle: "ms",
    datasets: ["p50", "p95", "p99"].map((q) => ({ label: q, data: series.map((p) => p.latency_ms[q]) })),
  });
  drawChart(chartPanel(charts, "ttft", "Time to first token (ms)", "Streamed requests only."), {
    labels, yTitle: "ms",
    datasets: ["p50", "p95"].map((q) => ({ label: q, data: series.map((p) => (p.ttft_ms ? p.ttft_ms[q] : null)) })),
  });
  drawChart(chartPanel(charts, "tokens", "Tokens per second"), {
    labels, yTitle: "tokens/s", datasets: [{ label: "generation speed", data: series.map((p) => p.tokens_per_s) }],
  });
  drawChart(chartPanel(charts, "errors", "Errors", "5xx, timeouts (408) and capacity refusals (429)."), {
    kind: "bar", labels, yTitle: "errors",
    datasets: [{ label: "errors", color: STATUS_COLORS["5xx"], data: series.map((p) => p.errors) }],
  });
  drawChart(chartPanel(charts, "cost", "Cost (USD)"), {
    kind: "bar", labels, yTitle: "USD", format: (v) => fmt.usd(v),
    datasets: [{ label: `cost per ${minutes >= 60 ? minutes / 60 + " h" : minutes + " min"}`, color: "#9333ea", data: series.map((p) => p.cost_usd) }],
  });
  const split = document.getElementById("panel-split");
  if (!state.deployment) {
    drawChart(chartPanel(charts, "split", "Requests by deployment", "Live requests each deployment answered; mirrored copies are left out."), {
      kind: "bar", stacked: true, labels, yTitle: "requests",
      datasets: Object.entries(data.by_deployment).map(([name, s]) => ({ label: name, data: s.series.map((p) => p.requests) })),
    });
  } else if (split) {
    split.remove();
  }
}

function drawDecisions(decisions) {
  const note = document.getElementById("decisions-note");
  const labels = labelsOf(decisions?.series || []);
  const cachePanel = document.getElementById("panel-cache");
  const routerPanel = document.getElementById("panel-router");
  if (decisions?.has_cache) {
    drawChart(chartPanel(charts, "cache", "Cache hit rate"), {
      labels, yTitle: "%", yMax: 100,
      datasets: [{ label: "hit rate", color: "#0891b2", data: decisions.series.map((p) => (p.cache_hit_rate === null ? null : p.cache_hit_rate * 100)) }],
    });
  } else cachePanel?.remove();
  if (decisions?.has_router) {
    const tiers = [...new Set(decisions.series.flatMap((p) => Object.keys(p.tiers)))];
    drawChart(chartPanel(charts, "router", "Router: answering tier and escalations"), {
      kind: "bar", stacked: true, labels, yTitle: "requests",
      datasets: [...tiers.map((t) => ({ label: t, data: decisions.series.map((p) => p.tiers[t] || 0) })),
                 { label: "escalations", type: "line", color: "#dc2626", data: decisions.series.map((p) => p.escalations), axis: "y2" }],
    });
  } else routerPanel?.remove();
  const missing = [!decisions?.has_cache && "cache hit rate", !decisions?.has_router && "router tier mix"].filter(Boolean);
  note.textContent = missing.length ? `No ${missing.join(" or ")} in this window: the charts appear once the endpoint's requests go through a cache or a router.` : "";
}

function table(data, endpoint) {
  const body = document.querySelector("#by-deployment tbody");
  const now = Object.fromEntries(data.now.deployments.map((d) => [d.name, d]));
  const total = Object.values(data.by_deployment).reduce((n, s) => n + s.totals.requests, 0);
  body.replaceChildren(...Object.entries(data.by_deployment).map(([name, s]) => {
    const t = s.totals;
    const inst = now[name];
    const live = endpoint?.traffic?.[name] || 0;
    const mirror = endpoint?.mirror_traffic?.[name];
    return el("tr", { dataset: { deployment: name, requests: t.requests } },
      el("th", { scope: "row", class: "mono" }, name),
      el("td", {}, `${live}%${mirror ? ` (+${mirror}% mirror)` : ""}`),
      el("td", { class: "num", dataset: { field: "requests" } }, fmt.num(t.requests), t.mirrored ? el("span", { class: "muted small" }, ` +${t.mirrored} mirrored`) : null),
      el("td", { class: "num", dataset: { field: "share" } }, total ? `${fmt.num((100 * t.requests) / total, 1)}%` : "—"),
      el("td", { class: "num" }, fmt.num(t.errors)),
      el("td", { class: "num" }, fmt.num(t.latency_ms.p50)),
      el("td", { class: "num" }, fmt.num(t.latency_ms.p95)),
      el("td", { class: "num" }, fmt.num(t.tokens_per_s, 1)),
      el("td", { class: "num" }, fmt.usd(t.cost_usd)),
      el("td", {}, inst ? (inst.hosted ? "hosted" : inst.instances.map((i) => `${i.state}${i.cpu_percent !== null ? ` ${fmt.num(i.cpu_percent)}% cpu` : ""}${i.rss_mb ? ` ${fmt.num(i.pss_mb ?? i.rss_mb)} MB` : ""}`).join(", ") || "none") : "stopped"));
  }));
}

async function load() {
  if (busy) return;
  busy = true;
  const q = new URLSearchParams({ window: state.window });
  if (state.deployment) q.set("deployment", state.deployment);
  const base = `/api/endpoints/${encodeURIComponent(state.endpoint)}`;
  try {
    const [data, decisions, endpoint] = await Promise.all([
      api("GET", `${base}/metrics?${q}`),
      api("GET", `${base}/decisions?${q}`).catch(() => null),
      api("GET", base).catch(() => null),
    ]);
    const known = new Set([...depSelect.options].map((o) => o.value));
    for (const name of Object.keys(data.by_deployment)) if (!known.has(name)) depSelect.append(el("option", { value: name }, name));
    depSelect.value = state.deployment;
    const source = state.deployment ? data.by_deployment[state.deployment] : data.series;
    tiles(source.totals, data.now);
    drawSeries(data);
    drawDecisions(decisions);
    table(data, endpoint);
    document.getElementById("live").textContent = `${chartsAvailable() ? "" : "Charts are off (run make install). "}Updated ${new Date().toLocaleTimeString("en-GB")} · every ${POLL_MS / 1000} s · buckets of ${fmt.num(data.bucket_s / 60)} min`;
    document.body.dataset.loaded = "true";
  } catch (err) {
    toast(err.message, "error");
  } finally {
    busy = false;
  }
}

function restart() {
  clearInterval(timer);
  syncUrl();
  load();
  timer = setInterval(() => { if (!document.hidden) load(); }, POLL_MS);
}

if (state.endpoint) {
  document.getElementById("mon-controls").addEventListener("submit", (ev) => ev.preventDefault());
  document.querySelectorAll("[data-window]").forEach((b) => b.addEventListener("click", () => {
    state.window = b.dataset.window;
    document.querySelectorAll("[data-window]").forEach((x) => x.setAttribute("aria-pressed", x === b ? "true" : "false"));
    restart();
  }));
  depSelect.addEventListener("change", () => { state.deployment = depSelect.value; restart(); });
  document.getElementById("m-endpoint").addEventListener("change", (ev) => {
    location.href = `/ui/monitoring/${encodeURIComponent(ev.target.value)}?window=${state.window}`;
  });
  if (state.deployment) depSelect.append(el("option", { value: state.deployment }, state.deployment));
  restart();
}
