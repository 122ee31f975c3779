"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 400;
const PNG_PREFIX = "data:image/png;base64,";
const MASK_COLOR = "#ff2d78";

const state = {
  models: [],
  checkpoints: [],
  samplers: [],
  schedulers: [],
  lastSeed: null,
  running: false,
  init: null,
  hasMask: false,
  lastStep: null,
};

class ApiError extends Error {
  constructor(message, status, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

function errorDetail(data, text, response) {
  if (data && typeof data === "object") {
    const detail = data.detail ?? data.error ?? data.errors;
    if (typeof detail === "string" && detail) return detail;
    if (Array.isArray(detail)) return detail.map((d) => d.msg ?? JSON.stringify(d)).join("; ");
    if (detail) return JSON.stringify(detail);
  }
  return `${response.status} ${response.statusText}${text ? `: ${text.slice(0, 200)}` : ""}`;
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  };
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new ApiError(`the server did not answer (${error.message})`, 0, null);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    throw new ApiError(errorDetail(data, text, response), response.status, response.headers.get("Retry-After"));
  }
  return data;
}

function showError(error) {
  const box = $("error");
  if (!error) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  let message = error.message;
  if (error.status === 503) {
    message = `Server busy: ${message}${error.retryAfter ? ` (try again in ${error.retryAfter} s)` : ""}`;
  }
  box.textContent = message;
  box.hidden = false;
}

const fold = (text) => String(text ?? "").trim().toLowerCase();

function findSampler(name) {
  if (!name) return null;
  return state.samplers.find((s) => s.name === name)
    ?? state.samplers.find((s) => fold(s.name) === fold(name))
    ?? state.samplers.find((s) => (s.aliases ?? []).some((a) => fold(a) === fold(name)))
    ?? null;
}

function findScheduler(name) {
  if (!name) return null;
  return state.schedulers.find((s) => fold(s.label) === fold(name) || fold(s.name) === fold(name)
    || (s.aliases ?? []).some((a) => fold(a) === fold(name))) ?? null;
}

function findModel(name, hash) {
  const byName = (m) => [m.title, m.model_name, m.filename].some((v) => v && fold(v) === fold(name));
  const byHash = (c) => [c.hash, c.sha256].some((v) => v && fold(v).startsWith(fold(hash)));
  let checkpoint = name ? state.checkpoints.find(byName) : null;
  if (!checkpoint && hash) checkpoint = state.checkpoints.find(byHash);
  const title = checkpoint?.title;
  return state.models.find((m) => m.title === title) ?? (name ? state.models.find(byName) : null) ?? null;
}

function currentModel() {
  return state.models.find((m) => m.title === $("model").value) ?? null;
}

function setOptions(select, items) {
  select.replaceChildren(...items.map(([value, label]) => new Option(label, value)));
}

function applyModelDefaults(model) {
  if (!model) return;
  $("steps").value = model.steps;
  $("cfg_scale").value = model.cfg_scale;
  $("width").value = model.width;
  $("height").value = model.height;
  for (const id of ["width", "height"]) {
    $(id).step = model.size_multiple || 8;
    $(id).min = model.size_multiple || 8;
  }
  const sampler = findSampler(model.sampler_name);
  if (sampler) $("sampler").value = sampler.name;
  $("scheduler").value = findScheduler(model.scheduler || "Automatic")?.label ?? $("scheduler").value;
  $("model").title = `${model.family}${model.inpaint ? ", inpainting" : ""}`;
}

async function load() {
  try {
    const [models, checkpoints, samplers, schedulers, options] = await Promise.all([
      api("/sdcpu/v1/models"), api("/sdapi/v1/sd-models"), api("/sdapi/v1/samplers"),
      api("/sdapi/v1/schedulers"), api("/sdapi/v1/options"),
    ]);
    Object.assign(state, { models, checkpoints, samplers, schedulers });
    setOptions($("model"), models.map((m) => [m.title, `${m.title} (${m.family})`]));
    setOptions($("sampler"), samplers.map((s) => [s.name, s.name]));
    setOptions($("scheduler"), schedulers.map((s) => [s.label, s.label]));
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
  if (raw === "") return undefined;
  const value = Number(raw);
  return Number.isFinite(value) ? value : undefined;
}

function buildRequest() {
  const body = {
    prompt: $("prompt").value,
    negative_prompt: $("negative_prompt").value,
    seed: numberField("seed") ?? -1,
    steps: numberField("steps"),
    cfg_scale: numberField("cfg_scale"),
    width: numberField("width"),
    height: numberField("height"),
    batch_size: numberField("batch_size"),
    sampler_name: $("sampler").value || undefined,
    scheduler: $("scheduler").value || undefined,
  };
  if ($("model").value) body.override_settings = { sd_model_checkpoint: $("model").value };
  if (state.init) {
    body.init_images = [state.init.dataURL];
    body.denoising_strength = numberField("strength") ?? 0.75;
    if (state.hasMask) {
      Object.assign(body, {
        mask: maskDataURL(), mask_blur: numberField("mask_blur") ?? 4, inpainting_fill: 1, inpaint_full_res: false,
      });
    }
  }
  return body;
}

function formatSeconds(seconds) {
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
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
  if (sps) parts.push(`${sps < 0.1 ? sps.toFixed(3) : sps.toFixed(2)} s/step`);
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
    try {
      const progress = await api("/sdapi/v1/progress");
      if (active) showProgress(progress);
    } catch {
      // the next poll tries again
    }
    if (active) timer = setTimeout(tick, POLL_MS);
  };
  timer = setTimeout(tick, POLL_MS / 2);
  return () => {
    active = false;
    clearTimeout(timer);
  };
}

function setRunning(running) {
  state.running = running;
  $("generate").disabled = running;
  $("cancel").disabled = !running;
  document.body.classList.toggle("running", running);
}

async function generate() {
  if (state.running) return;
  showError(null);
  const body = buildRequest();
  const path = body.init_images ? "/sdapi/v1/img2img" : "/sdapi/v1/txt2img";
  setRunning(true);
  state.lastStep = null;
  $("progress").value = 0;
  $("progress_text").textContent = "starting…";
  const started = performance.now();
  const stopPolling = startPolling();
  try {
    const answer = await api(path, body);
    stopPolling();
    const info = parseInfo(answer?.info);
    const images = answer?.images ?? [];
    addResults(images, info);
    const seconds = formatSeconds((performance.now() - started) / 1000);
    if (info.interrupted) {
      const [step, steps] = state.lastStep ?? [];
      $("progress_text").textContent = `interrupted${step != null ? ` at step ${step}/${steps}` : ""} · ${seconds}`;
    } else {
      $("progress").value = 1;
      $("progress_text").textContent = `done: ${images.length} image${images.length === 1 ? "" : "s"} in ${seconds}`;
    }
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
  try {
    await api("/sdapi/v1/interrupt", {});
  } catch (error) {
    showError(error);
    $("cancel").disabled = !state.running;
  }
}

function parseInfo(info) {
  if (info && typeof info === "object") return info;
  try {
    return JSON.parse(info || "{}");
  } catch {
    return {};
  }
}

function seedOf(infotext) {
  const last = String(infotext ?? "").trimEnd().split("\n").pop();
  const match = /(?:^|, )Seed: (-?\d+)/.exec(last);
  return match ? Number(match[1]) : null;
}

function addResults(images, info) {
  const seeds = info.all_seeds ?? [];
  const texts = info.infotexts ?? [];
  const nodes = images.map((base64, i) => {
    const text = texts[i] ?? "";
    const seed = seedOf(text) ?? (seeds.length === images.length ? seeds[i] : info.seed);
    return resultNode(base64, seed, text, Boolean(info.interrupted));
  });
  $("gallery").prepend(...nodes);
  if (images.length) showPreview(images[0]);
  const seed = info.seed ?? seeds[0];
  if (seed != null) {
    state.lastSeed = seed;
    $("reuse_seed").disabled = false;
    $("reuse_seed").title = `Reuse the last seed (${seed})`;
  }
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function button(label, className, onClick) {
  const node = element("button", className, label);
  node.type = "button";
  node.addEventListener("click", onClick);
  return node;
}

function resultNode(base64, seed, infotext, interrupted) {
  const dataURL = PNG_PREFIX + base64;
  const figure = element("figure", interrupted ? "result interrupted" : "result");
  const image = element("img");
  image.src = dataURL;
  image.alt = `result, seed ${seed ?? "unknown"}`;
  const caption = element("figcaption");
  const seedLine = element("div", "seed-line", "Seed ");
  seedLine.append(element("span", "seed", seed ?? "?"));
  if (interrupted) seedLine.append(" ", element("span", "badge", "interrupted"));
  const save = element("a", "save", "Save");
  save.href = dataURL;
  save.download = `sdcpu-${seed ?? "image"}.png`;
  const actions = element("div", "inline");
  actions.append(
    button("Use these settings", "use-settings", () => fillFromDataURL(dataURL, `the image with seed ${seed}`)),
    button("To img2img", "to-img2img", () => loadInit(dataURL)),
    save,
  );
  caption.append(seedLine, element("pre", "infotext", infotext), actions);
  figure.append(image, caption);
  return figure;
}

function readDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

function setField(id, value, filled, label) {
  if (value == null || value === "") return;
  if ($(id).type === "number" && !Number.isFinite(Number(value))) return;
  $(id).value = value;
  filled.push(label);
}

function fillSampler(p, filled, notes) {
  const own = findSampler(p["sdcpu sampler"]);
  let sampler = own ?? findSampler(p.Sampler);
  let schedule = own ? "Automatic" : p["Schedule type"];
  if (!sampler && p.Sampler) {
    const combined = state.schedulers.find((s) => fold(p.Sampler).endsWith(` ${fold(s.label)}`));
    if (combined) {
      sampler = findSampler(p.Sampler.slice(0, -combined.label.length).trim());
      schedule = schedule ?? combined.label;
    }
  }
  if (sampler) {
    $("sampler").value = sampler.name;
    filled.push("sampler");
  } else if (p.Sampler) {
    notes.push(`sampler ${p.Sampler} is not available here`);
  }
  const scheduler = findScheduler(schedule ?? (sampler ? "Automatic" : null));
  if (scheduler) {
    $("scheduler").value = scheduler.label;
    if (schedule) filled.push("schedule type");
  } else if (schedule) {
    notes.push(`schedule type ${schedule} is not available here`);
  }
}

function fillForm(p) {
  const filled = [];
  const notes = [];
  const model = findModel(p.Model, p["Model hash"]);
  if (model) {
    if (model.title !== $("model").value) {
      $("model").value = model.title;
      applyModelDefaults(model);
    }
    filled.push("model");
  } else if (p.Model || p["Model hash"]) {
    notes.push(`model ${p.Model || p["Model hash"]} is not on this server`);
  }
  if (p.Prompt != null) {
    $("prompt").value = p.Prompt;
    filled.push("prompt");
  }
  if (p["Negative prompt"] != null) {
    $("negative_prompt").value = p["Negative prompt"];
    filled.push("negative prompt");
  }
  setField("steps", p.Steps, filled, "steps");
  fillSampler(p, filled, notes);
  setField("cfg_scale", p["CFG scale"], filled, "CFG scale");
  setField("seed", p.Seed, filled, "seed");
  const [width, height] = p["Size-1"] != null ? [p["Size-1"], p["Size-2"]] : String(p.Size ?? "").split("x");
  const sized = [];
  setField("width", width, sized, "width");
  setField("height", height, sized, "height");
  if (sized.length) filled.push("size");
  return { filled, notes };
}

async function fillFromDataURL(dataURL, name) {
  const status = $("drop_status");
  status.textContent = `Reading ${name}…`;
  try {
    const answer = await api("/sdapi/v1/png-info", { image: dataURL });
    if (!answer?.info) {
      status.textContent = `${name} has no generation parameters; the form is unchanged.`;
      return;
    }
    const { filled, notes } = fillForm(answer.parameters ?? {});
    const what = filled.length ? `Filled ${filled.join(", ")} from ${name}.` : `Nothing to fill from ${name}.`;
    status.textContent = [what, ...notes.map((n) => `Note: ${n}.`)].join(" ");
  } catch (error) {
    status.textContent = `Could not read ${name}: ${error.message}`;
  }
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the file is not an image the browser can read"));
    image.src = src;
  });
}

function canvasOf(width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  return canvas;
}

async function loadInit(dataURL) {
  try {
    const image = await loadImage(dataURL);
    const { naturalWidth: width, naturalHeight: height } = image;
    if (!dataURL.startsWith(PNG_PREFIX)) {
      const canvas = canvasOf(width, height);
      canvas.getContext("2d").drawImage(image, 0, 0);
      dataURL = canvas.toDataURL("image/png");
    }
    state.init = { dataURL, width, height };
    $("init_preview").src = dataURL;
    const mask = $("mask_canvas");
    mask.width = width;
    mask.height = height;
    clearMask();
    $("canvas_stack").hidden = false;
    $("img2img_panel").open = true;
    const multiple = currentModel()?.size_multiple || 8;
    $("width").value = Math.max(multiple, Math.floor(width / multiple) * multiple);
    $("height").value = Math.max(multiple, Math.floor(height / multiple) * multiple);
    showError(null);
  } catch (error) {
    showError(error);
  }
  updateImg2imgState();
}

function removeInit() {
  state.init = null;
  state.hasMask = false;
  $("init_image").value = "";
  $("mask_file").value = "";
  $("canvas_stack").hidden = true;
  updateImg2imgState();
}

function updateImg2imgState() {
  const text = state.init
    ? `(${state.init.width}×${state.init.height}${state.hasMask ? ", with mask" : ""}: Generate runs img2img)`
    : "";
  $("img2img_state").textContent = text;
}

function clearMask() {
  const canvas = $("mask_canvas");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  state.hasMask = false;
  $("mask_file").value = "";
  updateImg2imgState();
}

function maskDataURL() {
  const source = $("mask_canvas");
  const white = canvasOf(source.width, source.height);
  const context = white.getContext("2d");
  context.drawImage(source, 0, 0);
  context.globalCompositeOperation = "source-in";
  context.fillStyle = "#fff";
  context.fillRect(0, 0, white.width, white.height);
  const out = canvasOf(source.width, source.height);
  const outContext = out.getContext("2d");
  outContext.fillStyle = "#000";
  outContext.fillRect(0, 0, out.width, out.height);
  outContext.drawImage(white, 0, 0);
  return out.toDataURL("image/png");
}

async function loadMaskFile(file) {
  if (!state.init) {
    showError(new Error("choose the init image before its mask"));
    $("mask_file").value = "";
    return;
  }
  try {
    const image = await loadImage(await readDataURL(file));
    const canvas = $("mask_canvas");
    const scratch = canvasOf(canvas.width, canvas.height).getContext("2d");
    scratch.drawImage(image, 0, 0, canvas.width, canvas.height);
    const pixels = scratch.getImageData(0, 0, canvas.width, canvas.height);
    const [r, g, b] = [1, 3, 5].map((i) => parseInt(MASK_COLOR.slice(i, i + 2), 16));
    const data = pixels.data;
    for (let i = 0; i < data.length; i += 4) {
      const level = (0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2]) * data[i + 3] / 255;
      data.set([r, g, b, Math.round(level)], i);
    }
    canvas.getContext("2d").putImageData(pixels, 0, 0);
    state.hasMask = true;
    updateImg2imgState();
  } catch (error) {
    showError(error);
  }
}

function setupMaskDrawing() {
  const canvas = $("mask_canvas");
  let last = null;
  const point = (event) => {
    const box = canvas.getBoundingClientRect();
    return { x: (event.clientX - box.left) * canvas.width / box.width, y: (event.clientY - box.top) * canvas.height / box.height, scale: canvas.width / box.width };
  };
  const stroke = (from, to) => {
    const context = canvas.getContext("2d");
    context.strokeStyle = MASK_COLOR;
    context.lineCap = "round";
    context.lineJoin = "round";
    context.lineWidth = Number($("brush_size").value) * to.scale;
    context.beginPath();
    context.moveTo(from.x, from.y);
    context.lineTo(to.x, to.y);
    context.stroke();
    if (!state.hasMask) {
      state.hasMask = true;
      updateImg2imgState();
    }
  };
  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    last = point(event);
    stroke(last, last);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!last) return;
    const next = point(event);
    stroke(last, next);
    last = next;
  });
  for (const type of ["pointerup", "pointercancel"]) canvas.addEventListener(type, () => { last = null; });
}

function setupDrop() {
  const hasFiles = (event) => Array.from(event.dataTransfer?.types ?? []).includes("Files");
  document.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) document.body.classList.remove("dragging");
  });
  document.addEventListener("drop", async (event) => {
    document.body.classList.remove("dragging");
    const file = event.dataTransfer?.files?.[0];
    if (!file) return;
    event.preventDefault();
    const dataURL = await readDataURL(file);
    if ($("img2img_panel").open && $("init_drop").contains(event.target)) {
      await loadInit(dataURL);
    } else {
      await fillFromDataURL(dataURL, file.name || "the dropped file");
    }
  });
}

function setup() {
  $("form").addEventListener("submit", (event) => {
    event.preventDefault();
    generate();
  });
  for (const id of ["prompt", "negative_prompt"]) {
    $(id).addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        generate();
      }
    });
  }
  $("cancel").addEventListener("click", cancel);
  $("model").addEventListener("change", () => applyModelDefaults(currentModel()));
  $("reuse_seed").addEventListener("click", () => {
    if (state.lastSeed != null) $("seed").value = state.lastSeed;
  });
  $("random_seed").addEventListener("click", () => { $("seed").value = -1; });
  $("init_image").addEventListener("change", async () => {
    const file = $("init_image").files[0];
    if (file) await loadInit(await readDataURL(file));
  });
  $("mask_file").addEventListener("change", () => {
    const file = $("mask_file").files[0];
    if (file) loadMaskFile(file);
  });
  $("clear_mask").addEventListener("click", clearMask);
  $("remove_init").addEventListener("click", removeInit);
  $("clear_gallery").addEventListener("click", () => $("gallery").replaceChildren());
  setupMaskDrawing();
  setupDrop();
  load();
}

setup();
