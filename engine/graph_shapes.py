"""The static input shapes an export's graphs are compiled for at load: one image at the requested size.

OpenVINO runs a graph compiled for fixed shapes faster than one with dynamic dimensions (bench/RESULTS.md,
levers table), so the front ends compile every graph for the size they are about to generate. The UNet
takes both CFG halves in one call (two rows; one without CFG): one batch-2 call is faster than two
batch-1 calls, static or not. Text encoders and VAE take one row. A batch of images runs image by
image (Graph.run splits rows into calls of the compiled row count). A dimension these rules cannot
fill (the shallow DeepCache graph's feature size) is filled from the full graph's compiled output
shape in Pipeline.load.
"""

from __future__ import annotations

from typing import Callable

from sdcpu.engine.errors import UserError
from sdcpu.engine.img2img import unet_channels
from sdcpu.engine.manifest import VAE_ENCODER, Manifest
from sdcpu.engine.tokenizer import DEFAULT_MAX_LENGTH

UNET_GRAPHS = ("unet", "unet_deep", "unet_shallow")
CONTEXT_TOKENS_AXIS = "sequence"  # the UNet context's token axis: 77 per prompt chunk


def named_dimensions(manifest: Manifest, width: int, height: int, rows: int = 1) -> dict[str, int]:
    """What the exported graphs' named dimensions mean for `rows` rows of one image of width x height."""
    factor = manifest.vae_scale_factor
    return {"batch": rows, "height": height // factor, "width": width // factor,
            "image_height": height, "image_width": width, CONTEXT_TOKENS_AXIS: DEFAULT_MAX_LENGTH}


def static_shapes(manifest: Manifest, width: int, height: int, cfg: bool) -> dict[str, dict[str, tuple]]:
    """{graph: {input: shape}} with every dimension known; inputs with a dimension left open are left out."""
    shapes = {}
    for name, entry in manifest.components.items():
        dims = named_dimensions(manifest, width, height, 2 if cfg and name in UNET_GRAPHS else 1)
        inputs = {}
        for key, spec in entry.inputs.items():
            shape = tuple(dims.get(d, d) if isinstance(d, str) else d for d in spec["shape"])
            if not any(isinstance(d, str) for d in shape):
                inputs[key] = shape
        shapes[name] = inputs
    return shapes


def complete(shapes: dict[str, tuple], declared: dict) -> bool:
    """Whether `shapes` gives every declared input of a graph."""
    return set(shapes) == set(declared)


def request_shapes(pipe, request, cfg: bool) -> dict[str, dict[str, tuple]]:
    """The input shapes each of `pipe`'s graphs sees for `request` (text encoders and VAE run one image at a
    time). The UNet context is 77 tokens per prompt chunk; prompts of different lengths (or one that changes
    length per step) make it, and the rows, dynamic: the CFG halves then run one after the other."""
    manifest = pipe.manifest
    factor = manifest.vae_scale_factor
    latent = (request.height // factor, request.width // factor)
    lengths = pipe.token_lengths(request, cfg)
    rows = request.batch * (2 if cfg else 1) if len(lengths) == 1 else -1
    unet = {k: (rows, *v["shape"][1:]) for k, v in pipe.unet.entry.inputs.items()}
    unet["sample"] = (rows, unet_channels(manifest), *latent)
    context = unet["encoder_hidden_states"]
    unet["encoder_hidden_states"] = (rows, lengths.pop() if len(lengths) == 1 else -1, context[-1])
    shapes = {"unet": unet, "vae_decoder": {"latent_sample": (1, manifest.latent_channels, *latent)}}
    if request.init_image is not None:
        shapes[VAE_ENCODER] = {"sample": (1, 3, request.height, request.width)}
    for name, encoder in zip(("text_encoder", "text_encoder_2"), pipe.text_encoders):
        shapes[name] = {"input_ids": (1, encoder.entry.inputs["input_ids"]["shape"][1])}
    return shapes


def fit_request_shapes(pipe, request, log: Callable[[str], None] | None = None) -> None:
    """Static graphs: OpenVINO recompiles for another size/batch/context (a note says so for static exports);
    ONNX cannot. A CFG request with a limited guidance interval calls the UNet with both halves and with one:
    its UNet gets a dynamic batch (static size)."""
    cfg = pipe.uses_cfg(request.guidance)
    manifest = pipe.manifest
    for name, shapes in request_shapes(pipe, request, cfg).items():
        graph = pipe.image_encoder.graph if name == VAE_ENCODER else pipe.graphs()[name]
        if name == "unet" and cfg and not request.guides_everywhere and graph.static_batch:
            shapes = {k: (-1, *v[1:]) for k, v in shapes.items()}
        elif not graph.static_mismatches(shapes):
            continue
        static = manifest.static_shape or {}
        if manifest.format != "openvino":
            context = graph.entry.inputs.get("encoder_hidden_states", {}).get("shape", [None, None])[1]
            if shapes.get("encoder_hidden_states", (0, context))[1] != context:
                raise UserError(f"this ONNX export takes prompts of one {context}-token chunk only (a static export, "
                                "or one made before sdcpu had long prompts); re-export it, or use a shorter prompt")
            raise UserError(
                f"this ONNX model was exported with static shapes ({static.get('width')}x{static.get('height')}, "
                f"batch {static.get('batch')}); generate at that size or re-export without --width/--height/--batch"
            )
        if log and static:
            log(f"note: {name} was exported static; recompiling for {request.width}x{request.height} batch {request.batch}")
        graph.reshape({k: tuple(v) for k, v in graph.per_call(shapes).items()})
