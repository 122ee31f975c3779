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

from sdcpu.engine.manifest import Manifest

UNET_GRAPHS = ("unet", "unet_deep", "unet_shallow")


def named_dimensions(manifest: Manifest, width: int, height: int, rows: int = 1) -> dict[str, int]:
    """What the exported graphs' named dimensions mean for `rows` rows of one image of width x height."""
    factor = manifest.vae_scale_factor
    return {"batch": rows, "height": height // factor, "width": width // factor,
            "image_height": height, "image_width": width}


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
