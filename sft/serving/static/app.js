// The page of `python -m sft.serve`: it talks to the server's own OpenAI API, as any client would
// (GET v1/models, POST v1/chat/completions with stream: true), so what a person sees here is what
// a program gets. Plain script, no build step; answers stream in as server-sent events read from
// fetch()'s body. Compare mode sends the same request to two checkpoints at once.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "sft-serve-api-key";
let running = null; // the AbortController of the generation in progress

function headers() {
  const key = $("key").value.trim();
  return { "Content-Type": "application/json", ...(key ? { Authorization: `Bearer ${key}` } : {}) };
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function failure(response) {
  // The server answers every failure with OpenAI's {"error": {"message": ...}}.
  const body = await response.json().catch(() => null);
  return new Error(body?.error?.message || `${response.status} ${response.statusText}`);
}

async function loadModels() {
  showError("");
  $("server").textContent = "connecting…";
  const response = await fetch("v1/models", { headers: headers() });
  if (!response.ok) {
    $("server").textContent = "not connected";
    throw await failure(response);
  }
  const names = (await response.json()).data.map((model) => model.id);
  for (const [select, pick] of [[$("model-a"), names[names.length - 1]], [$("model-b"), names[0]]]) {
    const previous = select.value;
    select.replaceChildren(...names.map((name) => new Option(name, name)));
    select.value = names.includes(previous) ? previous : pick;
  }
  $("server").textContent = `${names.length} models: ${names.join(", ")}`;
}

function request(model) {
  const seed = $("seed").value.trim();
  return {
    model,
    messages: [{ role: "user", content: $("prompt").value }],
    max_tokens: Number($("max-tokens").value),
    temperature: Number($("temperature").value),
    top_p: Number($("top-p").value),
    ...(seed ? { seed: Number(seed) } : {}),
    stream: true,
  };
}

// Read server-sent events from a fetch body; call onData with each `data:` payload until [DONE].
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onData(JSON.parse(data));
      }
    }
  }
}

async function generate(side, model, signal) {
  const pane = $(`pane-${side}`), answer = $(`answer-${side}`), status = $(`status-${side}`);
  $(`title-${side}`).textContent = model;
  answer.textContent = "";
  pane.dataset.state = "streaming";
  status.textContent = "waiting…";
  const started = performance.now();
  let usage = null, finish = null;
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(request(model)), signal,
    });
    if (!response.ok) throw await failure(response);
    await readEvents(response, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      for (const choice of chunk.choices) {
        answer.textContent += choice.delta.content || "";
        finish = choice.finish_reason || finish;
      }
      usage = chunk.usage || usage;
      status.textContent = "streaming…";
    });
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    const tokens = usage ? `${usage.completion_tokens} tokens · ` : "";
    status.textContent = `done · ${tokens}${finish === "length" ? "stopped at max tokens" : "finished"} · ${seconds} s`;
    pane.dataset.state = "done";
  } catch (err) {
    pane.dataset.state = err.name === "AbortError" ? "stopped" : "error";
    status.textContent = err.name === "AbortError" ? "stopped" : `error: ${err.message}`;
  }
}

async function submit(event) {
  event.preventDefault();
  showError("");
  if (!$("prompt").value.trim()) return showError("Type attributes or a prompt first.");
  const compare = $("compare").checked;
  running = new AbortController();
  $("generate").disabled = true;
  $("stop").disabled = false;
  const jobs = [generate("a", $("model-a").value, running.signal)];
  if (compare) jobs.push(generate("b", $("model-b").value, running.signal));
  await Promise.all(jobs);
  $("generate").disabled = false;
  $("stop").disabled = true;
  running = null;
}

function addAttribute() {
  const key = $("attr-key").value.trim(), value = $("attr-value").value.trim();
  if (!key || !value) return;
  const prompt = $("prompt").value.trim();
  $("prompt").value = prompt ? `${prompt}*${key}#${value}` : `${key}#${value}`;
  $("attr-key").value = $("attr-value").value = "";
  $("attr-key").focus();
}

function setCompare() {
  const on = $("compare").checked;
  $("model-b").disabled = !on;
  $("pane-b").hidden = !on;
  $("answers").classList.toggle("compare", on);
}

function connect() {
  localStorage.setItem(KEY_STORE, $("key").value.trim());
  loadModels().catch((err) => showError(err.message));
}

$("key").value = localStorage.getItem(KEY_STORE) || "";
$("connect").addEventListener("click", connect);
$("key").addEventListener("keydown", (event) => { if (event.key === "Enter") connect(); });
$("compare").addEventListener("change", setCompare);
$("attr-add").addEventListener("click", addAttribute);
$("stop").addEventListener("click", () => running?.abort());
$("ask").addEventListener("submit", submit);
setCompare();
loadModels().catch((err) => showError(err.message));
