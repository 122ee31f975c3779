"""Prompts of any length with emphasis weights, as Automatic1111 feeds them to CLIP.

A prompt is cut into chunks of 75 tokens, each wrapped in BOS/EOS to 77 and encoded on its own;
the hidden states are concatenated along the token axis (A1111 modules/sd_hijack_clip.py
tokenize_line / process_tokens). BREAK starts a new chunk; a chunk that would split the last
`comma_backtrack` tokens after a comma moves them to the next one. Emphasis multiplies each
token's hidden state by its weight, "Original" then rescales the chunk to its former mean
(modules/sd_emphasis.py).

An encoder is `encode_ids(ids (1, 77) int64)` returning hidden states (1, 77, D) float32, or a
(hidden, pooled) pair; with pairs the result carries the pooled output of the first chunk
(SDXL's text_embeds, as A1111 takes it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from sdcpu.engine.prompt_syntax import BREAK, parse_attention
from sdcpu.engine.tokenizer import ClipTokenizer

CHUNK_LENGTH = 75
COMMA_BACKTRACK = 20
COMMA_TOKEN = ",</w>"
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")

Encoder = Callable[[np.ndarray], "np.ndarray | tuple[np.ndarray, np.ndarray]"]


@dataclass(frozen=True)
class Chunk:
    """77 token ids (BOS, 75 prompt or padding tokens, EOS) and one weight per id."""

    ids: np.ndarray
    weights: np.ndarray


def check_emphasis(emphasis: str) -> str:
    """EMPHASIS_MODES names A1111's emphasis options; anything else is refused."""
    if emphasis not in EMPHASIS_MODES:
        raise ValueError(f"unknown emphasis {emphasis!r}: expected one of {', '.join(EMPHASIS_MODES)}")
    return emphasis


def _chunk(tokenizer: ClipTokenizer, tokens: list[int], weights: list[float], pad_id: int) -> Chunk:
    """BOS + tokens + EOS padding to 77, every id after the first EOS then pad_id (A1111 process_tokens)."""
    ids = np.full(CHUNK_LENGTH + 2, tokenizer.eos_id, dtype=np.int64)
    ids[0] = tokenizer.bos_id
    ids[1:1 + len(tokens)] = tokens
    first_eos = int(np.argmax(ids == tokenizer.eos_id))
    ids[first_eos + 1:] = pad_id
    chunk_weights = np.ones(CHUNK_LENGTH + 2, dtype=np.float32)
    chunk_weights[1:1 + len(weights)] = weights
    return Chunk(ids, chunk_weights)


def empty_chunk(tokenizer: ClipTokenizer, pad_id: int | None = None) -> Chunk:
    """The chunk of an empty prompt; A1111 fills shorter prompts of a batch with it."""
    return _chunk(tokenizer, [], [], tokenizer.pad_id if pad_id is None else pad_id)


def _fragments(text: str, emphasis: str) -> list[tuple[str, float]]:
    """Emphasis "None" reads the prompt literally (no weights, no BREAK), the others parse it."""
    return [(text, 1.0)] if check_emphasis(emphasis) == "None" else parse_attention(text)


def tokenize_weighted(tokenizer: ClipTokenizer, text: str, pad_id: int | None = None,
                      emphasis: str = "Original", comma_backtrack: int = COMMA_BACKTRACK) -> list[Chunk]:
    """A1111 tokenize_line: the prompt's chunks, at least one; pad_id defaults to the tokenizer's."""
    pad_id = tokenizer.pad_id if pad_id is None else pad_id
    comma_id = tokenizer.backend.token_to_id(COMMA_TOKEN)
    fragments = _fragments(text, emphasis)
    encodings = tokenizer.backend.encode_batch([fragment for fragment, _ in fragments], add_special_tokens=False)
    chunks: list[Chunk] = []
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close_chunk() -> None:
        nonlocal tokens, weights, last_comma
        chunks.append(_chunk(tokenizer, tokens, weights, pad_id))
        tokens, weights, last_comma = [], [], -1

    for (fragment, weight), encoding in zip(fragments, encodings):
        if (fragment, weight) == BREAK:
            close_chunk()
            continue
        for token in encoding.ids:
            if token == comma_id:
                last_comma = len(tokens)
            elif (comma_backtrack and len(tokens) == CHUNK_LENGTH and last_comma != -1
                  and len(tokens) - last_comma <= comma_backtrack):
                cut = last_comma + 1
                moved_tokens, moved_weights = tokens[cut:], weights[cut:]
                tokens, weights = tokens[:cut], weights[:cut]
                close_chunk()
                tokens, weights = moved_tokens, moved_weights
            if len(tokens) == CHUNK_LENGTH:
                close_chunk()
            tokens.append(token)
            weights.append(weight)
    if tokens or not chunks:
        close_chunk()
    return chunks


def tokenize_batch(tokenizer: ClipTokenizer, texts: list[str], pad_id: int | None = None,
                   emphasis: str = "Original", comma_backtrack: int = COMMA_BACKTRACK) -> list[list[Chunk]]:
    """Each text's chunks, shorter ones filled with empty chunks to the longest (A1111 forward)."""
    lines = [tokenize_weighted(tokenizer, text, pad_id, emphasis, comma_backtrack) for text in texts]
    count = max(len(chunks) for chunks in lines)
    filler = empty_chunk(tokenizer, pad_id)
    return [chunks + [filler] * (count - len(chunks)) for chunks in lines]


def apply_emphasis(hidden: np.ndarray, weights: np.ndarray, emphasis: str = "Original") -> np.ndarray:
    """(B, 77, D) hidden states of one chunk index with its (B, 77) weights (A1111 sd_emphasis.py).

    "Original": z * w, rescaled so the mean over the whole (B, 77, D) tensor is what it was;
    "No norm": z * w; "Ignore" and "None": z. All weights 1 leave z untouched, bit for bit.
    """
    if check_emphasis(emphasis) in ("Ignore", "None") or np.all(weights == 1.0):
        return hidden
    weighted = hidden * weights[..., None].astype(hidden.dtype)
    if emphasis == "No norm":
        return weighted
    original_mean = hidden.mean(dtype=np.float64)
    return weighted * np.asarray(original_mean / weighted.mean(dtype=np.float64), dtype=hidden.dtype)


def _encoded(encode_ids: Encoder, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(hidden (77, D), pooled or None) of one chunk's ids."""
    out = encode_ids(ids[None, :])
    hidden, pooled = out if isinstance(out, tuple) else (out, None)
    return np.asarray(hidden)[0], None if pooled is None else np.asarray(pooled)[0]


def encode_batch(chunk_lists: list[list[Chunk]], encode_ids: Encoder, emphasis: str = "Original"):
    """(B, 77 * k, D) for B prompts of k chunks each (tokenize_batch), or (that, pooled (B, P)).

    Emphasis of chunk i sees the chunk-i hidden states of all B prompts at once, as A1111's
    batched forward does for the texts of one prompt's schedule. Equal ids are encoded once.
    """
    check_emphasis(emphasis)
    if len({len(chunks) for chunks in chunk_lists}) != 1:
        raise ValueError("every prompt of a batch needs the same number of chunks (see tokenize_batch)")
    cache: dict[bytes, tuple[np.ndarray, np.ndarray | None]] = {}

    def encoded(chunk: Chunk):
        key = chunk.ids.tobytes()
        if key not in cache:
            cache[key] = _encoded(encode_ids, chunk.ids)
        return cache[key]

    columns, pooled = [], None
    for index in range(len(chunk_lists[0])):
        column = [chunks[index] for chunks in chunk_lists]
        outputs = [encoded(chunk) for chunk in column]
        hidden = np.stack([h for h, _ in outputs])
        columns.append(apply_emphasis(hidden, np.stack([chunk.weights for chunk in column]), emphasis))
        if index == 0 and outputs[0][1] is not None:
            pooled = np.stack([p for _, p in outputs])
    hidden = np.concatenate(columns, axis=1)
    return hidden if pooled is None else (hidden, pooled)


def encode_chunks(chunks: list[Chunk], encode_ids: Encoder, emphasis: str = "Original"):
    """(1, 77 * k, D) hidden states of one prompt's chunks, or (that, pooled (1, P) of chunk 0)."""
    return encode_batch([chunks], encode_ids, emphasis)
