"""Automatic1111's sampler and schedule-type names, what each maps to here, and the ones we refuse.

A1111 runs k-diffusion's samplers (engine/kdiffusion_samplers.py) over the model's discrete sigmas
(engine/discrete_sigmas.py, engine/sigma_schedules.py), and its own timestep samplers for DDIM, PLMS and UniPC
(engine/timestep_samplers.py) and LCM (engine/lcm_a1111.py). Names follow A1111 1.10
(modules/sd_samplers_kdiffusion.py, sd_samplers_timesteps.py, sd_samplers_lcm.py, sd_schedulers.py):
labels, their `k_...` aliases, and the old combined names such as "DPM++ 2M Karras" (sampler + schedule type).
A name whose algorithm we cannot reproduce is refused with the nearest one we have, never swapped silently.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdcpu.engine.errors import UserError
from sdcpu.engine.sigma_schedules import SCHEDULE_NAMES, SCHEDULE_TYPES

AUTOMATIC = "Automatic"
KDIFFUSION, TIMESTEPS, LCM = "k-diffusion", "timesteps", "lcm"


@dataclass(frozen=True)
class A1111Sampler:
    """One A1111 sampler: how it runs and the options A1111 gives it."""

    label: str
    kind: str
    function: str
    aliases: tuple[str, ...] = ()
    discard_next_to_last_sigma: bool = False
    second_order: bool = False
    ancestral: bool = False


SAMPLER_LIST = [
    A1111Sampler("DPM++ 2M", KDIFFUSION, "sample_dpmpp_2m", ("k_dpmpp_2m",)),
    A1111Sampler("DPM++ 2S a", KDIFFUSION, "sample_dpmpp_2s_ancestral", ("k_dpmpp_2s_a",),
                 second_order=True, ancestral=True),
    A1111Sampler("Euler a", KDIFFUSION, "sample_euler_ancestral", ("k_euler_a", "k_euler_ancestral"), ancestral=True),
    A1111Sampler("Euler", KDIFFUSION, "sample_euler", ("k_euler",)),
    A1111Sampler("LMS", KDIFFUSION, "sample_lms", ("k_lms",)),
    A1111Sampler("Heun", KDIFFUSION, "sample_heun", ("k_heun",), second_order=True),
    A1111Sampler("DPM2", KDIFFUSION, "sample_dpm_2", ("k_dpm_2",),
                 discard_next_to_last_sigma=True, second_order=True),
    A1111Sampler("DPM2 a", KDIFFUSION, "sample_dpm_2_ancestral", ("k_dpm_2_a",),
                 discard_next_to_last_sigma=True, second_order=True, ancestral=True),
    A1111Sampler("DDIM", TIMESTEPS, "sample_ddim", ("ddim",)),
    A1111Sampler("PLMS", TIMESTEPS, "sample_plms", ("plms",)),
    A1111Sampler("UniPC", TIMESTEPS, "sample_unipc", ("unipc",)),
    A1111Sampler("LCM", LCM, "sample_lcm", ("k_lcm",)),
]
A1111_SAMPLERS = {s.label: s for s in SAMPLER_LIST}

REFUSED_SAMPLERS = {
    "DPM++ SDE": "DPM++ 2S a",
    "DPM++ 2M SDE": "DPM++ 2M",
    "DPM++ 2M SDE Heun": "DPM++ 2M",
    "DPM++ 3M SDE": "DPM++ 2M",
    "Euler SDE": "Euler a",
    "DPM fast": "DPM2",
    "DPM adaptive": "DPM2",
    "Restart": "Heun",
    "DDIM CFG++": "DDIM",
    "Heun PP2": "Heun",
}
REFUSED_WHY = "its Brownian-tree noise needs torchsde and cannot be reproduced without it"

REFUSED_SCHEDULES = {"Polyexponential": "Exponential", "KL Optimal": "Karras", "Align Your Steps": "Karras",
                     "Simple": "Uniform", "Normal": "SGM Uniform", "DDIM": "Uniform", "Beta": "Karras"}


def _folded(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).casefold()


_BY_FOLDED = {_folded(s.label): s.label for s in SAMPLER_LIST}
_BY_FOLDED.update({_folded(alias): s.label for s in SAMPLER_LIST for alias in s.aliases})
_SCHEDULE_BY_FOLDED = {_folded(label): label for label in SCHEDULE_TYPES}
_SCHEDULE_BY_FOLDED.update({_folded(name): label for label, names in SCHEDULE_NAMES.items() for name in names})


def is_a1111_sampler(name: str) -> bool:
    """Whether NAME is one of the A1111 labels we run (resolve user text first with resolve_a1111_name)."""
    return name in A1111_SAMPLERS


def resolve_schedule_type(text: str) -> str:
    """A1111's schedule-type label for TEXT ("karras", "SGM Uniform", "sgm_uniform"); one line if we lack it."""
    label = _SCHEDULE_BY_FOLDED.get(_folded(text))
    if label is not None:
        return label
    refused = {_folded(k): (k, v) for k, v in REFUSED_SCHEDULES.items()}.get(_folded(text))
    if refused:
        raise UserError(f"schedule type {refused[0]!r} is not available in sdcpu; the nearest we have is {refused[1]!r}")
    raise UserError(f"unknown schedule type {text!r}; choose one of {', '.join(SCHEDULE_TYPES)}")


def _refusal(name: str) -> str | None:
    for label, nearest in REFUSED_SAMPLERS.items():
        if _folded(name) in (_folded(label), *(_folded(f"{label} {s}") for s in SCHEDULE_TYPES)):
            why = REFUSED_WHY if "SDE" in label else "sdcpu does not implement it"
            return f"sampler {label!r} is not available in sdcpu ({why}); the nearest we have is {nearest!r}"
    return None


def resolve_a1111_name(name: str, schedule_type: str | None = None) -> tuple[str, str] | None:
    """(sampler label, schedule type) for an A1111 name, also old combined ones ("DPM++ 2M Karras"); None when
    NAME is no A1111 sampler at all. A refused sampler, or a combined name contradicting SCHEDULE_TYPE, is one line."""
    refusal = _refusal(name)
    if refusal:
        raise UserError(refusal)
    label = _BY_FOLDED.get(_folded(name))
    combined = None
    if label is None:
        for schedule in sorted(SCHEDULE_TYPES, key=len, reverse=True):
            head = _folded(name).removesuffix(" " + _folded(schedule))
            if head != _folded(name) and head in _BY_FOLDED:
                label, combined = _BY_FOLDED[head], schedule
                break
    if label is None:
        return None
    chosen = resolve_schedule_type(schedule_type) if schedule_type else None
    if combined and chosen not in (None, AUTOMATIC) and chosen != combined:
        raise UserError(f"sampler {name!r} already names schedule type {combined!r}; --schedule-type {chosen!r} contradicts it")
    return label, combined or chosen or AUTOMATIC


def check_a1111_sampler(sampler: str, schedule_type: str, config: dict) -> None:
    """One line for a combination we cannot run on this model."""
    if schedule_type not in SCHEDULE_TYPES:
        resolve_schedule_type(schedule_type)
    prediction = config.get("prediction_type", "epsilon")
    kind = A1111_SAMPLERS[sampler].kind
    if prediction not in ("epsilon", "v_prediction") or (prediction != "epsilon" and kind == LCM):
        raise UserError(f"A1111's {sampler} sampler cannot run a {prediction} model here; use --scheduler euler "
                        "(or another sdcpu sampler)")



def ignores_schedule_type(sampler: str, schedule_type: str) -> bool:
    """Whether A1111 runs SAMPLER on its own timesteps whatever the schedule type says (DDIM, PLMS, UniPC, LCM)."""
    return A1111_SAMPLERS[sampler].kind != KDIFFUSION and schedule_type != AUTOMATIC


def sampler_names() -> list[str]:
    """Every A1111 sampler name we run, for help texts and the server's /samplers list."""
    return [s.label for s in SAMPLER_LIST]
