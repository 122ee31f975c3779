"""bench peer adapter: OpenVINO GenAI's Text2ImagePipeline (C++ pipeline and scheduler) on the CPU.

Loads the optimum-style layout bench/optimum_layout.py writes. Only the standard library is imported
at module level; openvino_genai is imported inside versions() and load().
"""

from __future__ import annotations

from pathlib import Path

from peer_common import pipeline_kwargs


def versions() -> dict[str, str]:
    import openvino
    import openvino_genai

    found = {"openvino": openvino.get_version(), "openvino_genai": openvino_genai.__version__}
    try:
        import openvino_tokenizers

        found["openvino_tokenizers"] = openvino_tokenizers.__version__
    except (ImportError, AttributeError):
        pass
    return found


def properties(settings: dict) -> dict:
    """OpenVINO properties from the bench settings; nothing else, so compile caching stays off (its default)."""
    props = {}
    if settings.get("inference_precision"):
        props["INFERENCE_PRECISION_HINT"] = settings["inference_precision"]
    if settings.get("threads"):
        props["INFERENCE_NUM_THREADS"] = int(settings["threads"])
    return props


def load(folder: Path, settings: dict):
    """Build and compile the pipeline (dynamic shapes, the library default); return generate(steps, seed, on_step).

    generate makes one image with the folder's default scheduler and returns it as an HxWx3 uint8
    array; it also keeps it as generate.last_image. The noise comes from openvino_genai.TorchGenerator,
    which draws what torch.randn draws for the same seed, so images compare with diffusers' and sdcpu's.
    """
    import openvino_genai

    pipe = openvino_genai.Text2ImagePipeline(str(folder), "CPU", **properties(settings))
    kwargs = pipeline_kwargs(settings)
    prompt = settings["prompt"]

    def generate(steps: int, seed: int, on_step):
        def callback(step: int, num_steps: int, latent) -> bool:
            on_step(step)
            return False  # keep going

        tensor = pipe.generate(prompt, num_inference_steps=int(steps), generator=openvino_genai.TorchGenerator(int(seed)),
                               callback=callback, **kwargs)
        image = tensor.data[0].copy()
        generate.last_image = image
        return image

    generate.last_image = None
    generate.pipeline = pipe
    return generate
