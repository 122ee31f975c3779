"""Fix the dynamic axes of exported graphs to one image size and batch (`--width/--height/--batch`).

OpenVINO compiles a static graph faster and can pick better kernels for it; the manifest records
the shapes, and the runtime recompiles (OpenVINO) or refuses (ONNX) other sizes.
"""

from __future__ import annotations

import os
from pathlib import Path

from sdcpu.engine.errors import UserError
from sdcpu.engine.graph_shapes import CONTEXT_TOKENS_AXIS
from sdcpu.engine.manifest import ComponentEntry
from sdcpu.engine.tokenizer import DEFAULT_MAX_LENGTH


def static_input_shapes(entries: dict[str, ComponentEntry], width: int, height: int, batch: int,
                        cfg: bool, vae_scale: int, latent_channels: int) -> dict[str, dict[str, list[int]]]:
    """Every input's static shape, as the runtime feeds them (text encoders and VAE one image at a time)."""
    rows = batch * (2 if cfg else 1)
    latent = [height // vae_scale, width // vae_scale]
    shapes = {}
    for name, entry in entries.items():
        if name.startswith("text_encoder"):
            shapes[name] = {"input_ids": [1, DEFAULT_MAX_LENGTH]}
        elif name.startswith("vae_decoder"):
            shapes[name] = {"latent_sample": [1, latent_channels, *latent]}
        elif name == "vae_encoder":
            shapes[name] = {"sample": [1, 3, height, width]}
        else:
            unet = {k: [rows, *(_fixed_tokens(d) for d in v["shape"][1:])] for k, v in entry.inputs.items()}
            unet["sample"] = [rows, entry.inputs["sample"]["shape"][1], *latent]
            shapes[name] = unet
    for name, inputs in shapes.items():
        for key, shape in inputs.items():
            if any(isinstance(d, str) for d in shape):
                raise UserError(f"{name} input {key} has an axis besides batch/size that cannot be fixed: {shape}")
    return shapes


def _fixed_tokens(dim):
    """The context's token axis fixed at one 77-token chunk (a longer prompt recompiles or is refused)."""
    return DEFAULT_MAX_LENGTH if dim == CONTEXT_TOKENS_AXIS else dim


def make_static_openvino(xml: Path, shapes: dict[str, list[int]]) -> None:
    """Reshape an IR in place (weights keep their precision)."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    model.reshape({key: ov.PartialShape(shape) for key, shape in shapes.items()})
    tmp = xml.with_name(xml.stem + ".static.xml")
    ov.save_model(model, str(tmp), compress_to_fp16=False)
    del model
    os.replace(tmp, xml)
    os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))


def make_static_onnx(path: Path, shapes: dict[str, list[int]]) -> None:
    """Set fixed input dims in the graph proto; external weight data is left untouched."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for value in model.graph.input:
        if value.name in shapes:
            for dim, size in zip(value.type.tensor_type.shape.dim, shapes[value.name]):
                dim.Clear()
                dim.dim_value = size
    tmp = path.with_name(path.name + ".static")
    onnx.save_model(model, str(tmp))
    os.replace(tmp, path)


def make_static(folder: Path, entries: dict[str, ComponentEntry], fmt: str,
                shapes: dict[str, dict[str, list[int]]]) -> None:
    """Apply `shapes` to each component's files and declare them in its manifest entry."""
    for name, entry in entries.items():
        fix = make_static_openvino if fmt == "openvino" else make_static_onnx
        fix(folder / entry.file, shapes[name])
        for key, shape in shapes[name].items():
            entry.inputs[key]["shape"] = list(shape)
