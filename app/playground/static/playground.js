// The playground: plain JS against the public HTTP API (see README, "HTTP API").
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], session: null, generating: null };

// ---- HTTP -------------------------------------------------------------------

class ApiError extends Error {}

// With RNNLM_API_KEYS set the API needs a key: the page asks for it on the first 401
// and keeps it for this tab only.
const KEY_STORAGE = "rnnlm-api-key";
function authorization() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// POST/GET JSON; a non-2xx answer becomes an ApiError with the server's message.
async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { ...authorization(), ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw new ApiError(await errorMessage(response));
  return response.status === 204 ? null : response.json();
}

async function errorMessage(response) {
  if (response.status === 401) {
    $("key-box").hidden = false;
    $("api-key").focus();
    return "401: this server needs an API key: enter it above";
  }
  try {
    const body = await response.json();
    return `${response.status}: ${body.error?.message ?? JSON.stringify(body)}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// POST with "stream": true and read the Server-Sent Events as they arrive. EventSource
// only does GET, so the body is read with fetch + ReadableStream and parsed here:
// events are separated by a blank line, each has "event:" and "data:" lines.
async function stream(path, body, onEvent, signal) {
  const response = await fetch(path, {
    method: "POST",
    headers: { ...authorization(), "Content-Type": "application/json", Accept: "text/event-stream" },
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
  if (!response.ok) throw new ApiError(await errorMessage(response));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = parseEvent(block);
      if (event) onEvent(event.type, event.data);
      // Several events can arrive in one network chunk (a busy machine, a proxy that
      // buffers): give the page a turn between them so each token shows on its own.
      if (buffer.includes("\n\n")) await nextTurn();
    }
  }
}

function nextTurn() {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

function parseEvent(block) {
  let type = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue; // comment / keep-alive ping
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
  }
  if (data.length === 0) return null;
  return { type, data: JSON.parse(data.join("\n")) };
}

// ---- small helpers ----------------------------------------------------------

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

function fail(error) {
  setStatus(error instanceof ApiError ? error.message : String(error), true);
}

function currentModel() {
  return state.models.find((m) => m.id === $("model").value);
}

function numberOr(id, fallback) {
  const value = $(id).value.trim();
  return value === "" ? fallback : Number(value);
}

// Red (improbable) through yellow to green (probable), on a log scale: 1e-4 -> red, 1 -> green.
function probabilityColour(logprob) {
  const t = Math.min(1, Math.max(0, 1 + logprob / Math.log(1e4)));
  return `hsl(${Math.round(120 * t)} 75% 80%)`;
}

// How a token reads on screen: words get a space between them, line ends show as ⏎.
function visible(token) {
  if (token === "\n" || token === "<eos>") return "⏎\n";
  return currentModel()?.level === "word" ? `${token} ` : token;
}

function tokenSpan(token, logprob, unknown) {
  const span = document.createElement("span");
  span.className = unknown ? "tok unknown" : "tok";
  span.textContent = visible(token);
  span.style.background = probabilityColour(logprob);
  span.title = `${JSON.stringify(token)}  p=${Math.exp(logprob).toPrecision(3)}  log p=${logprob.toFixed(3)}${unknown ? "  (unknown)" : ""}`;
  return span;
}

// ---- models -----------------------------------------------------------------

async function loadModels() {
  const body = await api("GET", "/v1/models");
  state.models = body.data;
  const select = $("model");
  select.replaceChildren(
    ...state.models.map((m) => new Option(`${m.id} (${m.level}, ${m.cell})`, m.id, m.default, m.default)),
  );
  showModelInfo();
}

function showModelInfo() {
  const m = currentModel();
  if (!m) return;
  $("model-info").textContent =
    `${m.num_layers}×${m.hidden_size} ${m.cell}, vocabulary ${m.vocab_size}, on ${m.device}`;
  $("prompt").value = m.level === "word" ? "the company said" : "ROMEO:";
  updateNextToken();
}

// ---- generate (streamed) ----------------------------------------------------

function generationSettings() {
  return {
    model: $("model").value,
    max_tokens: numberOr("max-tokens", 200),
    temperature: numberOr("temperature", 0.8),
    top_k: numberOr("top-k", 0),
    seed: numberOr("seed", null),
  };
}

async function generate() {
  const output = $("output");
  const prompt = $("prompt").value;
  const promptSpan = document.createElement("span");
  promptSpan.className = "prompt";
  promptSpan.textContent = prompt;
  const generated = document.createElement("span");
  output.replaceChildren(promptSpan, generated);
  $("generate-summary").textContent = "";
  await runStream("/v1/generate", { ...generationSettings(), prompt }, generated, (done) => {
    $("generate-summary").textContent =
      `${done.usage.completion_tokens} tokens, finish reason: ${done.finish_reason}`;
  });
}

// Stream a generation into `target`, one token at a time; `onDone` gets the final event.
// Returns whether the generation finished (false when stopped or failed). One at a time.
async function runStream(path, body, target, onDone) {
  const controller = new AbortController();
  state.generating = controller;
  setStreaming(true);
  setStatus("generating…");
  let finished = false;
  try {
    // Events: "token" (one per generated token), then "done" or "error".
    await stream(path, body, (type, data) => {
      if (type === "token") target.textContent += data.text;
      else if (type === "done") { finished = true; onDone(data); }
      else if (type === "error") throw new ApiError(data.error.message);
    }, controller.signal);
    setStatus("");
  } catch (error) {
    if (error.name === "AbortError") setStatus("stopped");
    else fail(error);
  } finally {
    state.generating = null;
    setStreaming(false);
  }
  return finished;
}

function setStreaming(streaming) {
  $("stop").disabled = !streaming;
  $("generate").disabled = streaming;
  $("session-continue").disabled = streaming || state.session === null;
}

// ---- next-token bars --------------------------------------------------------

let nextTokenTimer = 0;
let nextTokenAsked = 0; // answers can arrive out of order: only the latest question's is shown
function updateNextToken() {
  clearTimeout(nextTokenTimer);
  nextTokenTimer = setTimeout(() => showNextToken().catch(fail), 250);
}

async function showNextToken() {
  const asked = ++nextTokenAsked;
  const body = await api("POST", "/v1/next-token", {
    model: $("model").value,
    context: $("prompt").value,
    top_k: 10,
  });
  if (asked !== nextTokenAsked) return;
  renderBars(body.top, (entry) => {
    $("prompt").value += entry.text; // what the token adds after the context, spacing included
    updateNextToken();
  });
  $("entropy").textContent = `entropy ${body.entropy.toFixed(3)} nats`;
}

function renderBars(entries, onPick) {
  const top = Math.max(...entries.map((e) => e.prob), 1e-9);
  $("bars").replaceChildren(...entries.map((entry) => {
    const row = document.createElement("li");
    const token = document.createElement("span");
    token.className = "token";
    token.textContent = JSON.stringify(entry.token).slice(1, -1);
    const track = document.createElement("span");
    track.className = "track";
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.display = "block";
    bar.style.width = `${(100 * entry.prob) / top}%`;
    track.append(bar);
    const prob = document.createElement("span");
    prob.className = "prob";
    prob.textContent = `${(100 * entry.prob).toFixed(1)}%`;
    row.append(token, track, prob);
    row.addEventListener("click", () => onPick(entry));
    return row;
  }));
}

// ---- score ------------------------------------------------------------------

async function score() {
  const body = await api("POST", "/v1/score", {
    model: $("model").value,
    texts: [$("score-text").value],
  });
  const result = body.results[0];
  $("scored").replaceChildren(...result.tokens.map((t) => tokenSpan(t.token, t.logprob, t.unknown)));
  $("score-summary").textContent =
    `log p = ${result.logprob.toFixed(3)} over ${result.token_count} tokens, perplexity ${result.perplexity.toFixed(2)}`;
}

// ---- sessions ---------------------------------------------------------------

function showSession(session) {
  state.session = session;
  const open = session !== null;
  $("session-info").textContent = open
    ? `session ${session.id.slice(0, 8)}…: ${session.token_count} tokens, version ${session.version}, expires in ${Math.round(session.expires_in)} s`
    : "no session";
  for (const id of ["session-end", "session-feed", "session-continue", "session-download"]) $(id).disabled = !open;
}

async function newSession() {
  const session = await api("POST", "/v1/sessions", { model: $("model").value });
  $("session-transcript").replaceChildren();
  showSession(session);
}

async function feedSession() {
  const text = $("session-text").value;
  // flush: a word model tokenises the last word now instead of waiting for more text.
  const body = await api("POST", `/v1/sessions/${state.session.id}/feed`, { text, flush: true });
  $("session-transcript").append(...body.tokens.map((t) => tokenSpan(t.token, t.logprob, t.unknown)));
  $("session-text").value = "";
  showSession(body.session);
}

async function continueSession() {
  const generated = document.createElement("span");
  generated.className = "generated";
  $("session-transcript").append(generated);
  const path = `/v1/sessions/${state.session.id}/generate`;
  const finished = await runStream(path, generationSettings(), generated, (done) => showSession(done.session));
  // A generation that did not finish leaves the session unchanged: so does the transcript.
  if (!finished) generated.remove();
}

// Download: the session as a safetensors file, saved as <id>.safetensors (GET .../export).
async function downloadSession() {
  const response = await fetch(`/v1/sessions/${state.session.id}/export`, { headers: authorization() });
  if (!response.ok) throw new ApiError(await errorMessage(response));
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = `${state.session.id}.safetensors`;
  link.click();
  URL.revokeObjectURL(link.href);
}

// Upload: a downloaded file becomes a new session here (POST /v1/sessions/import).
async function uploadSession() {
  const file = $("session-upload").files[0];
  $("session-upload").value = "";  // the same file can be chosen again
  if (!file) return;
  const response = await fetch("/v1/sessions/import", {
    method: "POST",
    headers: { ...authorization(), "Content-Type": "application/octet-stream" },
    body: file,
  });
  if (!response.ok) throw new ApiError(await errorMessage(response));
  const session = await response.json();
  if ($("model").value !== session.model) {
    $("model").value = session.model;  // a change event is not fired: the new session stays shown
    showModelInfo();
  }
  const note = document.createElement("span");
  note.className = "muted";
  note.textContent = `[imported: ${session.token_count} tokens${session.pending_text ? `, pending "${session.pending_text}"` : ""}] `;
  $("session-transcript").replaceChildren(note);
  showSession(session);
}

async function endSession() {
  await api("DELETE", `/v1/sessions/${state.session.id}`);
  showSession(null);
}

// ---- wiring -----------------------------------------------------------------

function on(id, event, handler) {
  $(id).addEventListener(event, () => handler().catch(fail));
}

document.addEventListener("DOMContentLoaded", () => {
  on("model", "change", async () => { showModelInfo(); showSession(null); });
  on("generate", "click", generate);
  $("stop").addEventListener("click", () => state.generating?.abort());
  $("prompt").addEventListener("input", updateNextToken);
  on("score", "click", score);
  on("session-new", "click", newSession);
  on("session-feed", "click", feedSession);
  on("session-continue", "click", continueSession);
  on("session-end", "click", endSession);
  on("session-download", "click", downloadSession);
  on("session-upload", "change", uploadSession);
  on("api-key", "change", async () => {
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    setStatus("");
    await loadModels();
  });
  loadModels().catch(fail);
});
