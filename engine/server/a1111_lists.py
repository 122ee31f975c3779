"""The read-only payloads of A1111's API: the sampler and schedule lists, the lists clients read on start (empty
where sdcpu has no such thing), png-info, and /progress from the running job's `JobControl`."""

from __future__ import annotations

import io
import time

from PIL import Image

from sdcpu.engine.a1111_fields import SDCPU_SAMPLERS
from sdcpu.engine.a1111_samplers import A1111_SAMPLERS
from sdcpu.engine.errors import UserError
from sdcpu.engine.png_text import parameters_in_file
from sdcpu.engine.pngmeta import parse_parameters
from sdcpu.engine.server.image_codec import base64_bytes, png_base64
from sdcpu.engine.server.job_queue import JobControl
from sdcpu.engine.sigma_schedules import DEFAULT_SCHEDULE, SCHEDULE_NAMES

PREVIEW_LINGER_SECONDS = 3.0
"""Previews are rendered while someone has polled /progress this recently (a preview costs a VAE call)."""
EMPTY_LISTS = {
    "upscalers": [], "latent-upscale-modes": [], "sd-vae": [], "loras": [], "hypernetworks": [],
    "face-restorers": [], "realesrgan-models": [], "prompt-styles": [], "extensions": [], "script-info": [],
    "scripts": {"txt2img": [], "img2img": []}, "embeddings": {"loaded": {}, "skipped": {}},
}


def sampler_list() -> list[dict]:
    """A1111's samplers sdcpu runs (its labels and aliases), then sdcpu's own diffusers-exact ones."""
    listed = [{"name": s.label, "aliases": list(s.aliases), "options": _options(s)} for s in A1111_SAMPLERS.values()]
    for name, (label, schedule) in SDCPU_SAMPLERS.items():
        listed.append({"name": name, "aliases": [],
                       "options": {"sdcpu": "diffusers-exact", "shown_as": label, "schedule": schedule}})
    return listed


def _options(sampler) -> dict:
    options = {}
    if sampler.discard_next_to_last_sigma:
        options["discard_next_to_last_sigma"] = "True"
    if sampler.second_order:
        options["second_order"] = "True"
    if sampler.ancestral:
        options["uses_ensd"] = "True"
    schedule = DEFAULT_SCHEDULE.get(sampler.function)
    if schedule:
        options["scheduler"] = schedule.lower()
    return options


def scheduler_list() -> list[dict]:
    return [{"name": names[0], "label": label, "aliases": list(names[1:]) or None, "default_rho": -1,
             "need_inner_model": False} for label, names in SCHEDULE_NAMES.items()]


def png_info(image: str) -> dict:
    """A1111's png-info: the parameters text, the other text chunks, and the text split into fields."""
    data = base64_bytes(image, "image")
    try:
        text = parameters_in_file(io.BytesIO(data))
    except ValueError as exc:
        raise UserError(f"image: {exc}") from None
    items = {}
    try:
        with Image.open(io.BytesIO(data)) as picture:
            items = {k: v for k, v in picture.info.items() if isinstance(v, str) and k != "parameters"}
    except (OSError, ValueError, Image.DecompressionBombError):
        pass  # the other chunks are extras; the parameters were read without decoding the image
    if not text:
        return {"info": "", "items": items, "parameters": {}}
    fields = parse_parameters(text)
    size = fields.get("Size", "")
    if "x" in size:
        fields["Size-1"], fields["Size-2"] = size.split("x", 1)
    return {"info": text, "items": items | {"parameters": text}, "parameters": fields}


def memory() -> dict:
    """A1111's /memory: this machine's RAM and the server's own resident memory (Linux /proc); no CUDA here."""
    ram: dict = {}
    try:
        info = dict(line.split(":", 1) for line in open("/proc/meminfo").read().splitlines() if ":" in line)
        total, free = (int(info[key].split()[0]) * 1024 for key in ("MemTotal", "MemAvailable"))
        ram = {"total": total, "free": free, "used": total - free}
        status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
        ram["process_rss"] = int(status["VmRSS"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        ram = {"error": "memory figures are read from /proc, which this system does not have"}
    return {"ram": ram, "cuda": {"error": "sdcpu runs on the CPU"}}


IDLE_STATE = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
              "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}


def progress(control: JobControl | None, waiting: int, with_image: bool) -> dict:
    """/progress: A1111's fields (progress 0 and job_count 0 when idle), ETA from the measured s/step."""
    if control is None:
        return {"progress": 0.0, "eta_relative": 0.0, "state": IDLE_STATE, "current_image": None, "textinfo": None,
                "current_task": None, "queue_length": waiting, "seconds_per_step": None}
    if with_image:
        control.preview_wanted_until = time.monotonic() + PREVIEW_LINGER_SECONDS
    per_step = control.seconds_per_step
    remaining = (control.steps - control.step) + (control.iterations - control.iteration - 1) * control.steps
    elapsed = time.monotonic() - control.started
    fraction = max(control.fraction, 0.01)
    eta = remaining * per_step if per_step is not None else elapsed / fraction - elapsed
    state = {"skipped": control.skipped, "interrupted": control.interrupted, "stopping_generation": False,
             "job": f"{control.kind} {control.iteration + 1}/{control.iterations}", "job_count": control.iterations,
             "job_timestamp": control.timestamp, "job_no": control.iteration,
             "sampling_step": control.step, "sampling_steps": control.steps}
    image = png_base64(control.preview, None) if with_image and control.preview is not None else None
    text = f"step {control.step}/{control.steps}" if control.steps else control.kind
    return {"progress": fraction, "eta_relative": max(eta, 0.0), "state": state, "current_image": image,
            "textinfo": text, "current_task": None, "queue_length": waiting, "seconds_per_step": per_step}
