"""Where `sdcpu export --tiny-vae TINY` gets its tiny VAE decoder: an AutoencoderTiny folder, a hub id, or `random`.

TAESD (Bohan 2023, github.com/madebyollin/taesd) is a small decoder distilled from SD's VAE;
diffusers ships it as AutoencoderTiny, whose default config is TAESD's architecture. It stands in
for the pipeline's VAE decoder only if it reads the same latents (channels) and upsamples them by
the same factor, so both are checked from the configs before any weights are loaded.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from sdcpu.engine.errors import UserError
from sdcpu.export.source import _looks_like_hub_id
from sdcpu.export.source_safety import (
    conversion_hint,
    file_names,
    first_line,
    loader_kwargs,
    refuse_custom_code,
    refuse_pickles,
)

RANDOM = "random"
RANDOM_ORIGIN = "random-weights:taesd"
RANDOM_SEED = 0
CLASS_NAME = "AutoencoderTiny"


def _location(tiny: str) -> str:
    """A local folder (resolved) or a hub id; anything else is a UserError."""
    path = Path(tiny).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if _looks_like_hub_id(tiny) and not path.exists():
        return tiny
    raise UserError(f"--tiny-vae takes a diffusers {CLASS_NAME} folder, a hub id or '{RANDOM}' (got {tiny!r})")


def _check_local_folder(tiny: str, where: str) -> None:
    """A local folder has no custom-code config and safetensors weights (a hub id gets use_safetensors=True)."""
    folder = Path(where)
    if folder.is_dir():
        label = f"--tiny-vae {tiny}"
        refuse_custom_code(folder, label, "the tiny VAE")
        refuse_pickles(file_names(folder), label, "the tiny VAE", conversion_hint(CLASS_NAME, tiny))


def tiny_vae_origin(tiny: str) -> str:
    """What the manifest records as the tiny VAE's source."""
    return RANDOM_ORIGIN if tiny == RANDOM else _location(tiny)


def _with_defaults(config: dict) -> dict:
    """The config as AutoencoderTiny builds it: its __init__ defaults under the given keys."""
    from diffusers import AutoencoderTiny

    parameters = inspect.signature(AutoencoderTiny.__init__).parameters.values()
    return {**{p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}, **config}


def _read_config(tiny: str) -> dict:
    """config.json of a folder or hub id, without the weights (a hub id needs network)."""
    from diffusers import AutoencoderTiny

    where = _location(tiny)
    if Path(where).is_dir() and not (Path(where) / "config.json").is_file():
        raise UserError(f"--tiny-vae {tiny}: not a diffusers {CLASS_NAME} folder (no config.json)")
    _check_local_folder(tiny, where)
    try:
        config = dict(AutoencoderTiny.load_config(where))
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load tiny VAE {tiny}: {first_line(exc)}") from None
    if config.get("_class_name") != CLASS_NAME:
        raise UserError(f"--tiny-vae {tiny}: its config names {config.get('_class_name')!r}, not {CLASS_NAME}")
    return config


def check_tiny_vae(tiny: str, vae_config: dict) -> None:
    """Refuse a tiny VAE whose latent channels or upsampling factor differ from the pipeline VAE's."""
    pipeline_channels = int(vae_config["latent_channels"])
    given = {"latent_channels": pipeline_channels} if tiny == RANDOM else _read_config(tiny)
    config = _with_defaults(given)
    if int(config["latent_channels"]) != pipeline_channels:
        raise UserError(f"--tiny-vae {tiny}: latent_channels {config['latent_channels']} does not match "
                        f"the pipeline VAE's {pipeline_channels}")
    tiny_scale = int(config["upsampling_scaling_factor"]) ** (len(config["num_decoder_blocks"]) - 1)
    pipeline_scale = 2 ** (len(vae_config["block_out_channels"]) - 1)
    if tiny_scale != pipeline_scale:
        raise UserError(f"--tiny-vae {tiny}: it upsamples latents {tiny_scale}x, the pipeline VAE {pipeline_scale}x")


def load_tiny_vae(tiny: str, latent_channels: int):
    """The fp32 AutoencoderTiny: TAESD's architecture seeded with RANDOM_SEED for `random`, else from_pretrained."""
    import torch
    from diffusers import AutoencoderTiny

    if tiny == RANDOM:
        torch.manual_seed(RANDOM_SEED)
        return AutoencoderTiny(latent_channels=latent_channels).to(torch.float32).eval()
    where = _location(tiny)
    _check_local_folder(tiny, where)
    kwargs = {**loader_kwargs(AutoencoderTiny), "local_files_only": Path(where).is_dir()}
    try:
        module = AutoencoderTiny.from_pretrained(where, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load tiny VAE {tiny}: {first_line(exc)}") from None
    return module.eval()
