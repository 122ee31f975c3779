"""Load the diffusers pipeline an export starts from: a local folder or a hub id."""

from __future__ import annotations

from pathlib import Path

from engine.errors import UserError

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))


def quiet_libraries() -> None:
    """Keep transformers/diffusers warnings and nested loading bars out of our progress output."""
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


def load_pipeline(source: str):
    """Load a diffusers pipeline in fp32 from a diffusers folder or a hub id (needs network)."""
    import torch
    from diffusers import DiffusionPipeline

    quiet_libraries()
    path = Path(source).expanduser()
    if path.suffix in CHECKPOINT_SUFFIXES:
        raise UserError(
            f"{source}: single-file checkpoints are not supported by this version; "
            "convert it to a diffusers folder first"
        )
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise UserError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        where = str(path)
    elif _looks_like_hub_id(source) and not path.exists():
        where = source
    else:
        raise UserError(f"source not found: {source} (give a diffusers folder or a hub id)")
    try:
        return DiffusionPipeline.from_pretrained(where, dtype=torch.float32)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"could not load {source}: {first}") from None


def detect_family(pipe) -> str:
    """'sdxl' with a second text encoder, 'lcm' with a guidance-embedding UNet, else 'sd15'."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    if pipe.unet.config.get("time_cond_proj_dim") is not None:
        return "lcm"
    if type(pipe.scheduler).__name__ == "LCMScheduler":
        return "lcm"
    return "sd15"
