"""Trace one component to ONNX, and convert that ONNX graph to OpenVINO IR.

We trace with our own wrappers rather than optimum's exporters: with the pinned stack
(torch 2.13, diffusers 0.42, transformers 5.23) pip resolves optimum-intel 1.15.0, whose export
entry point fails to import, and optimum-intel 2.2.0 needs older diffusers/transformers and
pulls a torchvision that does not import against the CPU torch. Owning the wrappers also fixes
the input names, dtypes and dynamic axes the runtime relies on. OpenVINO reads the same ONNX
graph, so both backends run one traced graph.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import torch

from sdcpu.export.components import ComponentSpec

ONNX_OPSET = 17


def export_onnx(spec: ComponentSpec, path: Path) -> Path:
    """Trace `spec.module` to `path` with named inputs and dynamic axes.

    The TorchScript-based exporter (dynamo=False) is used because diffusers' UNet has
    shape-dependent Python branches that torch.export turns into guards on the dynamic sizes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    args = tuple(spec.inputs.values())
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            spec.module,
            args,
            str(path),
            input_names=list(spec.inputs),
            output_names=spec.outputs,
            dynamic_axes=spec.dynamic_axes,
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


def onnx_to_openvino(onnx_path: Path, xml_path: Path) -> Path:
    """Convert an ONNX file to OpenVINO IR (.xml + .bin), keeping fp32 weights."""
    import openvino as ov

    xml_path.parent.mkdir(parents=True, exist_ok=True)
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    return xml_path


def consolidate_onnx(traced: Path, path: Path) -> list[Path]:
    """Rewrite a traced ONNX file as `path` and return its files.

    Past protobuf's 2 GB limit the tracer writes one file per weight tensor (hundreds for a
    UNet); those are gathered into a single `path.data` beside the graph.
    """
    import onnx

    has_external_data = any(f != traced for f in traced.parent.iterdir())
    files = [path]
    if has_external_data:
        data = path.with_name(path.name + ".data")
        model = onnx.load(str(traced), load_external_data=True)
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        data.chmod(0o644)
        files.append(data)
    else:
        shutil.move(str(traced), str(path))
    shutil.rmtree(traced.parent)
    return files
