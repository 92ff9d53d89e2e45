// whisperforge demo: a thin client over the OpenAI-compatible API of this server.
// No build step, no dependencies: upload or record audio, send it to each chosen model
// (the server queues them), show each transcript with its segment timestamps. Speech
// tokenizers served by /v1/audio/tokens are listed too: their card shows the discrete speech
// tokens (as an LLM reads them) and the text the Whisper decoder reads back from them.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { blob: null, name: "", recorder: null, chunks: [], vadDefault: null };

function headers() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

function setStatus(text) { $("status").textContent = text; }

function updateGo() {
  const chosen = document.querySelectorAll("#models input:checked, #tokenizers input:checked").length;
  $("go").disabled = !state.blob || chosen === 0;
}

async function loadModels() {
  const box = $("models");
  let response;
  try {
    response = await fetch("/v1/models", { headers: headers() });
  } catch (err) {
    box.textContent = "Cannot reach the server: " + err;
    return;
  }
  if (response.status === 401) {
    $("key-label").hidden = false;
    box.innerHTML = '<span class="muted">Enter the API key, then press Enter.</span>';
    return;
  }
  const body = await response.json();
  box.textContent = "";
  body.data.filter((m) => m.id !== "whisper-1").forEach((m, i) => {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.value = m.id;
    input.checked = i === 0;
    input.addEventListener("change", updateGo);
    label.append(input, document.createTextNode(m.id + (m.default ? " (default)" : "")));
    box.append(label);
  });
  await loadTokenizers();
  updateGo();
}

async function loadTokenizers() {
  const box = $("tokenizers");
  let names = [];
  try {
    const health = await (await fetch("/health", { headers: headers() })).json();
    names = Object.keys(health.tokenizers || {});
    const vad = health.vad || {};
    $("vad-label").hidden = !vad.available;
    $("vad").checked = Boolean(vad.default);
    // null: each model's own default; the box is sent only once the user sets it
    state.vadDefault = vad.default === undefined ? null : vad.default;
    $("vad").indeterminate = state.vadDefault === null;
  } catch (err) {
    names = [];
  }
  box.textContent = "";
  $("tokenizers-box").hidden = names.length === 0;
  names.forEach((name) => {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.value = name;
    input.addEventListener("change", updateGo);
    label.append(input, document.createTextNode(name));
    box.append(label);
  });
}

function useAudio(blob, name) {
  state.blob = blob;
  state.name = name;
  const player = $("player");
  if (player.src) URL.revokeObjectURL(player.src);
  player.src = URL.createObjectURL(blob);
  player.hidden = false;
  $("source").textContent = name + " (" + (blob.size / 1024).toFixed(0) + " KB)";
  updateGo();
}

async function toggleRecord() {
  const button = $("record");
  if (state.recorder && state.recorder.state === "recording") {
    state.recorder.stop();
    return;
  }
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    setStatus("Recording needs a browser with MediaRecorder, on localhost or https.");
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    setStatus("Microphone unavailable: " + err.message);
    return;
  }
  const recorder = new MediaRecorder(stream);
  state.recorder = recorder;
  state.chunks = [];
  recorder.ondataavailable = (e) => e.data.size && state.chunks.push(e.data);
  recorder.onstop = () => {
    stream.getTracks().forEach((t) => t.stop());
    button.textContent = "● Record";
    button.classList.remove("recording");
    const type = recorder.mimeType || "audio/webm";
    const ext = type.includes("ogg") ? "ogg" : type.includes("mp4") ? "m4a" : "webm";
    useAudio(new Blob(state.chunks, { type }), "recording." + ext);
    setStatus("");
  };
  recorder.start();
  button.textContent = "■ Stop";
  button.classList.add("recording");
  setStatus("Recording… press Stop when done.");
}

function stamp(seconds) {
  const m = Math.floor(seconds / 60);
  const s = (seconds - 60 * m).toFixed(2).padStart(5, "0");
  return String(m).padStart(2, "0") + ":" + s;
}

function card(model) {
  const div = document.createElement("article");
  div.className = "result";
  div.dataset.model = model;
  div.innerHTML = '<h3><span class="name"></span><span class="spinner" aria-label="working"></span>' +
    '</h3><div class="meta">queued…</div><p class="text"></p><ol class="segments"></ol>';
  div.querySelector(".name").textContent = model;
  return div;
}

// " (4.2 s speech)" when the server cut non-speech out (vad), else nothing
function speechNote(body) {
  return body.duration_after_vad === undefined ? "" :
    " (" + body.duration_after_vad.toFixed(1) + " s speech)";
}

function fill(div, body, seconds) {
  div.querySelector(".spinner").remove();
  div.querySelector(".meta").textContent = body.language + " · " + body.duration.toFixed(1) +
    " s audio" + speechNote(body) + " · " + seconds.toFixed(1) + " s";
  div.querySelector(".text").textContent = body.text;
  if (body.words && body.words.length) showWords(div.querySelector(".text"), body.words);
  const list = div.querySelector(".segments");
  for (const seg of body.segments) {
    const li = document.createElement("li");
    const time = document.createElement("time");
    time.textContent = stamp(seg.start) + " → " + stamp(seg.end);
    const span = document.createElement("span");
    span.textContent = seg.text.trim();
    li.append(time, span);
    list.append(li);
  }
  div.dataset.done = "1";
}

// the text as its timed words: a click plays from the word, the word being played is marked
function showWords(p, words) {
  p.textContent = "";
  for (const w of words) {
    const span = document.createElement("span");
    span.className = "word";
    span.textContent = w.word;
    span.title = stamp(w.start) + " → " + stamp(w.end);
    span.dataset.start = w.start;
    span.dataset.end = w.end;
    span.addEventListener("click", () => {
      const player = $("player");
      player.currentTime = w.start;
      player.play();
    });
    p.append(span, " ");
  }
}

$("player").addEventListener("timeupdate", () => {
  const t = $("player").currentTime;
  for (const span of document.querySelectorAll(".result .word")) {
    span.classList.toggle("now", t >= +span.dataset.start && t < +span.dataset.end);
  }
});

function fail(div, message) {
  const spinner = div.querySelector(".spinner");
  if (spinner) spinner.remove();
  div.classList.add("error");
  div.querySelector(".meta").textContent = "failed";
  div.querySelector(".text").textContent = message;
  div.dataset.done = "1";
}

function fillTokens(div, body, seconds) {
  div.querySelector(".spinner").remove();
  div.querySelector(".meta").textContent = body.n_tokens + " speech tokens (" +
    body.tokens_per_second + " per second, " + body.codebook_size + " ids) · " +
    body.duration.toFixed(1) + " s audio" + speechNote(body) + " · " + seconds.toFixed(1) + " s";
  div.querySelector(".text").textContent = body.text || "(no text read back)";
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = "tokens as an LLM reads them";
  const code = document.createElement("code");
  code.className = "tokens";
  code.textContent = body.llm;
  details.append(summary, code);
  div.querySelector(".segments").replaceWith(details);
  div.dataset.done = "1";
}

async function runTokens(name, div) {
  const form = new FormData();
  form.append("file", state.blob, state.name);
  form.append("model", name);
  form.append("transcribe", "true");
  const language = $("language").value.trim();
  if (language) form.append("language", language);
  appendVad(form);
  await post("/v1/audio/tokens", form, div, fillTokens);
}

// the "Skip silence" box, unless it is hidden or left as the models' own default
function appendVad(form) {
  if ($("vad-label").hidden) return;
  if ($("vad").indeterminate) return;
  form.append("vad", $("vad").checked ? "true" : "false");
}

// POST the form; on success fillFn(div, body, seconds), else the card shows the error.
async function post(url, form, div, fillFn) {
  div.querySelector(".meta").textContent = "working…";
  const started = performance.now();
  try {
    const response = await fetch(url, { method: "POST", body: form, headers: headers() });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      fail(div, (body.error && body.error.message) || "HTTP " + response.status);
      return;
    }
    fillFn(div, body, (performance.now() - started) / 1000);
  } catch (err) {
    fail(div, "Request failed: " + err.message);
  }
}

async function runOne(model, div) {
  const form = new FormData();
  form.append("file", state.blob, state.name);
  form.append("model", model);
  form.append("response_format", "verbose_json");
  form.append("timestamp_granularities[]", "segment");
  if ($("words").checked) form.append("timestamp_granularities[]", "word");
  const language = $("language").value.trim();
  const task = $("task").value;
  if (language && task === "transcribe") form.append("language", language);
  appendVad(form);
  const url = task === "translate" ? "/v1/audio/translations" : "/v1/audio/transcriptions";
  await post(url, form, div, fill);
}

async function transcribe() {
  const models = [...document.querySelectorAll("#models input:checked")].map((i) => i.value);
  const tokenizers = [...document.querySelectorAll("#tokenizers input:checked")].map((i) => i.value);
  const results = $("results");
  results.textContent = "";
  $("go").disabled = true;
  setStatus("Transcribing with " + [...models, ...tokenizers].join(", ") + "…");
  const jobs = models.map((model) => {
    const div = card(model);
    results.append(div);
    return runOne(model, div);
  }).concat(tokenizers.map((name) => {
    const div = card("speech tokens: " + name);
    results.append(div);
    return runTokens(name, div);
  }));
  await Promise.all(jobs);
  setStatus("Done.");
  updateGo();
}

$("file").addEventListener("change", (e) => {
  const file = e.target.files[0];
  if (file) useAudio(file, file.name);
});
$("record").addEventListener("click", toggleRecord);
$("go").addEventListener("click", transcribe);
$("api-key").addEventListener("keydown", (e) => e.key === "Enter" && loadModels());
loadModels();
