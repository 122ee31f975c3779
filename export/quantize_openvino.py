"""Shrink an fp32 OpenVINO IR of one SD component: fp16 weights, NNCF INT8 weights, or UNet hybrid INT8.

The recipes are optimum-intel's (optimum/intel/openvino/quantization.py): INT8_ASYM weight-only
compression for every graph, and for the UNet its `_hybrid_quantization` (weights of MatMul and
embedding ops compressed, activations and weights of everything else quantized by `nncf.quantize`).

Memory: one ov.Model alive at a time (read_model memory-maps the .bin), only NNCF's own statistics
pass compiles anything, references are dropped and collected before returning.

Output: NNCF's INFO logs are lowered to WARNING and its data-free progress bar is swallowed; the
calibrated pass keeps NNCF's two tidy rich bars (statistics collection, bias correction), since on
a real UNet it runs for minutes and is otherwise silent. A caller sees one `log` line plus those.

Writes go to a hidden temp pair beside `out_xml`, renamed into place once the model is released,
so `model_xml == out_xml` is allowed (the IR is replaced) and a failed run leaves no partial IR.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import math
import os
import secrets
from pathlib import Path
from typing import Callable

import numpy as np

WEIGHT_PATH_TYPES = ("Convert", "Reshape", "FakeQuantize")
Calibration = list[dict[str, np.ndarray]]


def save_fp16(model_xml: Path, out_xml: Path) -> list[Path]:
    """fp16 weights (ov.save_model compress_to_fp16=True); returns [xml, bin]."""
    return _rewrite(model_xml, out_xml, lambda model: model, compress_to_fp16=True)


def compress_int8_weights(model_xml: Path, out_xml: Path) -> list[Path]:
    """INT8 weight-only compression (nncf.compress_weights INT8_ASYM, optimum-intel's default); returns [xml, bin]."""
    return _rewrite(model_xml, out_xml, _compress_weights)


def quantize_hybrid(model_xml: Path, out_xml: Path, calibration: Calibration, log=print) -> list[Path]:
    """UNet hybrid INT8 as optimum-intel's _hybrid_quantization; `calibration`: the runtime's UNet feeds."""
    if not calibration:
        raise ValueError("hybrid quantization needs at least one calibration sample")

    def transform(model):
        weighted = _ops_with_weights(model)
        log(f"  hybrid int8: {len(weighted)} MatMul/embedding ops weight-only, the rest quantized "
            f"on {len(calibration)} calibration samples")
        model = _compress_weights(model, ignored_types=["Convolution"])
        return _quantize_activations(model, calibration, weighted)

    return _rewrite(model_xml, out_xml, transform)


def weight_element_types(model_xml: Path) -> dict[str, int]:
    """Count of Constant-node elements per element type name (e.g. {'i8': 123456, 'u8': ..., 'f32': ...})."""
    import openvino as ov

    model = ov.Core().read_model(str(model_xml))
    counts: dict[str, int] = {}
    for op in model.get_ops():
        if op.get_type_name() == "Constant":
            kind = op.get_output_element_type(0).get_type_name()
            counts[kind] = counts.get(kind, 0) + math.prod(op.get_output_shape(0))
    del model
    gc.collect()
    return counts


def _compress_weights(model, ignored_types: list[str] | None = None):
    """nncf.compress_weights in INT8_ASYM (optimum-intel's 8-bit default), optionally skipping op types."""
    import nncf

    ignored = nncf.IgnoredScope(types=ignored_types) if ignored_types else None
    with _quiet_nncf(), contextlib.redirect_stdout(io.StringIO()):
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=ignored)


def _quantize_activations(model, calibration: Calibration, weight_only_ops: list[str]):
    """nncf.quantize as in optimum-intel's hybrid step: transformer patterns, compressed ops ignored, no SmoothQuant."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedSmoothQuantParameters

    advanced = nncf.AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))
    with _quiet_nncf():
        return nncf.quantize(
            model, nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER,
            ignored_scope=nncf.IgnoredScope(names=weight_only_ops), subset_size=len(calibration),
            advanced_parameters=advanced,
        )


def _ops_with_weights(model) -> list[str]:
    """Friendly names of MatMuls fed by a constant and of Gathers reading a float constant table (embeddings)."""
    names = []
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind == "MatMul" and (_constant_behind(op, 0) or _constant_behind(op, 1)):
            names.append(op.get_friendly_name())
        elif kind == "Gather" and op.input_value(0).get_element_type().is_real() and _constant_behind(op, 0):
            names.append(op.get_friendly_name())
    return names


def _constant_behind(op, port: int) -> bool:
    """Whether input `port` of `op` is a Constant, possibly through Convert/Reshape/FakeQuantize."""
    node = op.input_value(port).get_node()
    while node.get_type_name() in WEIGHT_PATH_TYPES and node.get_input_size() > 0:
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Constant"


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF's logger (and its handlers) at WARNING for the duration, restored afterwards."""
    from nncf.common.logging.logger import nncf_logger

    saved = [(nncf_logger, nncf_logger.level)] + [(h, h.level) for h in nncf_logger.handlers]
    for item, _ in saved:
        item.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for item, level in saved:
            item.setLevel(level)


def _rewrite(model_xml: Path, out_xml: Path, transform: Callable, compress_to_fp16: bool = False) -> list[Path]:
    """Read `model_xml`, transform it, save it at `out_xml` via a temp pair; returns [xml, bin]."""
    import openvino as ov

    model_xml, out_xml = Path(model_xml), Path(out_xml)
    if out_xml.suffix != ".xml":
        raise ValueError(f"output IR must be an .xml path, got {out_xml}")
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    temp_xml = out_xml.with_name(f".{out_xml.stem}.{secrets.token_hex(4)}.tmp.xml")
    pairs = [(temp_xml.with_suffix(".bin"), out_xml.with_suffix(".bin")), (temp_xml, out_xml)]
    model = None
    try:
        model = transform(ov.Core().read_model(str(model_xml)))
        ov.save_model(model, str(temp_xml), compress_to_fp16=compress_to_fp16)
    except BaseException:
        for temp, _ in pairs:
            temp.unlink(missing_ok=True)
        raise
    finally:
        model = None
        gc.collect()
    for temp, final in pairs:
        os.replace(temp, final)
    return [out_xml, out_xml.with_suffix(".bin")]
