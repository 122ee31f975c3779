"""`sdcpu info IMAGE.png` and `generate --from IMAGE.png`: the parameters a PNG records, read back."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from sdcpu.engine.a1111_fields import SDCPU_SAMPLERS, made_by_sdcpu, unhonoured
from sdcpu.engine.a1111_samplers import A1111_SAMPLERS, AUTOMATIC, KDIFFUSION
from sdcpu.engine.errors import UserError
from sdcpu.engine.init_image import recorded_file
from sdcpu.engine.png_text import read_parameters
from sdcpu.engine.pngmeta import GenerationParams, generation_fields, params_from_text, parse_parameters, read_field
from sdcpu.engine.sigma_schedules import resolved_schedule_type


@dataclass(frozen=True)
class Options:
    """generate's options as given; None means "not given" (then --from or the model's default fills it)."""

    prompt: str | None = None
    negative_prompt: str | None = None
    model: str | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    scheduler: str | None = None
    inference_precision: str | None = None
    deepcache: int | None = None
    tiny_vae: bool | None = None
    guidance_interval: tuple[float, float] | None = None
    strength: float | None = None
    mask_blur: int | None = None
    resize: str | None = None
    schedule_type: str | None = None
    prompt_syntax: str | None = None
    clip_skip: int | None = None
    noise: str | None = None
    subseed: int | None = None
    subseed_strength: float | None = None
    seed_resize_from: tuple[int, int] | None = None
    ensd: int | None = None
    emphasis: str | None = None

    def settings(self) -> dict:
        """The keywords of request_defaults.seed_settings (sampler and A1111's text and noise settings)."""
        return {name: getattr(self, name) for name in SETTINGS}


SETTINGS = ("schedule_type", "prompt_syntax", "clip_skip", "noise", "subseed", "subseed_strength", "seed_resize_from",
            "ensd", "emphasis")


PARAMS_NAME = {"scheduler": "sampler", "resize": "resize_mode"}  # Options name -> GenerationParams name
EMPTY_MEANS_NOT_RECORDED = ("model", "inference_precision", "resize", "schedule_type")


def png_text(path: Path) -> str:
    """The PNG's parameters chunk; one-line errors for a missing file, a non-image, or no parameters."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such image: {path}")
    try:
        text = read_parameters(path)
    except (ValueError, OSError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not text:
        raise UserError(f"{path} holds no generation parameters (it was not written by sdcpu or Automatic1111)")
    return text


def png_params(path: Path) -> GenerationParams:
    """The parameters of a PNG that we or Automatic1111 wrote, ready to re-run."""
    try:
        return params_from_text(png_text(path))
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None


def describe_png(path: Path) -> str:
    """Every recorded field, one `Key: value` per line, prompt first (works for any A1111 infotext)."""
    fields = parse_parameters(png_text(path))
    if len(fields) <= 2:
        raise UserError(f"{path} has a parameters chunk, but no generation settings in it")
    width = max(len(key) for key in fields)
    lines = [f"{key + ':':<{width + 1}} {value}" for key, value in fields.items() if value != "" or key == "Prompt"]
    lines += ["", "sdcpu re-makes it with:", *(f"  {line}" for line in reading(fields))]
    cannot = unhonoured(fields)
    if cannot:
        lines += ["", "sdcpu cannot honour:", *(f"  {key}: {why}" for key, why in cannot.items())]
    return "\n".join(lines)


READING = {"sampler": "sampler", "schedule_type": "schedule type", "noise": "noise source", "clip_skip": "clip skip",
           "prompt_syntax": "prompt syntax", "subseed": "variation seed", "subseed_strength": "variation strength",
           "seed_resize_from": "seed resize from", "ensd": "eta noise seed delta", "emphasis": "emphasis"}


def reading(fields: dict[str, str]) -> list[str]:
    """How sdcpu reads the settings that decide the noise, the sampler and the text conditioning."""
    lines = []
    for name, label in READING.items():
        try:
            value = read_field(fields, name)
        except ValueError as exc:
            lines.append(f"{label}: cannot: {exc}")
            continue
        if value in (None, "") or (name == "ensd" and not value):
            continue
        if name == "sampler":
            value = f"{value} ({'sdcpu, diffusers-exact' if value in SDCPU_SAMPLERS else 'Automatic1111, k-diffusion'})"
        if name == "schedule_type" and value == AUTOMATIC:
            sampler = A1111_SAMPLERS.get(read_field(fields, "sampler"))
            if sampler is not None and sampler.kind == KDIFFUSION:
                value = f"{value} ({resolved_schedule_type(value, sampler.function)} for {sampler.label})"
        if name == "noise" and not fields.get("RNG"):
            value = f"{value} (no RNG field: {NO_RNG_REASON[value]})"
        if name == "seed_resize_from":
            value = "x".join(str(side) for side in value)
        lines.append(f"{label}: {value}")
    return lines


NO_RNG_REASON = {"nv": "Automatic1111's default GPU source, torch's CUDA generator",
                 "cpu": "sdcpu's default then, torch's CPU generator"}


def png_fields(path: Path) -> dict[str, str]:
    """The infotext fields of a PNG, unchecked; a one-line error if it records no generation settings."""
    try:
        return generation_fields(png_text(path))
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None


def recorded_option(fields: dict[str, str], name: str, path: Path):
    """Option NAME as the PNG records it (None when not recorded); a one-line error naming the flag if it is bad."""
    try:
        value = read_field(fields, PARAMS_NAME.get(name, name))
    except ValueError as exc:
        flag = "--" + name.replace("_", "-")
        raise UserError(f"{path}: {exc}; pass {flag} to override it") from None
    return None if name in EMPTY_MEANS_NOT_RECORDED and value == "" else value


def merge_from_png(given: Options, path: Path) -> Options:
    """GIVEN with every option left out taken from the PNG at PATH; only those fields are read and checked."""
    fields = png_fields(path)
    left_out = [name for name, value in vars(given).items() if value is None
                and not (name == "schedule_type" and given.scheduler is not None)]  # a sampler given brings its own
    return replace(given, **{name: recorded_option(fields, name, path) for name in left_out})


def recorded_inputs(path: Path, init_image: str | None, mask: str | None,
                    log=None) -> tuple[str | None, str | None]:
    """--from: the init image and mask an image-to-image PNG was made from (engine/init_image.recorded_file
    checks a recorded path against its SHA-256); those given win. A1111 records no paths: its img2img PNGs
    (Denoising strength without hires fix) need --init-image."""
    fields = png_fields(path)
    recorded = {name: read_field(fields, name) for name in ("init_image", "init_image_sha256", "mask", "mask_sha256")}
    if recorded["init_image"] or recorded["init_image_sha256"]:
        init_image = recorded_file(recorded["init_image"], recorded["init_image_sha256"], init_image, "init image", log)
    elif init_image is None and fields.get("Denoising strength") and not fields.get("Hires upscale"):
        raise UserError(f"{path} was made image-to-image (Denoising strength {fields['Denoising strength']}) "
                        "from an image it does not name; pass --init-image FILE")
    if recorded["mask"] or recorded["mask_sha256"]:
        mask = recorded_file(recorded["mask"], recorded["mask_sha256"], mask, "mask", log)
    return init_image, mask


def note_from_png(path: Path, log, noise_given: bool = False) -> None:
    """--from an A1111 PNG that records no RNG: one line saying its noise is redrawn as torch's CUDA generator;
    one line for each field sdcpu cannot honour."""
    fields = png_fields(path)
    for key, why in unhonoured(fields).items():
        log(f"{path} records {key}, which sdcpu cannot honour ({why}): the image will differ")
    if not noise_given and not fields.get("RNG") and not made_by_sdcpu(fields):
        log(f"{path} records no RNG: drawing its noise as Automatic1111's default GPU source does "
            "(torch's CUDA generator, --noise nv); pass --noise cpu for A1111's CPU source")
