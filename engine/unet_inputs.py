"""What the UNet is fed besides the sample, and the guided UNet call the samplers see.

Text: engine/text_conditioning.py, one entry per model call. SDXL adds six size ids (Podell et al. 2023),
LCM its guidance-scale embedding instead of CFG (Luo et al. 2023). With classifier-free guidance the negative
half comes first in the batch, as diffusers orders it.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np

from sdcpu.engine.text_conditioning import Entry, TextConditioning


def guidance_scale_embedding(w: np.ndarray, dim: int) -> np.ndarray:
    """Sinusoidal embedding of (guidance - 1) * 1000 (LCM, Luo et al. 2023; from VDM)."""
    half = dim // 2
    freqs = np.exp(np.arange(half, dtype=np.float32) * -np.float32(math.log(10000.0) / (half - 1)))
    angles = (np.asarray(w, np.float32) * np.float32(1000.0))[:, None] * freqs[None, :]
    emb = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    return np.pad(emb, ((0, 0), (0, dim % 2)))


def sdxl_time_ids(width: int, height: int, batch: int) -> np.ndarray:
    """(original h, w, crop top, left, target h, w) with no crop and original = target size."""
    return np.tile(np.array([[height, width, 0, 0, height, width]], np.float32), (batch, 1))


def per_row_inputs(guidance: dict[str, np.ndarray], sdxl_size: tuple[int, int] | None) -> Callable[[int], dict]:
    """The UNet inputs that are not text, for n rows: LCM's guidance embedding, SDXL's size ids."""
    def inputs(n: int) -> dict[str, np.ndarray]:
        extra = {k: np.tile(v, (n // len(v), 1)) for k, v in guidance.items()}
        if sdxl_size is not None:
            extra["time_ids"] = sdxl_time_ids(*sdxl_size, n)
        return extra

    return inputs


def guided_prediction(unet, request, conditioning: TextConditioning, cfg: bool, per_row, train_timesteps: float,
                      extra: np.ndarray | None = None):
    """The UNet as f(x_vp, t) -> its prediction (eps or v), guided by CFG or LCM's embedding.

    Each call takes the conditioning of its call counter (prompt editing). With CFG both halves run as one
    batch when their contexts have the same length, else one after the other (A1111 without pad_cond_uncond).
    Outside the request's guidance interval a CFG step runs the conditional half alone.
    `extra`: channels appended to every sample (an inpainting UNet's mask and masked-image latents).
    """
    calls = itertools.count()

    def with_extra(x: np.ndarray) -> np.ndarray:
        return x if extra is None else np.concatenate([x, np.tile(extra, (len(x) // len(extra), 1, 1, 1))], axis=1)

    def run(x: np.ndarray, t: float, texts: list[Entry]) -> np.ndarray:
        rows = len(x) // len(texts)
        text = {k: np.concatenate([np.repeat(e[k], rows, axis=0) for e in texts]) for k in texts[0]}
        return unet(sample=with_extra(x), timestep=np.full(len(x), t, np.float32), **text, **per_row(len(x)))

    def predict(x: np.ndarray, t: float) -> np.ndarray:
        cond, uncond = conditioning.at(next(calls))
        if uncond is None or not (cfg and request.guides_at(t / train_timesteps)):
            return run(x, t, [cond])
        if cond["encoder_hidden_states"].shape == uncond["encoder_hidden_states"].shape:
            uncond_out, cond_out = np.split(run(np.concatenate([x, x]), t, [uncond, cond]), 2)
        else:
            uncond_out, cond_out = run(x, t, [uncond]), run(x, t, [cond])
        return uncond_out + np.float32(request.guidance) * (cond_out - uncond_out)

    return predict
