"""bench peer adapter: optimum-intel's OpenVINO diffusers pipelines (OVStableDiffusionPipeline and kin) on the CPU.

Runs under the interpreter of the separate venv bench/setup_optimum_venv.sh builds (optimum-intel
does not install beside our torch/diffusers/transformers pins), so it imports only the standard
library at module level and never imports sdcpu's `engine`: everything it needs is in the layout
folder bench/optimum_layout.py writes.
"""

from __future__ import annotations

from pathlib import Path

from peer_common import pipeline_kwargs, uint8_image

PIPELINE_CLASSES = {
    "sd15": "OVStableDiffusionPipeline",
    "lcm": "OVLatentConsistencyModelPipeline",
    "sdxl": "OVStableDiffusionXLPipeline",
    "sdxl-turbo": "OVStableDiffusionXLPipeline",
}


def versions() -> dict[str, str]:
    from importlib.metadata import version

    import openvino

    found = {"openvino": openvino.get_version()}
    for package in ("optimum-intel", "optimum", "diffusers", "transformers", "torch"):
        found[package] = version(package)
    import torch

    found["torch_threads"] = str(torch.get_num_threads())
    return found


def ov_config(settings: dict) -> dict:
    """OpenVINO properties from the bench settings. optimum adds PERFORMANCE_HINT=LATENCY itself and
    sets CACHE_DIR only for GPU devices, so compile caching stays off on the CPU."""
    config = {}
    if settings.get("inference_precision"):
        config["INFERENCE_PRECISION_HINT"] = settings["inference_precision"]
    if settings.get("threads"):
        config["INFERENCE_NUM_THREADS"] = str(int(settings["threads"]))
    return config


def load(folder: Path, settings: dict):
    """from_pretrained + compile with the library defaults (dynamic shapes, the folder's scheduler);
    return generate(steps, seed, on_step), which returns the image as an HxWx3 uint8 array (also kept
    as generate.last_image). on_step(i) runs from diffusers' callback_on_step_end after every loop step."""
    import optimum.intel
    import torch

    family = settings["family"]
    cls = getattr(optimum.intel, PIPELINE_CLASSES[family])
    pipe = cls.from_pretrained(str(folder), device="CPU", ov_config=ov_config(settings), compile=True,
                               export=False, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    kwargs = pipeline_kwargs(settings)
    prompt = settings["prompt"]

    def generate(steps: int, seed: int, on_step):
        def callback(pipeline, i, t, tensors):
            on_step(i)
            return tensors

        with torch.inference_mode():
            out = pipe(prompt, num_inference_steps=int(steps), generator=torch.Generator("cpu").manual_seed(int(seed)),
                       output_type="np", callback_on_step_end=callback, **kwargs)
        image = uint8_image(out.images[0])
        generate.last_image = image
        return image

    generate.last_image = None
    generate.pipeline = pipe
    return generate
