// Endpoints: the list (refreshed every few seconds) and a form for a new, empty endpoint. The form sends
// what was typed to the management API and shows its answer: the new keys (once), or the error message.

import { ApiError, api, copyText, el, pageData, showError, statePill } from "./console.js";

const body = document.querySelector("#endpoints-table tbody");

function overall(desc) {
  const states = desc.deployments.map((d) => d.state);
  if (!states.length) return "empty";
  if (states.includes("failed")) return "failed";
  if (states.every((s) => s === "ready")) return "ready";
  return "starting";
}

function trafficText(desc) {
  if (desc.policy === "router") return `router: ${(desc.tiers || []).join(" → ")}`;
  const live = Object.entries(desc.traffic || {}).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${v}%`);
  const mirror = Object.entries(desc.mirror_traffic || {}).map(([k, v]) => `mirror ${k} ${v}%`);
  return [...live, ...mirror].join(" · ") || "no traffic";
}

function render(list) {
  body.replaceChildren(...list.map((desc) => el("tr", { dataset: { endpoint: desc.name } },
    el("td", {}, el("a", { href: `/ui/endpoints/${encodeURIComponent(desc.name)}`, class: "mono strong" }, desc.name),
      desc.description ? el("div", { class: "muted small" }, desc.description) : null),
    el("td", {}, desc.deployments.length ? desc.deployments.map((d) => el("div", {}, el("span", { class: "mono" }, d.name), " ",
      el("span", { class: "muted small" }, d.model), " ", statePill(d.state))) : el("span", { class: "muted" }, "none")),
    el("td", {}, trafficText(desc)),
    el("td", {}, statePill(overall(desc))),
    el("td", { class: "nowrap" }, el("a", { href: `/ui/monitoring/${encodeURIComponent(desc.name)}` }, "Monitoring")),
  )));
  document.getElementById("no-endpoints").hidden = list.length > 0;
}

async function refresh() {
  try {
    render((await api("GET", "/api/endpoints")).data);
  } catch { /* keep the last table; the next refresh may work */ }
}

render(pageData.endpoints);
setInterval(refresh, 5000);

const form = document.getElementById("new-endpoint");
const error = document.getElementById("ne-error");
const created = document.getElementById("ne-created");
form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError(error, "");
  created.hidden = true;
  const name = document.getElementById("ne-name").value.trim();
  const description = document.getElementById("ne-desc").value.trim();
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const made = await api("POST", "/api/endpoints", description ? { name, description } : { name });
    created.replaceChildren(
      el("p", {}, "Created ", el("a", { href: `/ui/endpoints/${encodeURIComponent(made.name)}`, class: "mono" }, made.name),
        ". Its keys are shown this once: copy them now."),
      ...Object.entries(made.keys || {}).map(([slot, key]) => el("p", { class: "key-row" }, el("span", { class: "slot" }, slot),
        el("code", { class: "key", dataset: { slot } }, key), el("button", { type: "button", class: "small", onclick: () => copyText(key) }, "Copy"))),
    );
    created.hidden = false;
    form.reset();
    document.getElementById("ne-name").setAttribute("aria-invalid", "false");
    refresh();
  } catch (err) {
    showError(error, err instanceof ApiError ? err.message : String(err));
    document.getElementById("ne-name").setAttribute("aria-invalid", err.param === "name" ? "true" : "false");
  } finally {
    button.disabled = false;
  }
});
