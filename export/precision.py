"""Turn the checked fp32 graphs into the requested precision, one component at a time.

OpenVINO: fp16 weights, NNCF INT8 weight compression, or hybrid (UNet activations INT8 too),
as optimum-intel offers them. ONNX: fp16 (ORT's float16 converter) or ORT INT8 (dynamic
MatMul/Gemm everywhere, static QDQ convolutions in the calibrated UNet). The VAE decoder's
convolutions stay fp32 under ONNX int8: with them quantized (8 calibration decodes) a real-size
SD1.5 VAE fell to 20 dB against PyTorch, while its MatMul-only int8 form keeps fp32 quality.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from sdcpu.engine.deepcache import DEEP, SHALLOW
from sdcpu.engine.manifest import ComponentEntry

PRECISIONS = ("fp32", "fp16", "int8")
UNET_GRAPHS = ("unet", DEEP, SHALLOW)
QUANT_MODES = ("weights", "hybrid")
Calibration = list[dict[str, np.ndarray]]


def needs_calibration(fmt: str, precision: str, quant: str) -> bool:
    """ONNX int8 calibrates the UNet's convolutions; OpenVINO only in hybrid mode."""
    return precision == "int8" and (fmt == "onnx" or quant == "hybrid")


def describe(fmt: str, precision: str, quant: str, sdxl: bool) -> str:
    """One line for the manifest saying what was done to which component."""
    if precision == "fp32":
        return "fp32"
    if precision == "fp16":
        vae = " (VAE kept fp32: SDXL's VAE overflows in fp16)" if fmt == "onnx" and sdxl else ""
        return f"fp16 weights{' and compute' if fmt == 'onnx' else ''}{vae}"
    if fmt == "onnx":
        return "int8: dynamic MatMul/Gemm in every graph, calibrated static QDQ convolutions in the UNet graphs"
    if quant == "hybrid":
        return "hybrid: UNet graphs int8 weights and activations (NNCF), other graphs int8 weights"
    return "int8 weights (NNCF weight compression); activations in the CPU's float precision"


def component_precision(name: str, fmt: str, precision: str, sdxl: bool) -> str:
    """The precision a component ends up in (SDXL's VAE, decoder and encoder, stays fp32 in ONNX fp16)."""
    if precision == "fp16" and fmt == "onnx" and sdxl and name in ("vae_decoder", "vae_encoder"):
        return "fp32"
    return precision


def _convert_openvino(name: str, src: Path, dst: Path, precision: str, quant: str,
                      calibration: Calibration | None, log: Callable) -> list[Path]:
    from sdcpu.export import quantize_openvino as q

    if precision == "fp16":
        return q.save_fp16(src, dst)
    if quant == "hybrid" and name in UNET_GRAPHS:
        return q.quantize_hybrid(src, dst, calibration, log=log)
    return q.compress_int8_weights(src, dst)


def _convert_onnx(name: str, src: Path, dst: Path, precision: str, calibration: Calibration | None,
                  log: Callable) -> list[Path]:
    from sdcpu.export import quantize_onnx as q

    if precision == "fp16":
        return q.convert_fp16(src, dst)
    return q.quantize_int8(src, dst, calibration if name in UNET_GRAPHS else None, log=log)


def _copy(src_dir: Path, entry: ComponentEntry, dst_dir: Path) -> list[Path]:
    copies = []
    for relative in entry.files:
        target = dst_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src_dir / relative, target)
        copies.append(target)
    return copies


def convert_component(name: str, entry: ComponentEntry, fp32_dir: Path, out_dir: Path, fmt: str,
                      precision: str, quant: str, sdxl: bool, calibration: Calibration | None,
                      log: Callable) -> tuple[list[Path], str]:
    """Write component `name` at the requested precision under out_dir; returns its files and precision."""
    target = component_precision(name, fmt, precision, sdxl)
    if target == "fp32":
        return _copy(fp32_dir, entry, out_dir), target
    src, dst = fp32_dir / entry.file, out_dir / entry.file
    dst.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "openvino":
        return _convert_openvino(name, src, dst, precision, quant, calibration, log), target
    return _convert_onnx(name, src, dst, precision, calibration, log), target
