// Catalog: filter the server-rendered cards as one types (search words, task, format, license, ready).
// The filters live in the URL (?q=&task=...), so a filtered view can be shared and survives a reload.

document.getElementById("filters").addEventListener("submit", (ev) => ev.preventDefault());
const q = document.getElementById("q");
const selects = { task: document.getElementById("f-task"), format: document.getElementById("f-format"),
                  license: document.getElementById("f-license") };
const ready = document.getElementById("f-ready");
const cards = [...document.querySelectorAll(".model-card")];
const count = document.getElementById("count");
const none = document.getElementById("no-match");

function apply() {
  const words = q.value.toLowerCase().split(/\s+/).filter(Boolean);
  let shown = 0;
  for (const card of cards) {
    const ok = words.every((w) => card.dataset.text.includes(w))
      && Object.entries(selects).every(([key, sel]) => !sel.value || card.dataset[key] === sel.value)
      && (!ready.checked || card.dataset.ready === "yes");
    card.hidden = !ok;
    shown += ok ? 1 : 0;
  }
  count.textContent = `${shown} of ${cards.length} models`;
  none.hidden = shown > 0;
  const params = new URLSearchParams();
  if (q.value) params.set("q", q.value);
  for (const [key, sel] of Object.entries(selects)) if (sel.value) params.set(key, sel.value);
  if (ready.checked) params.set("ready", "1");
  history.replaceState(null, "", params.toString() ? `?${params}` : location.pathname);
}

const initial = new URLSearchParams(location.search);
q.value = initial.get("q") || "";
for (const [key, sel] of Object.entries(selects)) sel.value = initial.get(key) || "";
ready.checked = initial.get("ready") === "1";
q.addEventListener("input", apply);
Object.values(selects).forEach((sel) => sel.addEventListener("change", apply));
ready.addEventListener("change", apply);
apply();
