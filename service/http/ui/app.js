// The imgclf page: a client of the public HTTP API only (GET /v1/models, POST
// /v1/models/{model}/classify?top_k=K&explain=K). No build step, no external URL.
// body[data-state] says where it is (loading, ready, busy, done, error): the tests wait on it.
"use strict";

const MAX_CANVAS_SIDE = 1600; // the photo is drawn at most this large (CSS scales it down)

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"), topk: $("topk"), token: $("token"), file: $("file"), drop: $("drop"),
  error: $("error"), status: $("status"), result: $("result"), photo: $("photo"),
  overlay: $("overlay"), bars: $("bars"), opacity: $("opacity"), note: $("note"),
};
const state = { models: [], file: null, reply: null, bitmap: null, selected: null, seq: 0 };

function setState(name) {
  document.body.dataset.state = name;
}

function showError(message) {
  ui.error.textContent = message;
  ui.error.hidden = false;
  setState("error");
}

function clearError() {
  ui.error.hidden = true;
  ui.error.textContent = "";
}

// --- the HTTP API -----------------------------------------------------------------------

class ApiError extends Error {}

function headers(extra) {
  const h = Object.assign({}, extra);
  const token = ui.token.value.trim();
  if (token) h.Authorization = "Bearer " + token;
  return h;
}

// The server's error document {"error": message} in words, with the status.
async function inWords(response) {
  let message = "";
  try {
    message = (await response.json()).error || "";
  } catch (e) {
    message = "";
  }
  if (response.status === 401) {
    const given = ui.token.value.trim() ? "the token given was refused" : "no token was given";
    return `The server needs a valid bearer token (401: ${message || "unauthorized"}); ${given}. ` +
      "Type the server's token in the Token field.";
  }
  const what = message || response.statusText || "no details";
  return `The server answered ${response.status}: ${what}`;
}

async function call(path, init) {
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(`Cannot reach the server: ${e.message}`);
  }
  if (!response.ok) throw new ApiError(await inWords(response));
  return response.json();
}

async function loadModels() {
  state.seq++; // a classify still in flight answers for the old token or model list: dropped
  setState("loading");
  clearError();
  ui.model.disabled = true;
  try {
    const doc = await call("v1/models", { headers: headers() });
    state.models = doc.models || [];
  } catch (e) {
    state.models = [];
    ui.model.replaceChildren();
    showError(e.message);
    return;
  }
  const previous = ui.model.value;
  ui.model.replaceChildren(...state.models.map((m) => new Option(m.name, m.name)));
  if (state.models.some((m) => m.name === previous)) ui.model.value = previous;
  ui.model.disabled = state.models.length === 0;
  if (state.models.length === 0) {
    showError("The server serves no model yet.");
    return;
  }
  setState("ready");
  if (state.file) classify();
}

function currentModel() {
  return state.models.find((m) => m.name === ui.model.value);
}

async function classify() {
  const model = currentModel();
  if (!state.file || !model) return;
  const seq = ++state.seq;
  const k = Number(ui.topk.value);
  const explains = model.explain !== false;
  const query = `top_k=${k}` + (explains ? `&explain=${k}` : "");
  const path = `v1/models/${encodeURIComponent(model.name)}/classify?${query}`;
  clearError();
  setState("busy");
  ui.status.textContent = `Classifying ${state.file.name} with ${model.name}…`;
  const started = performance.now();
  let reply;
  try {
    reply = await call(path, {
      method: "POST",
      body: state.file,
      headers: headers({ "Content-Type": "application/octet-stream" }),
    });
  } catch (e) {
    if (seq !== state.seq) return;
    ui.status.textContent = "";
    ui.result.hidden = true;
    showError(e.message);
    return;
  }
  if (seq !== state.seq) return; // a newer request was sent meanwhile
  const seconds = ((performance.now() - started) / 1000).toFixed(2);
  const bitmap = await decode(state.file);
  if (seq !== state.seq) return;
  show(reply, bitmap, model, explains, seconds);
}

// --- drawing ----------------------------------------------------------------------------

async function decode(file) {
  try {
    return await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (e) {
    return null; // the server decoded it, this browser cannot (the bars are still shown)
  }
}

function show(reply, bitmap, model, explains, seconds) {
  clearError();
  const result = reply.results[0];
  state.reply = result;
  state.bitmap = bitmap;
  const size = result.width && result.height ? ` · ${result.width}×${result.height}` : "";
  ui.status.textContent = `${reply.model} version ${reply.version}${size} · ${seconds} s`;
  drawPhoto();
  drawBars(result);
  const maps = result.maps || [];
  if (!explains) {
    ui.note.textContent = `${model.name} gives no maps: its head is not global pooling + ` +
      "one linear layer, or its maps are turned off (see the server's docs).";
  } else if (maps.length === 0) {
    ui.note.textContent = "The server returned no maps.";
  } else if (!state.bitmap) {
    ui.note.textContent = "This browser cannot show the photo; the maps need it.";
  } else {
    ui.note.textContent = "";
  }
  select(maps.length ? maps[0].index : null);
  ui.result.hidden = false;
  setState("done");
}

function drawPhoto() {
  const b = state.bitmap;
  const scale = b ? Math.min(1, MAX_CANVAS_SIDE / Math.max(b.width, b.height)) : 1;
  const w = b ? Math.round(b.width * scale) : 1;
  const h = b ? Math.round(b.height * scale) : 1;
  for (const canvas of [ui.photo, ui.overlay]) {
    canvas.width = w;
    canvas.height = h;
  }
  if (b) ui.photo.getContext("2d").drawImage(b, 0, 0, w, h);
  ui.photo.hidden = !b;
}

// Google's Turbo colormap, polynomial approximation: t in [0, 1] -> [r, g, b] in 0..255.
function turbo(t) {
  const r = 0.1357 + t * (4.5974 - t * (42.3277 - t * (130.5887 - t * (150.5666 - t * 58.1375))));
  const g = 0.0914 + t * (2.1856 + t * (4.8052 - t * (14.0195 - t * (4.2109 + t * 2.7747))));
  const b = 0.1067 + t * (12.5925 - t * (60.1097 - t * (109.0745 - t * (88.5066 - t * 26.8183))));
  const clamp = (x) => Math.max(0, Math.min(255, Math.round(x * 255)));
  return [clamp(r), clamp(g), clamp(b)];
}

// The map (h rows of w values in [0, 1]) into a w x h canvas: colour by value, the photo
// showing through where the class's evidence is weak.
function mapImage(map) {
  const h = map.length;
  const w = map[0].length;
  const small = document.createElement("canvas");
  small.width = w;
  small.height = h;
  const ctx = small.getContext("2d");
  const pixels = ctx.createImageData(w, h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const v = Math.max(0, Math.min(1, map[y][x]));
      const [r, g, b] = turbo(v);
      const i = 4 * (y * w + x);
      pixels.data.set([r, g, b, Math.round(255 * v)], i);
    }
  }
  ctx.putImageData(pixels, 0, 0);
  return small;
}

// The map over the region `box` ([left, top, right, bottom] in original-image pixels) of the
// photo, upscaled with the canvas's smoothing (bilinear-like).
function drawMap(entry) {
  const ctx = ui.overlay.getContext("2d");
  ctx.clearRect(0, 0, ui.overlay.width, ui.overlay.height);
  if (!entry || !state.bitmap || !entry.map || entry.map.length === 0) return;
  const sx = ui.overlay.width / (state.reply.width || state.bitmap.width);
  const sy = ui.overlay.height / (state.reply.height || state.bitmap.height);
  const [left, top, right, bottom] = entry.box;
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.globalAlpha = Number(ui.opacity.value) / 100;
  ctx.drawImage(mapImage(entry.map), left * sx, top * sy, (right - left) * sx, (bottom - top) * sy);
  ctx.globalAlpha = 1;
}

function drawBars(result) {
  const mapped = new Set((result.maps || []).map((m) => m.index));
  ui.bars.replaceChildren(...result.predictions.map((p) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.index = p.index;
    button.disabled = !mapped.has(p.index);
    button.title = button.disabled ? "no map for this class" : "show this class's map";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = p.label;
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = (100 * p.probability).toFixed(1) + " %";
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = (100 * p.probability).toFixed(2) + "%";
    button.append(label, value, bar);
    button.addEventListener("click", () => select(state.selected === p.index ? null : p.index));
    item.append(button);
    return item;
  }));
}

function select(index) {
  state.selected = index;
  for (const button of ui.bars.querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(Number(button.dataset.index) === index));
  }
  const maps = (state.reply && state.reply.maps) || [];
  const entry = maps.find((m) => m.index === index);
  drawMap(entry);
  if (entry && state.bitmap) {
    ui.note.textContent = `The map of ${entry.label}: where the network found it in the ` +
      "photo (red strongest, blue weak, nothing shown where there is no evidence).";
  } else if (maps.length && state.bitmap) {
    ui.note.textContent = "No map shown.";
  }
}

// --- input ------------------------------------------------------------------------------

function take(file) {
  if (!file) return;
  state.file = file;
  classify();
}

ui.file.addEventListener("change", () => take(ui.file.files[0]));
ui.drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  ui.drop.classList.add("over");
});
ui.drop.addEventListener("dragleave", () => ui.drop.classList.remove("over"));
ui.drop.addEventListener("drop", (e) => {
  e.preventDefault();
  ui.drop.classList.remove("over");
  take(e.dataTransfer.files[0]);
});
ui.drop.addEventListener("keydown", (e) => {
  if (e.key === "Enter" || e.key === " ") ui.file.click();
});
ui.model.addEventListener("change", classify);
ui.topk.addEventListener("change", classify);
ui.token.addEventListener("change", loadModels);
ui.opacity.addEventListener("input", () => select(state.selected));
loadModels();
