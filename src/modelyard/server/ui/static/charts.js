// Chart.js (from npm, served at /ui/vendor/chart.js) with the console's look: one place for colours,
// axes and live updates. Charts are made once and updated in place, so polling does not flicker.

export const COLORS = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#0891b2", "#dc2626", "#4b5563", "#db2777"];
export const STATUS_COLORS = { "2xx": "#16a34a", "4xx": "#d97706", "5xx": "#dc2626" };

export function chartsAvailable() {
  return typeof window.Chart === "function";
}

if (chartsAvailable()) {
  const C = window.Chart;
  C.defaults.animation = false;
  C.defaults.responsive = true;
  C.defaults.maintainAspectRatio = false;
  C.defaults.font.family = getComputedStyle(document.body).fontFamily;
  C.defaults.font.size = 11;
  C.defaults.color = "#4b5563";
  C.defaults.plugins.legend.labels.boxWidth = 10;
  C.defaults.plugins.tooltip.mode = "index";
  C.defaults.plugins.tooltip.intersect = false;
}

/**
 * Make (or update) a chart in `canvas`. `kind`: "line" or "bar"; `stacked` stacks bars or areas.
 * `datasets`: [{label, data, color}] with one value per label (null for a gap).
 * The canvas's data-points / data-total attributes tell how much is drawn (tests read them).
 */
export function drawChart(canvas, { kind = "line", labels, datasets, stacked = false, yTitle = "", yMax = undefined, format = null }) {
  const points = datasets.reduce((n, d) => n + d.data.filter((v) => v !== null && v !== undefined && v !== 0).length, 0);
  const total = datasets.reduce((n, d) => n + d.data.reduce((a, v) => a + (Number(v) || 0), 0), 0);
  canvas.dataset.points = String(points);
  canvas.dataset.total = String(Math.round(total * 1e6) / 1e6);
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `${yTitle}: ${points} data points`);
  if (!chartsAvailable()) return null;
  const data = {
    labels,
    datasets: datasets.map((d, i) => {
      const color = d.color || COLORS[i % COLORS.length];
      return {
        label: d.label, data: d.data, borderColor: color, backgroundColor: kind === "bar" ? color : color + "33",
        maxBarThickness: 48, borderWidth: kind === "bar" ? 0 : 2, pointRadius: 2, pointHitRadius: 6, spanGaps: false,
        fill: kind === "line" && stacked, tension: 0.25, type: d.type || kind, yAxisID: d.axis || "y",
      };
    }),
  };
  const existing = window.Chart.getChart(canvas);
  if (existing) {
    existing.data = data;
    existing.update("none");
    return existing;
  }
  const scales = {
    x: { stacked, grid: { display: false }, ticks: { maxRotation: 0, autoSkip: true, autoSkipPadding: 12 } },
    y: { stacked, beginAtZero: true, max: yMax, title: { display: Boolean(yTitle), text: yTitle },
         ticks: format ? { callback: format } : {} },
  };
  if (datasets.some((d) => d.axis === "y2")) {
    scales.y2 = { position: "right", beginAtZero: true, grid: { display: false } };
  }
  return new window.Chart(canvas, { type: kind, data, options: { scales, interaction: { mode: "index", intersect: false } } });
}

/** A titled chart panel appended to `parent`; returns its canvas. */
export function chartPanel(parent, id, title, note = "") {
  let panel = document.getElementById(`panel-${id}`);
  if (!panel) {
    const doc = document;
    panel = doc.createElement("section");
    panel.className = "panel chart-box";
    panel.id = `panel-${id}`;
    const h = doc.createElement("h2");
    h.textContent = title;
    const holder = doc.createElement("div");
    holder.className = "chart-holder";
    const canvas = doc.createElement("canvas");
    canvas.id = `chart-${id}`;
    holder.append(canvas);
    panel.append(h, holder);
    if (note) {
      const p = doc.createElement("p");
      p.className = "hint";
      p.textContent = note;
      panel.append(p);
    }
    parent.append(panel);
  }
  return panel.querySelector("canvas");
}
