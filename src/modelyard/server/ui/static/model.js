// A model's page: the Try-it panel. Chat models stream an answer token by token from a deployment that
// runs this model (through /ui/proxy/v1, with the modelyard-deployment header so it is that deployment
// even at 0% traffic); embedding models show the vector's size and first numbers.

import { ApiError, api, el, fmt, pageData, showError, streamChat } from "./console.js";

const form = document.getElementById("chat-form");
if (form) {
  const log = document.getElementById("chat-log");
  const input = document.getElementById("chat-input");
  const send = document.getElementById("chat-send");
  const stop = document.getElementById("chat-stop");
  const maxTokens = document.getElementById("chat-max");
  const picker = document.getElementById("try-target");
  const error = document.getElementById("chat-error");
  const history = [];
  let controller = null;

  const target = () => pageData.targets[picker ? Number(picker.value) : 0];
  picker?.addEventListener("change", () => {
    document.getElementById("try-target-name").textContent = `${target().endpoint}/${target().deployment}`;
  });

  function bubble(role, text) {
    const node = el("div", { class: `bubble ${role}` }, el("span", { class: "who" }, role === "user" ? "You" : "Model"),
      el("span", { class: "text" }, text));
    log.append(node);
    log.scrollTop = log.scrollHeight;
    return node;
  }

  async function chat(text) {
    history.push({ role: "user", content: text });
    bubble("user", text);
    const answer = bubble("assistant", "");
    answer.classList.add("streaming");
    const out = answer.querySelector(".text");
    controller = new AbortController();
    stop.hidden = false;
    const started = performance.now();
    let first = null;
    try {
      const result = await streamChat(
        { model: target().endpoint, messages: history, max_tokens: Number(maxTokens?.value || 48) },
        { headers: { "modelyard-deployment": target().deployment }, signal: controller.signal,
          onDelta: (_delta, all) => { first ??= performance.now(); out.textContent = all; log.scrollTop = log.scrollHeight; } });
      history.push({ role: "assistant", content: result.text });
      answer.dataset.chunks = String(result.chunks);
      const ttft = first ? `${fmt.num(first - started)} ms to first token` : "no tokens";
      answer.append(el("span", { class: "meta" }, `${result.chunks} chunks · ${ttft} · ${result.headers.get("x-modelyard-deployment") || ""}`));
      if (!result.text) out.textContent = "(empty answer)";
    } catch (err) {
      if (err.name === "AbortError") {
        answer.append(el("span", { class: "meta" }, "stopped"));
        history.push({ role: "assistant", content: out.textContent });
      } else {
        history.pop();
        answer.remove();
        showError(error, err instanceof ApiError ? err.message : String(err));
      }
    } finally {
      answer.classList.remove("streaming");
      answer.dataset.done = "true";
      stop.hidden = true;
      controller = null;
    }
  }

  async function embed(text) {
    bubble("user", text);
    const body = await api("POST", "/ui/proxy/v1/embeddings", { model: target().endpoint, input: [text] },
      { "modelyard-deployment": target().deployment });
    const vector = body.data[0].embedding;
    const answer = bubble("assistant", `${vector.length} dimensions: [${vector.slice(0, 6).map((v) => v.toFixed(4)).join(", ")}, …]`);
    answer.dataset.done = "true";
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return showError(error, "Type a message first.");
    showError(error, "");
    send.disabled = true;
    input.value = "";
    try {
      if (pageData.task === "embedding") await embed(text);
      else await chat(text);
    } catch (err) {
      showError(error, err.message);
    } finally {
      send.disabled = false;
      input.focus();
    }
  });
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); form.requestSubmit(); }
  });
  stop.addEventListener("click", () => controller?.abort());
}
