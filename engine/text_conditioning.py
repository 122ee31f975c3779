"""The UNet's text conditioning for every model call: prompt syntax, long prompts, clip skip, per-step schedules.

"a1111" syntax (default) follows Automatic1111: each prompt's schedule of texts ([from:to:when] editing, [a|b]
alternation: engine/prompt_syntax.py) is encoded as one batch in 75-token chunks with emphasis
(engine/prompt_chunks.py), and a model call uses the entry of its call counter (A1111's CFGDenoiser.step,
which counts denoiser calls, with schedules built for 2 x steps for second-order samplers). "plain" is
diffusers' literal text cut at 75 tokens. A prompt with no syntax and <= 75 tokens gives the same ids, so the
same conditioning, either way.

SD1.5/LCM: the CLIP hidden states, from `clip_skip_states[:, N - 1]` for clip skip N > 1 (export/components.py).
SDXL: both encoders' penultimate states joined along the feature axis, the second's pooled projection of the
first chunk; clip skip does not apply (A1111's default). An empty negative prompt is zeros where the model asks
for it (force_zeros_for_empty_prompt), as diffusers and A1111 do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from sdcpu.engine.backends import Graph
from sdcpu.engine.errors import UserError
from sdcpu.engine.prompt_chunks import encode_batch, tokenize_batch, tokenize_weighted
from sdcpu.engine.prompt_syntax import cond_at_step, prompt_schedule
from sdcpu.engine.tokenizer import ClipTokenizer

CLIP_SKIP_STATES = "clip_skip_states"
EXTRA_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")
"""A1111's extra-network syntax (<lora:name:0.8>, <hypernet:...>): removed from the text before encoding."""


def extra_network_tags(text: str) -> list[str]:
    """The <kind:...> tags A1111 strips from a prompt (modules/extra_networks.py parse_prompt)."""
    return [match.group(0) for match in EXTRA_NETWORK_TAG.finditer(text)]
Entry = dict[str, np.ndarray]


@dataclass(frozen=True)
class PromptConditioning:
    """One prompt over the run: (last call counter it holds for, {UNet input: (1, ...) array}) per schedule entry."""

    schedule: list[tuple[int, Entry]]

    def at(self, call: int) -> Entry:
        return cond_at_step(self.schedule, call)

    @property
    def token_lengths(self) -> set[int]:
        return {entry["encoder_hidden_states"].shape[1] for _, entry in self.schedule}


@dataclass(frozen=True)
class TextConditioning:
    """The prompt's conditioning and, with CFG, the negative prompt's."""

    positive: PromptConditioning
    negative: PromptConditioning | None

    def at(self, call: int) -> tuple[Entry, Entry | None]:
        return self.positive.at(call), None if self.negative is None else self.negative.at(call)

    @property
    def token_lengths(self) -> set[int]:
        negative = self.negative.token_lengths if self.negative else set()
        return self.positive.token_lengths | negative


class TextEncoders:
    """A model's tokenizers and text encoders, encoding prompts as a request's syntax and clip skip say."""

    def __init__(self, tokenizers: list[ClipTokenizer], encoders: list[Graph], zeros_for_empty_negative: bool,
                 source: str = "SRC"):
        self.tokenizers = tokenizers
        self.encoders = encoders
        self.zeros_for_empty_negative = zeros_for_empty_negative
        self.source = source

    @property
    def sdxl(self) -> bool:
        return len(self.encoders) == 2

    def _encode_ids(self, encoder: Graph, clip_skip: int):
        def encode(ids: np.ndarray):
            if self.sdxl:
                out = encoder.run(input_ids=ids)
                return (out["hidden_states"], out["text_embeds"]) if "text_embeds" in out else out["hidden_states"]
            if clip_skip == 1:
                return encoder(input_ids=ids)
            return encoder.run(input_ids=ids)[CLIP_SKIP_STATES][:, clip_skip - 1]
        return encode

    def check_clip_skip(self, clip_skip: int) -> None:
        """One line when the export lacks clip-skip outputs or clip skip N asks for more layers than it has."""
        if clip_skip == 1 or self.sdxl:
            return
        outputs = self.encoders[0].entry.outputs
        if CLIP_SKIP_STATES not in outputs:
            raise UserError(f"this export's text encoder has no clip-skip outputs (it was exported before sdcpu had "
                            f"--clip-skip); re-export it to use --clip-skip: sdcpu export {self.source} DIR")
        layers = outputs[CLIP_SKIP_STATES]["shape"][1]
        if isinstance(layers, int) and clip_skip > layers:
            raise UserError(f"--clip-skip {clip_skip}: this text encoder has {layers} layers")

    def _encode_texts(self, texts: list[str], syntax: str, clip_skip: int, emphasis: str) -> list[Entry]:
        """One entry per text; A1111 syntax encodes the texts as one batch (emphasis means span them all)."""
        hidden, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.encoders):
            encode = self._encode_ids(encoder, clip_skip)
            if syntax == "plain":
                outputs = [encode(tokenizer([text])) for text in texts]
                if isinstance(outputs[0], tuple):
                    pooled = np.concatenate([p for _, p in outputs])
                    outputs = [h for h, _ in outputs]
                out = np.concatenate(outputs)
            else:
                out = encode_batch(tokenize_batch(tokenizer, texts, emphasis=emphasis), encode, emphasis)
                if isinstance(out, tuple):
                    out, pooled = out
            hidden.append(np.asarray(out, np.float32))
        if len({h.shape[1] for h in hidden}) != 1:
            raise UserError("the two SDXL tokenizers split this prompt into different numbers of 75-token chunks")
        joined = np.concatenate(hidden, axis=-1)
        entries = [{"encoder_hidden_states": joined[i:i + 1]} for i in range(len(texts))]
        if pooled is not None:
            for i, entry in enumerate(entries):
                entry["text_embeds"] = np.asarray(pooled[i:i + 1], np.float32)
        return entries

    def prompt(self, text: str, syntax: str, clip_skip: int, schedule_steps: int,
               emphasis: str = "Original") -> PromptConditioning:
        """One prompt's conditioning schedule."""
        if syntax == "plain":
            schedule = [(schedule_steps, text)]
        else:
            schedule = prompt_schedule(EXTRA_NETWORK_TAG.sub("", text), schedule_steps)
        entries = self._encode_texts([t for _, t in schedule], syntax, clip_skip, emphasis)
        return PromptConditioning([(end, entry) for (end, _), entry in zip(schedule, entries)])

    def zeros_like(self, positive: PromptConditioning) -> PromptConditioning:
        """An empty negative prompt as zeros, one 77-token chunk (diffusers' and A1111's SDXL)."""
        entry = positive.schedule[0][1]
        width = self.tokenizers[0].max_length
        zeros = {k: np.zeros((1, width, *v.shape[2:]) if v.ndim == 3 else v.shape, np.float32) for k, v in entry.items()}
        return PromptConditioning([(positive.schedule[-1][0], zeros)])

    def conditioning(self, prompt: str, negative_prompt: str, syntax: str, clip_skip: int, schedule_steps: int,
                     cfg: bool, emphasis: str = "Original") -> TextConditioning:
        """The request's text conditioning: the prompt's and, with CFG, the negative prompt's."""
        clip_skip = 1 if self.sdxl else clip_skip
        positive = self.prompt(prompt, syntax, clip_skip, schedule_steps, emphasis)
        if not cfg:
            return TextConditioning(positive, None)
        if not negative_prompt and self.zeros_for_empty_negative:
            return TextConditioning(positive, self.zeros_like(positive))
        return TextConditioning(positive, self.prompt(negative_prompt, syntax, clip_skip, schedule_steps, emphasis))

    def token_lengths(self, texts: list[str], syntax: str, schedule_steps: int) -> set[int]:
        """The context lengths (77 per chunk) the texts will give, without running an encoder."""
        if syntax == "plain":
            return {self.tokenizers[0].max_length}
        lengths = set()
        for text in texts:
            schedule = [t for _, t in prompt_schedule(EXTRA_NETWORK_TAG.sub("", text), schedule_steps)]
            chunks = max(len(tokenize_weighted(self.tokenizers[0], t)) for t in schedule)
            lengths.add(chunks * self.tokenizers[0].max_length)
        return lengths

    def length_notes(self, prompt: str, negative_prompt: str, syntax: str) -> dict[str, tuple[str, int, int]]:
        """{label: ("cut", tokens, tokens used)} for plain prompts over 75 tokens, {label: ("chunked", tokens,
        chunks)} for A1111-syntax prompts of more than one chunk."""
        tokenizer = self.tokenizers[0]
        notes = {}
        for label, text in (("prompt", prompt), ("negative prompt", negative_prompt)):
            text = text if syntax == "plain" else EXTRA_NETWORK_TAG.sub("", text)
            if not text:
                continue
            count = tokenizer.count(text)
            if syntax == "plain" and count > tokenizer.max_length - 2:
                notes[label] = ("cut", count, tokenizer.max_length - 2)
            elif syntax != "plain" and len(chunks := tokenize_weighted(tokenizer, text)) > 1:
                notes[label] = ("chunked", count, len(chunks))
        return notes
