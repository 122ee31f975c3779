"""A1111's settings (`opts`) that sdcpu serves: GET/POST /sdapi/v1/options and a request's override_settings.

Each readable setting maps to one `Request` field (or the model); every other key is refused with its name, so
a client that sets something sdcpu ignores learns it at once.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import sdcpu
from sdcpu.engine.errors import UserError
from sdcpu.engine.prompt_chunks import EMPHASIS_MODES

RANDN_SOURCES = {"CPU": "cpu", "GPU": "nv", "NV": "nv"}
"""A1111's randn_source -> sdcpu's noise: its GPU source is torch's CUDA generator, which NV reproduces."""
NOISE_LABEL = {"cpu": "CPU", "nv": "NV"}
NO_VAE_FILE = ("Automatic", "None", "")


@dataclass(frozen=True)
class ServerOptions:
    """The settings a request starts from; override_settings change them for one request."""

    sd_model_checkpoint: str
    CLIP_stop_at_last_layers: int = 1
    eta_noise_seed_delta: int = 0
    randn_source: str = "CPU"
    emphasis: str = "Original"
    sd_vae: str = "Automatic"
    samples_format: str = "png"

    def as_json(self, model_hash: str | None) -> dict[str, Any]:
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        return shown | {"sd_checkpoint_hash": model_hash, "sdcpu_version": sdcpu.__version__}

    def request_settings(self) -> dict[str, Any]:
        """The `Request` fields these settings fix (engine/request_defaults.seed_settings' keywords)."""
        return dict(clip_skip=self.CLIP_stop_at_last_layers, ensd=self.eta_noise_seed_delta,
                    noise=RANDN_SOURCES[self.randn_source], emphasis=self.emphasis)


def _whole(key: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or not low <= value <= high:
        raise UserError(f"{key} must be a whole number from {low} to {high} (got {value!r})")
    return int(value)


def _choice(key: str, value, choices) -> str:
    if value not in choices:
        raise UserError(f"{key} must be one of {', '.join(map(repr, choices))} (got {value!r})")
    return value


CHECKS = {
    "sd_model_checkpoint": lambda v: v if isinstance(v, str) and v else _choice("sd_model_checkpoint", v, ()),
    "CLIP_stop_at_last_layers": lambda v: _whole("CLIP_stop_at_last_layers", v, 1, 12),
    "eta_noise_seed_delta": lambda v: _whole("eta_noise_seed_delta", v, 0, 2**32 - 1),
    "randn_source": lambda v: _choice("randn_source", v, tuple(RANDN_SOURCES)),
    "emphasis": lambda v: _choice("emphasis", v, EMPHASIS_MODES),
    "sd_vae": lambda v: _choice("sd_vae", v, NO_VAE_FILE),
    "samples_format": lambda v: _choice("samples_format", v, ("png",)),
}
READ_ONLY = ("sd_checkpoint_hash", "sdcpu_version")


def checked_setting(key: str, value, shown_as: str | None = None):
    """One setting's value checked as CHECKS does, the message naming `shown_as` (a body field) if given."""
    try:
        return CHECKS[key](value)
    except UserError as exc:
        raise UserError(str(exc).replace(key, shown_as, 1) if shown_as else str(exc)) from None


def with_settings(options: ServerOptions, changes: dict[str, Any] | None) -> ServerOptions:
    """`options` with A1111 settings applied; one line for an unknown key or a bad value."""
    if not changes:
        return options
    if not isinstance(changes, dict):
        raise UserError("override_settings must be an object of A1111 setting names to values")
    checked = {}
    for key, value in changes.items():
        if key in READ_ONLY:
            continue
        if key not in CHECKS:
            raise UserError(f"setting {key!r} is not one sdcpu honours; it reads {', '.join(CHECKS)}")
        checked[key] = CHECKS[key](value)
    return replace(options, **checked)
