"""`sdcpu info IMAGE.png` and `generate --from IMAGE.png`: the parameters a PNG records, read back."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from sdcpu.engine.errors import UserError
from sdcpu.engine.init_image import recorded_file
from sdcpu.engine.png_text import read_parameters
from sdcpu.engine.pngmeta import GenerationParams, generation_fields, params_from_text, parse_parameters, read_field


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


PARAMS_NAME = {"scheduler": "sampler", "resize": "resize_mode"}  # Options name -> GenerationParams name
EMPTY_MEANS_NOT_RECORDED = ("model", "inference_precision", "resize")


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
    return "\n".join(f"{key + ':':<{width + 1}} {value}" for key, value in fields.items()
                     if value != "" or key == "Prompt")


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
    left_out = [name for name, value in vars(given).items() if value is None]
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
