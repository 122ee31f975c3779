"use strict";
// The image-to-image / inpaint panel: the init image, and the mask drawn on it or loaded (white = repaint).
// Loaded before app.js, whose helpers ($, el, state, loadImage) these call.

async function loadInit(dataURL) {
  try {
    const image = await loadImage(dataURL);
    const { naturalWidth: width, naturalHeight: height } = image;
    if (!dataURL.startsWith(PNG_PREFIX)) {
      const canvas = el("canvas", { width, height });
      canvas.getContext("2d").drawImage(image, 0, 0);
      dataURL = canvas.toDataURL("image/png");
    }
    state.init = { dataURL, width, height };
    $("init_preview").src = dataURL;
    Object.assign($("mask_canvas"), { width, height });
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
}

function removeInit() {
  state.init = null;
  $("init_image").value = "";
  $("canvas_stack").hidden = true;
  setMasked(false);
}

function setMasked(hasMask) {
  const init = state.init;
  state.hasMask = hasMask;
  $("img2img_state").textContent = init
    ? `(${init.width}×${init.height}${hasMask ? ", with mask" : ""}: Generate runs img2img)` : "";
}

function clearMask() {
  const canvas = $("mask_canvas");
  Object.assign(canvas.getContext("2d"), { fillStyle: "#000" }).fillRect(0, 0, canvas.width, canvas.height);
  $("mask_file").value = "";
  setMasked(false);
}

const maskDataURL = () => $("mask_canvas").toDataURL("image/png");

async function loadMaskFile(file) {
  if (!state.init) {
    $("mask_file").value = "";
    return showError(new Error("choose the init image before its mask"));
  }
  try {
    const image = await loadImage(await readDataURL(file));
    const canvas = $("mask_canvas");
    const context = Object.assign(canvas.getContext("2d"), { fillStyle: "#000" });
    context.fillRect(0, 0, canvas.width, canvas.height);
    context.drawImage(image, 0, 0, canvas.width, canvas.height);
    setMasked(true);
  } catch (error) {
    showError(error);
  }
}

function setupMaskDrawing() {
  const canvas = $("mask_canvas");
  let last = null;
  const point = (event) => {
    const box = canvas.getBoundingClientRect();
    const scale = canvas.width / box.width;
    return { x: (event.clientX - box.left) * scale, y: (event.clientY - box.top) * scale, scale };
  };
  const stroke = (from, to) => {
    const context = Object.assign(canvas.getContext("2d"), { strokeStyle: "#fff", lineCap: "round",
      lineJoin: "round", lineWidth: Number($("brush_size").value) * to.scale });
    context.beginPath();
    context.moveTo(from.x, from.y);
    context.lineTo(to.x, to.y);
    context.stroke();
    if (!state.hasMask) setMasked(true);
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
