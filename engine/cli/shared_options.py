"""Options several commands share (generate, grid, bench): their help texts and, for A1111's settings, the
typer declarations and the parsing of their values."""

from __future__ import annotations

from typing import Optional

import typer

from sdcpu.engine.a1111_samplers import SCHEDULE_TYPES, sampler_names
from sdcpu.engine.errors import UserError
from sdcpu.engine.infotext_values import parse_size
from sdcpu.engine.samplers import SAMPLERS

INFERENCE_PRECISION_HELP = (
    "OpenVINO models: auto (bf16 on CPUs that compute it natively, AVX512-BF16 or AMX: about 2x faster UNet and "
    "VAE, images within bf16 rounding; f32 elsewhere; $SDCPU_INFERENCE_PRECISION pins it), bf16, or f32 (exact: "
    "with an fp32 export it reproduces diffusers)."
)
DEEPCACHE_HELP = (
    "DeepCache every N: run the full UNet on every N-th call and only its shallowest branch, on the cached deep "
    "features, in between (N=3: 2.25x faster SD1.5 steps on the int8 hybrid export; images change, see "
    "bench/RESULTS.md). Needs an export made with --deepcache. Default: off."
)
GUIDANCE_INTERVAL_HELP = (
    "LOW-HIGH: run classifier-free guidance only while the noise level (timestep / training timesteps, 1 = pure "
    "noise) is in this interval, and the conditional UNet half alone outside it (half the UNet work on those "
    "steps; Kynkaanniemi et al. 2024). 0.4-1 drops guidance for the last part of SD1.5's schedule. Default 0-1 (always)."
)
FAST_HELP = (
    "The fast preset of the model's family for every speed option left out (SD1.5: --deepcache 3; LCM: "
    "--deepcache 2), kept by measurement (bench/RESULTS.md: speed and shapes-model match). DeepCache needs an "
    "export made with --deepcache (or `sdcpu export --fast`)."
)
INIT_IMAGE_HELP = (
    "Start from this picture instead of noise (image-to-image, as diffusers' Img2Img pipelines): it is resized to "
    "--width/--height (default: its own size rounded down to a multiple of 8), encoded, and noised to --strength."
)
STRENGTH_HELP = (
    "How much of the init image is repainted, in (0, 1]: int(steps x strength) of the steps run, from that noise "
    "level (1 = all noise). Default 0.75 (1 for inpainting models); left-out --steps grow so that the family's "
    "default number of steps runs. LCM models keep all --steps on a shorter schedule, as diffusers' LCM does."
)
MASK_HELP = (
    "Inpaint: a picture the size of the init image, white = repaint, black = keep. Inpainting models (9-channel "
    "UNet) see it; other models get the kept part put back after every step (diffusers' StableDiffusionInpaintPipeline)."
)
MASK_BLUR_HELP = "Blur the mask by this many pixels (Gaussian, as A1111) for a soft seam. Default 0 (a sharp mask, as diffusers)."
RESIZE_HELP = (
    "When --width/--height give another aspect than the init image's: stretch (A1111's 'Just resize', the "
    "default), crop ('Crop and resize': fill, cut the centre) or fit ('Resize and fill': fit inside, edges extended)."
)
STATIC_SHAPES_HELP = (
    "OpenVINO: compile every graph for the image size about to be made (one row; CFG halves and batches run "
    "row by row), 1.14x faster UNet calls than dynamic shapes (bench/RESULTS.md); a new size recompiles once, "
    "cached. --dynamic-shapes compiles one build for every size."
)
TINY_VAE_HELP = (
    "Decode with the export's tiny VAE (TAESD-style AutoencoderTiny): SD1.5's 512x512 decode takes 0.5 s "
    "instead of about 6 s; the image differs (how much depends on the tiny VAE). Needs an export made with --tiny-vae."
)

SAMPLER_HELP = (
    f"sdcpu's diffusers-exact samplers: {', '.join(SAMPLERS)}; or an Automatic1111 sampler, run as A1111 runs it "
    f"(k-diffusion on the model's discrete sigmas): {', '.join(repr(n) for n in sampler_names())}, also old names "
    "such as 'DPM++ 2M Karras'. Default: the one the model's scheduler config names."
)
SCHEDULE_TYPE_HELP = (
    f"Automatic1111 samplers: the sigma schedule, {', '.join(SCHEDULE_TYPES)}. Default Automatic (the sampler's "
    "own: Karras for DPM++ 2M, DPM++ 2S a, DPM2; the model's discrete sigmas for the others)."
)
PROMPT_SYNTAX_HELP = (
    "a1111 (default): Automatic1111's prompt syntax: (word) x1.1, \\[word] /1.1, (word:1.3), \\( \\) literal, "
    "BREAK, prompts of any length in 75-token chunks, \\[from:to:when] editing and \\[a|b] alternation per step. "
    "plain: the literal text, cut at 75 tokens, as diffusers."
)
CLIP_SKIP_HELP = "Stop the text encoder this many layers from the end (A1111 numbering: 1 = last layer, 2 = penultimate). SD1.5-family exports; SDXL ignores it, as A1111 does by default."
NOISE_HELP = (
    "Noise source: cpu (torch's CPU generator: diffusers' images on a CPU, sdcpu's default) or nv (torch's CUDA "
    "generator, bit for bit: what Automatic1111 draws by default on an NVIDIA GPU, its 'GPU'/'NV' source)."
)
SUBSEED_HELP = "Variation seed (A1111): noise of --seed mixed with this seed's by --subseed-strength (slerp). -1: pick one."
SUBSEED_STRENGTH_HELP = "Variation strength from 0 (the --seed's noise) to 1 (the --subseed's). Default 0 (off)."
SEED_RESIZE_HELP = "WxH: draw the noise as for an image of this size and paste it centred (A1111's 'Resize seed from'), so a seed keeps its look at another size."

SCHEDULE_TYPE_OPTION = typer.Option(None, "--schedule-type", help=SCHEDULE_TYPE_HELP)
PROMPT_SYNTAX_OPTION = typer.Option(None, "--prompt-syntax", help=PROMPT_SYNTAX_HELP)
CLIP_SKIP_OPTION = typer.Option(None, "--clip-skip", help=CLIP_SKIP_HELP)
NOISE_OPTION = typer.Option(None, "--noise", help=NOISE_HELP)
SUBSEED_OPTION = typer.Option(None, "--subseed", help=SUBSEED_HELP)
SUBSEED_STRENGTH_OPTION = typer.Option(None, "--subseed-strength", help=SUBSEED_STRENGTH_HELP)
SEED_RESIZE_OPTION = typer.Option(None, "--seed-resize-from", help=SEED_RESIZE_HELP)
EMPHASIS_OPTION = typer.Option(None, "--emphasis", help="A1111's emphasis mode for (word:1.2) weights: Original (default: scale each token, then restore the chunk's mean), 'No norm' (scale only), Ignore (parse, weights unused), None (brackets are literal text).")
ENSD_OPTION = typer.Option(None, "--ensd", help="Eta noise seed delta (A1111's ENSD, e.g. 31337): the noise drawn after the initial noise (ancestral samplers) comes from generators seeded with seed + this. Default 0 (off).")


def parse_seed_resize(text: Optional[str]) -> tuple[int, int] | None:
    """--seed-resize-from WxH as (width, height); None when left out; one line when malformed."""
    if text is None or text in ("", "-1x-1", "0x0"):
        return None
    try:
        return parse_size(text)
    except ValueError as exc:
        raise UserError(f"--seed-resize-from: {exc}") from None
