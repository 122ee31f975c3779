"""One txt2img/img2img job on the worker thread: its batches through `Pipeline.generate`, A1111's answer.

The answer is A1111's: `images` (base64 PNGs, each with its parameters chunk), `parameters` (the request
echoed) and `info` (a JSON string with Processed.js()'s keys). An interrupted job answers with the images of
where it got to (the last x0 estimate decoded, as A1111 does) and `"interrupted": true` in info; a skipped
batch keeps its partial images and the job goes on to the next batch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

import sdcpu
from sdcpu.engine.a1111_fields import sampler_label
from sdcpu.engine.pipeline import Pipeline, Request
from sdcpu.engine.pngmeta import GenerationParams, format_parameters, save_png
from sdcpu.engine.preview import latent_to_rgb_matrix, linear_preview
from sdcpu.engine.request_defaults import ImageInputs, params_for
from sdcpu.engine.server.a1111_requests import ServerLimits, batch_request, build_job_request
from sdcpu.engine.server.a1111_schema import Txt2ImgBody
from sdcpu.engine.server.image_codec import png_base64
from sdcpu.engine.server.job_queue import JobControl, Stopped
from sdcpu.engine.server.served_models import ModelSlot
from sdcpu.engine.server.server_options import ServerOptions


@dataclass
class Made:
    image: np.ndarray
    params: GenerationParams
    seed: int
    subseed: int


def run_generation(slot: ModelSlot, body: Txt2ImgBody, options: ServerOptions, limits: ServerLimits,
                   control: JobControl, save_dir: Path | None = None) -> dict:
    """Run every batch of the job (`options`: the settings a1111_requests.check_request gave it); A1111's answer."""
    model = slot.find(options.sd_model_checkpoint)
    pipe = slot.pipeline(model)
    notes: list[str] = []
    request, images = build_job_request(pipe, body, options, limits, notes)
    control.iterations = body.n_iter
    made: list[Made] = []
    stopped = ""
    for k in range(body.n_iter):
        batch = batch_request(request, k)
        try:
            control.begin(k, pipe.steps_run(batch))
        except Stopped:
            stopped = "interrupted"
            break
        outcome = _run_batch(pipe, batch, images, control)
        made += outcome[0]
        if outcome[1] == "interrupted":
            stopped = "interrupted"
            break
    if save_dir is not None and body.save_images:
        _save(save_dir, made)
    return {"images": [png_base64(m.image, m.params) for m in made] if body.send_images else [],
            "parameters": _echo(body),
            "info": json.dumps(_info(pipe, model.title, request, body, made, stopped, notes))}


def _run_batch(pipe: Pipeline, request: Request, images: ImageInputs | None,
               control: JobControl) -> tuple[list[Made], str]:
    last: dict[str, np.ndarray] = {}
    matrix = latent_to_rgb_matrix(pipe.manifest.family, pipe.manifest.latent_channels)

    def on_denoised(i: int, n: int, denoised: np.ndarray) -> None:
        last["x0"] = denoised
        if control.wants_preview:
            control.preview = _preview(pipe, denoised[0], matrix, (request.width, request.height))
            control.preview_step = i + 1

    stopped = ""
    try:
        pictures = pipe.generate(request, on_step=control.on_step, on_denoised=on_denoised).images
    except Stopped as why:
        stopped = str(why)
        pictures = pipe.decode(last["x0"]) if "x0" in last else []
    seeds, subseeds = request.image_seeds()
    return [Made(picture, served_params(pipe, request, seed, images, subseed), seed, subseed)
            for picture, seed, subseed in zip(pictures, seeds, subseeds)], stopped


def served_params(pipe: Pipeline, request: Request, seed: int, images: ImageInputs | None,
                  subseed: int) -> GenerationParams:
    """The image's parameters, less the server's folder path (a client learns the model by name and hash,
    as from A1111; `generate --from` finds it by them)."""
    return replace(params_for(pipe, request, seed, images, subseed), model_path="")


def _preview(pipe: Pipeline, latent: np.ndarray, matrix, size: tuple[int, int]) -> np.ndarray:
    """The cheap linear map where the family has one, else the VAE (the bundled model's 8 channels)."""
    if matrix is not None:
        return linear_preview(latent, matrix, size)
    return pipe.decode(latent[None])[0]


def _echo(body: Txt2ImgBody) -> dict:
    """A1111 echoes the request, without the images it was sent."""
    echoed = body.model_dump()
    for key in ("init_images", "mask"):
        if key in echoed:
            echoed[key] = None
    return echoed


def _info(pipe: Pipeline, title: str, request: Request, body: Txt2ImgBody, made: list[Made],
          stopped: str, notes: list[str]) -> dict:
    """Processed.js()'s keys, for the images made (A1111's clients read seed, all_seeds and infotexts)."""
    label, schedule = sampler_label(request.sampler, request.schedule_type)
    seeds = [m.seed for m in made] or [request.seed]
    subseeds = [m.subseed for m in made] or [request.subseed or 0]
    resize = request.seed_resize_from or (-1, -1)
    return {
        "prompt": request.prompt, "all_prompts": [request.prompt] * len(made),
        "negative_prompt": request.negative_prompt, "all_negative_prompts": [request.negative_prompt] * len(made),
        "seed": seeds[0], "all_seeds": seeds, "subseed": subseeds[0], "all_subseeds": subseeds,
        "subseed_strength": request.subseed_strength, "width": request.width, "height": request.height,
        "sampler_name": label, "cfg_scale": request.guidance, "steps": request.steps,
        "batch_size": request.batch, "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": title, "sd_model_hash": pipe.manifest.a1111_hash, "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": resize[0], "seed_resize_from_h": resize[1],
        "denoising_strength": request.strength if request.init_image is not None else body.denoising_strength,
        "extra_generation_params": {"Schedule type": schedule} if schedule else {},
        "index_of_first_image": 0, "infotexts": [format_parameters(m.params) for m in made],
        "styles": [], "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": request.clip_skip,
        "is_using_inpainting_conditioning": False, "version": f"sdcpu {sdcpu.__version__}",
        "interrupted": stopped == "interrupted", "notes": notes,
    }


def _save(save_dir: Path, made: list[Made]) -> None:
    """save_images: each PNG written atomically into the server's --save-dir, named by time and seed."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for index, m in enumerate(made):
        save_png(save_dir / f"{stamp}-{index:02d}-{m.seed}.png", m.image, m.params)
