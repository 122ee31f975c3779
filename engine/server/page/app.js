"use strict";

const $ = (id) => document.getElementById(id);
const on = (id, type, handler) => $(id).addEventListener(type, handler);
const POLL_MS = 400;
const PNG_PREFIX = "data:image/png;base64,";

const state = {
  models: [], checkpoints: [], samplers: [], schedulers: [],
  lastSeed: null, lastStep: null, running: false, init: null, hasMask: false,
};

const apiError = (message, status = 0, retryAfter = null) => Object.assign(new Error(message), { status, retryAfter });

function errorDetail(data, text, response) {
  const detail = data && typeof data === "object" ? data.detail ?? data.error ?? data.errors : null;
  if (typeof detail === "string" && detail) return detail;
  if (Array.isArray(detail)) return detail.map((d) => d.msg ?? JSON.stringify(d)).join("; ");
  return detail ? JSON.stringify(detail) : `${response.status} ${response.statusText}: ${text.slice(0, 200)}`;
}

async function api(path, body) {
  const options = body === undefined ? {}
    : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(path, options).catch((error) => {
    throw apiError(`the server did not answer (${error.message})`);
  });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) throw apiError(errorDetail(data, text, response), response.status, response.headers.get("Retry-After"));
  return data;
}

function showError(error) {
  let message = error ? error.message : "";
  if (error?.status === 503) {
    message = `Server busy: ${message}${error.retryAfter ? ` (try again in ${error.retryAfter} s)` : ""}`;
  }
  $("error").textContent = message;
  $("error").hidden = !error;
}

const fold = (text) => String(text ?? "").trim().toLowerCase();
const same = (a, b) => a != null && b != null && fold(a) === fold(b);
const isOwnSampler = (sampler) => Boolean(sampler?.options?.sdcpu);
const currentModel = () => state.models.find((m) => m.title === $("model").value) ?? null;

function findSampler(name) {
  if (!name) return null;
  return state.samplers.find((s) => s.name === name) ?? state.samplers.find((s) => same(s.name, name))
    ?? state.samplers.find((s) => (s.aliases ?? []).some((a) => same(a, name))) ?? null;
}

function findScheduler(name) {
  return state.schedulers.find((s) => [s.label, s.name, ...(s.aliases ?? [])].some((v) => same(v, name))) ?? null;
}

function findModel(name, hash) {
  const byName = (m) => [m.title, m.model_name, m.filename].some((v) => same(v, name));
  const byHash = (c) => hash && [c.hash, c.sha256].some((v) => v && fold(v).startsWith(fold(hash)));
  const checkpoint = state.checkpoints.find(byName) ?? state.checkpoints.find(byHash);
  return state.models.find((m) => m.title === checkpoint?.title) ?? state.models.find(byName) ?? null;
}

function el(tag, props = {}, children = []) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function fillSelects() {
  $("model").replaceChildren(...state.models.map((m) => new Option(`${m.title} (${m.family})`, m.title)));
  $("scheduler").replaceChildren(...state.schedulers.map((s) => new Option(s.label, s.label)));
  const label = (s) => {
    const { shown_as: shown, schedule } = s.options ?? {};
    return shown ? `${s.name}  (${shown}${schedule && schedule !== "Automatic" ? ` ${schedule}` : ""})` : s.name;
  };
  const groups = [["Automatic1111", state.samplers.filter((s) => !isOwnSampler(s))],
    ["sdcpu (diffusers-exact)", state.samplers.filter(isOwnSampler)]];
  $("sampler").replaceChildren(...groups.filter(([, list]) => list.length).map(([name, list]) =>
    el("optgroup", { label: name }, list.map((s) => new Option(label(s), s.name)))));
}

function syncScheduler() {
  const own = isOwnSampler(findSampler($("sampler").value));
  if (own) $("scheduler").value = findScheduler("Automatic")?.label ?? $("scheduler").value;
  $("scheduler").disabled = own;
  $("scheduler").title = own ? "sdcpu's own samplers fix their schedule; an Automatic1111 sampler takes one" : "";
}

function applyModelDefaults(model) {
  if (!model) return;
  const defaults = { steps: model.steps, cfg_scale: model.cfg_scale, width: model.width, height: model.height,
    strength: model.denoising_strength };
  for (const [id, value] of Object.entries(defaults)) if (value != null) $(id).value = value;
  for (const id of ["width", "height"]) $(id).step = $(id).min = model.size_multiple || 8;
  const sampler = findSampler(model.sampler_name);
  if (sampler) $("sampler").value = sampler.name;
  $("scheduler").value = findScheduler(model.scheduler || "Automatic")?.label ?? $("scheduler").value;
  syncScheduler();
  $("model").title = `${model.family}${model.inpaint ? ", inpainting" : ""}`;
}

async function load() {
  try {
    const [models, checkpoints, samplers, schedulers, options] = await Promise.all(["/sdcpu/v1/models",
      "/sdapi/v1/sd-models", "/sdapi/v1/samplers", "/sdapi/v1/schedulers", "/sdapi/v1/options"].map((p) => api(p)));
    Object.assign(state, { models, checkpoints, samplers, schedulers });
    fillSelects();
    const current = models.find((m) => m.title === options?.sd_model_checkpoint) ?? models[0];
    if (current) $("model").value = current.title;
    applyModelDefaults(current);
    $("server_status").textContent = `${models.length} model${models.length === 1 ? "" : "s"}`;
    document.body.dataset.ready = "true";
  } catch (error) {
    showError(error);
    $("server_status").textContent = "server not reachable";
    document.body.dataset.ready = "error";
  }
}

function numberField(id) {
  const raw = $(id).value.trim();
  return raw !== "" && Number.isFinite(Number(raw)) ? Number(raw) : undefined;
}

function buildRequest() {
  const body = { prompt: $("prompt").value, negative_prompt: $("negative_prompt").value, seed: numberField("seed") ?? -1,
    sampler_name: $("sampler").value || undefined, scheduler: $("scheduler").value || undefined };
  for (const id of ["steps", "cfg_scale", "width", "height", "batch_size"]) body[id] = numberField(id);
  if ($("model").value) body.override_settings = { sd_model_checkpoint: $("model").value };
  if (state.init) {
    Object.assign(body, { init_images: [state.init.dataURL], denoising_strength: numberField("strength") ?? 0.75 });
    if (state.hasMask) {
      Object.assign(body, { mask: maskDataURL(), mask_blur: numberField("mask_blur") ?? 4, inpainting_fill: 1,
        inpaint_full_res: false });
    }
  }
  return body;
}

function formatSeconds(seconds) {
  return seconds < 60 ? `${seconds.toFixed(1)} s` : `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

function showProgress(p) {
  const job = p.state ?? {};
  if (!job.job_count && !p.progress) {
    $("progress_text").textContent = "waiting for the server…";
    return;
  }
  $("progress").value = Math.min(1, Math.max(0, p.progress ?? 0));
  const parts = [`step ${job.sampling_step ?? 0}/${job.sampling_steps ?? "?"}`];
  const sps = p.seconds_per_step;
  if (sps) parts.push(`${sps.toFixed(sps < 0.1 ? 3 : 2)} s/step`);
  if (p.eta_relative != null) parts.push(`ETA ${formatSeconds(Math.max(0, p.eta_relative))}`);
  if (job.interrupted) parts.push("cancelling…");
  $("progress_text").textContent = parts.join(" · ");
  state.lastStep = [job.sampling_step, job.sampling_steps];
  if (p.current_image) showPreview(p.current_image);
}

function showPreview(base64) {
  $("preview").src = base64.startsWith("data:") ? base64 : PNG_PREFIX + base64;
  $("preview").hidden = false;
  $("preview_empty").hidden = true;
}

function startPolling() {
  let active = true;
  let timer = null;
  const tick = async () => {
    const progress = await api("/sdapi/v1/progress").catch(() => null);
    if (active && progress) showProgress(progress);
    if (active) timer = setTimeout(tick, POLL_MS);
  };
  timer = setTimeout(tick, POLL_MS / 2);
  return () => { active = false; clearTimeout(timer); };
}

function setRunning(running) {
  state.running = running;
  $("generate").disabled = running;
  $("cancel").disabled = !running;
}

async function generate() {
  if (state.running) return;
  showError(null);
  const body = buildRequest();
  setRunning(true);
  state.lastStep = null;
  $("progress").value = 0;
  $("progress_text").textContent = "starting…";
  const started = performance.now();
  const stopPolling = startPolling();
  try {
    const answer = await api(body.init_images ? "/sdapi/v1/img2img" : "/sdapi/v1/txt2img", body);
    stopPolling();
    const info = parseInfo(answer?.info);
    const images = answer?.images ?? [];
    addResults(images, info);
    const took = formatSeconds((performance.now() - started) / 1000);
    const [step, steps] = state.lastStep ?? [];
    if (!info.interrupted) $("progress").value = 1;
    $("progress_text").textContent = info.interrupted
      ? `interrupted${step != null ? ` at step ${step}/${steps}` : ""} · ${took}`
      : `done: ${images.length} image${images.length === 1 ? "" : "s"} in ${took}`;
  } catch (error) {
    stopPolling();
    showError(error);
    $("progress_text").textContent = "failed";
  } finally {
    setRunning(false);
  }
}

async function cancel() {
  $("cancel").disabled = true;
  $("progress_text").textContent = "cancelling…";
  await api("/sdapi/v1/interrupt", {}).catch((error) => {
    showError(error);
    $("cancel").disabled = !state.running;
  });
}

function parseInfo(info) {
  if (info && typeof info === "object") return info;
  try { return JSON.parse(info || "{}"); } catch { return {}; }
}

function seedOf(infotext) {
  const match = /(?:^|, )Seed: (-?\d+)/.exec(String(infotext ?? "").trimEnd().split("\n").pop());
  return match ? Number(match[1]) : null;
}

function addResults(images, info) {
  const seeds = info.all_seeds ?? [];
  $("gallery").prepend(...images.map((base64, i) => {
    const text = info.infotexts?.[i] ?? "";
    const seed = seedOf(text) ?? (seeds.length === images.length ? seeds[i] : info.seed);
    return resultNode(PNG_PREFIX + base64, seed, text, Boolean(info.interrupted));
  }));
  if (images.length) showPreview(images[0]);
  const seed = info.seed ?? seeds[0];
  if (seed != null) {
    state.lastSeed = seed;
    Object.assign($("reuse_seed"), { disabled: false, title: `Reuse the last seed (${seed})` });
  }
}

function resultNode(dataURL, seed, infotext, interrupted) {
  const button = (label, className, onclick) => el("button", { type: "button", className, textContent: label, onclick });
  const seedLine = el("div", { className: "seed-line" }, ["Seed ", el("span", { className: "seed", textContent: seed ?? "?" })]);
  if (interrupted) seedLine.append(" ", el("span", { className: "badge", textContent: "interrupted" }));
  const actions = el("div", { className: "inline" }, [
    button("Use these settings", "use-settings", () => fillFromDataURL(dataURL, `the image with seed ${seed}`)),
    button("To img2img", "to-img2img", () => loadInit(dataURL)),
    el("a", { className: "save", textContent: "Save", href: dataURL, download: `sdcpu-${seed ?? "image"}.png` }),
  ]);
  return el("figure", { className: interrupted ? "result interrupted" : "result" }, [
    el("img", { src: dataURL, alt: `result, seed ${seed ?? "unknown"}` }),
    el("figcaption", {}, [seedLine, el("pre", { className: "infotext", textContent: infotext }), actions]),
  ]);
}

const readDataURL = (file) => new Promise((resolve, reject) => {
  const reader = new FileReader();
  Object.assign(reader, { onload: () => resolve(reader.result), onerror: () => reject(new Error(`cannot read ${file.name}`)) });
  reader.readAsDataURL(file);
});

const loadImage = (src) => new Promise((resolve, reject) => {
  const image = new Image();
  Object.assign(image, { onload: () => resolve(image), onerror: () => reject(new Error("the browser cannot read this image")) });
  image.src = src;
});

function setup() {
  on("form", "submit", (event) => {
    event.preventDefault();
    generate();
  });
  for (const id of ["prompt", "negative_prompt"]) {
    on(id, "keydown", (event) => {
      if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
      event.preventDefault();
      generate();
    });
  }
  on("cancel", "click", cancel);
  on("model", "change", () => applyModelDefaults(currentModel()));
  on("sampler", "change", syncScheduler);
  on("reuse_seed", "click", () => { if (state.lastSeed != null) $("seed").value = state.lastSeed; });
  on("random_seed", "click", () => { $("seed").value = -1; });
  on("init_image", "change", async () => {
    const file = $("init_image").files[0];
    if (file) await loadInit(await readDataURL(file));
  });
  on("mask_file", "change", () => { if ($("mask_file").files[0]) loadMaskFile($("mask_file").files[0]); });
  on("clear_mask", "click", clearMask);
  on("remove_init", "click", removeInit);
  on("clear_gallery", "click", () => $("gallery").replaceChildren());
  setupMaskDrawing();
  setupDrop();
  load();
}

setup();
