"use strict";
// Filling the form from a PNG's parameters (ours or Automatic1111's, read by the server's png-info):
// a PNG dropped on the page, or a gallery result's "use these settings". Loaded before app.js.

function fillForm(p) {
  const filled = [];
  const notes = [];
  const set = (id, value, label) => {
    if (value == null || (value === "" && id !== "negative_prompt")) return;
    if ($(id).type === "number" && !Number.isFinite(Number(value))) return;
    $(id).value = value;
    if (label && !filled.includes(label)) filled.push(label);
  };
  const model = findModel(p.Model, p["Model hash"]);
  if (model && model.title !== $("model").value) {
    $("model").value = model.title;
    applyModelDefaults(model);
  }
  if (model) filled.push("model");
  else if (p.Model || p["Model hash"]) notes.push(`model ${p.Model || p["Model hash"]} is not on this server`);
  set("prompt", p.Prompt, "prompt");
  set("negative_prompt", p["Negative prompt"], "negative prompt");
  set("steps", p.Steps, "steps");
  const own = findSampler(p["sdcpu sampler"]);
  let sampler = own ?? findSampler(p.Sampler);
  let schedule = own ? null : p["Schedule type"];
  const combined = !sampler && state.schedulers.find((s) => fold(p.Sampler).endsWith(` ${fold(s.label)}`));
  if (combined) {
    sampler = findSampler(p.Sampler.trim().slice(0, -combined.label.length).trim());
    schedule = schedule ?? combined.label;
  }
  if (sampler) set("sampler", sampler.name, "sampler");
  else if (p.Sampler) notes.push(`sampler ${p.Sampler} is not available here`);
  if (sampler || schedule) set("scheduler", findScheduler(schedule ?? "Automatic")?.label, schedule && "schedule type");
  if (schedule && !findScheduler(schedule)) notes.push(`schedule type ${schedule} is not available here`);
  syncScheduler();
  set("cfg_scale", p["CFG scale"], "CFG scale");
  set("seed", p.Seed, "seed");
  const [width, height] = p["Size-1"] != null ? [p["Size-1"], p["Size-2"]] : String(p.Size ?? "").split("x");
  set("width", width, "size");
  set("height", height, "size");
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

function setupDrop() {
  const dragging = (yes) => document.body.classList.toggle("dragging", yes);
  document.addEventListener("dragover", (event) => {
    if (!Array.from(event.dataTransfer?.types ?? []).includes("Files")) return;
    event.preventDefault();
    dragging(true);
  });
  document.addEventListener("dragleave", (event) => { if (!event.relatedTarget) dragging(false); });
  document.addEventListener("drop", async (event) => {
    dragging(false);
    const file = event.dataTransfer?.files?.[0];
    if (!file) return;
    event.preventDefault();
    try {
      const dataURL = await readDataURL(file);
      if ($("img2img_panel").open && $("init_drop").contains(event.target)) await loadInit(dataURL);
      else await fillFromDataURL(dataURL, file.name || "the dropped file");
    } catch (error) {
      showError(error);
    }
  });
}
