"""`sdcpu info IMAGE.png` and `generate --from IMAGE.png`: the parameters a PNG records, read back."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from engine.errors import UserError
from engine.pngmeta import GenerationParams, params_from_text, parse_parameters, read_parameters


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


def merge_from_png(given: Options, recorded: GenerationParams) -> Options:
    """The PNG's parameters, with every option the user gave taking precedence."""
    from_png = Options(
        prompt=recorded.prompt, negative_prompt=recorded.negative_prompt, model=recorded.model or None,
        steps=recorded.steps, guidance=recorded.guidance, seed=recorded.seed, width=recorded.width,
        height=recorded.height, scheduler=recorded.sampler,
        inference_precision=recorded.inference_precision or None, deepcache=recorded.deepcache,
        tiny_vae=recorded.tiny_vae,
    )
    overrides = {name: value for name, value in given.__dict__.items() if value is not None}
    return replace(from_png, **overrides)
