"""What the UNet is conditioned on, per family, as diffusers' pipelines build it.

SD1.5/LCM: CLIP last hidden states. SDXL: penultimate hidden states of both encoders
concatenated, the second encoder's pooled projection and six size ids (Podell et al. 2023).
With classifier-free guidance every input is [negative; positive] along the batch axis.
"""

from __future__ import annotations

import math

import numpy as np

from sdcpu.engine.backends import Graph
from sdcpu.engine.tokenizer import ClipTokenizer


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


def _guided(positive: np.ndarray, negative: np.ndarray | None, batch: int) -> np.ndarray:
    positive = np.repeat(positive, batch, axis=0)
    if negative is None:
        return positive
    return np.concatenate([np.repeat(negative, batch, axis=0), positive])


def sd_conditioning(tokenizer: ClipTokenizer, text_encoder: Graph, prompt: str, negative_prompt: str,
                    batch: int, cfg: bool) -> dict[str, np.ndarray]:
    """StableDiffusionPipeline.encode_prompt: the negative prompt (or "") for the unconditional half."""
    def encode(text: str) -> np.ndarray:
        return text_encoder(input_ids=tokenizer([text]))

    negative = encode(negative_prompt) if cfg else None
    return {"encoder_hidden_states": _guided(encode(prompt), negative, batch)}


def _sdxl_encode(tokenizers: list[ClipTokenizer], encoders: list[Graph], text: str) -> tuple[np.ndarray, np.ndarray]:
    hidden, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, encoders):
        outputs = encoder.run(input_ids=tokenizer([text]))
        hidden.append(outputs["hidden_states"])
        pooled = outputs.get("text_embeds", pooled)
    return np.concatenate(hidden, axis=-1), pooled


def sdxl_conditioning(tokenizers: list[ClipTokenizer], encoders: list[Graph], prompt: str, negative_prompt: str,
                      batch: int, cfg: bool, zeros_for_empty_negative: bool,
                      width: int, height: int) -> dict[str, np.ndarray]:
    """StableDiffusionXLPipeline.encode_prompt + added time ids (prompt_2 = prompt)."""
    hidden, pooled = _sdxl_encode(tokenizers, encoders, prompt)
    negative_hidden = negative_pooled = None
    if cfg and not negative_prompt and zeros_for_empty_negative:
        negative_hidden, negative_pooled = np.zeros_like(hidden), np.zeros_like(pooled)
    elif cfg:
        negative_hidden, negative_pooled = _sdxl_encode(tokenizers, encoders, negative_prompt)
    rows = batch * (2 if cfg else 1)
    return {
        "encoder_hidden_states": _guided(hidden, negative_hidden, batch),
        "text_embeds": _guided(pooled, negative_pooled, batch),
        "time_ids": sdxl_time_ids(width, height, rows),
    }
