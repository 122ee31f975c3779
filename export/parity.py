"""Export-time parity: each exported graph against its PyTorch module on the same inputs.

Following apple/ml-stable-diffusion, every component export ends with a PSNR check; an fp32
export below the threshold is an error, not a warning.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sdcpu.engine.backends import Graph
from sdcpu.engine.errors import UserError
from sdcpu.export.components import ComponentSpec

FP32_MIN_PSNR_DB = 60.0


def psnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Peak signal-to-noise ratio with the reference's value range as the peak."""
    rmse = float(np.sqrt(np.mean((reference.astype(np.float64) - test) ** 2)))
    peak = float(reference.max() - reference.min()) or 1.0
    return math.inf if rmse == 0 else 20.0 * math.log10(peak / rmse)


def torch_outputs(spec: ComponentSpec) -> list[list[np.ndarray]]:
    """The PyTorch module's outputs on each parity input, computed before the module is freed."""
    results = []
    for inputs in spec.parity_inputs:
        with torch.no_grad():
            out = spec.module(*inputs.values())
        results.append([o.numpy() for o in (out if isinstance(out, tuple) else (out,))])
    return results


def compare_component(spec: ComponentSpec, references: list[list[np.ndarray]], graph: Graph) -> dict[str, float]:
    """Worst max-abs error and PSNR of `graph` versus the torch references, over inputs and outputs."""
    worst_abs, worst_psnr = 0.0, math.inf
    for inputs, expected in zip(spec.parity_inputs, references):
        tests = graph.run(**{k: v.numpy() for k, v in inputs.items() if k in graph.entry.inputs})  # tracing drops unused inputs
        for reference, name in zip(expected, spec.outputs):
            worst_abs = max(worst_abs, float(np.max(np.abs(reference - tests[name]))))
            worst_psnr = min(worst_psnr, psnr_db(reference, tests[name]))
    return {"max_abs_error": worst_abs, "psnr_db": round(worst_psnr, 2) if math.isfinite(worst_psnr) else 999.0}


def require_fp32_parity(name: str, figures: dict[str, float]) -> None:
    """An fp32 graph that does not reproduce its torch module is a failed export."""
    if figures["psnr_db"] < FP32_MIN_PSNR_DB:
        raise UserError(
            f"{name}: exported graph disagrees with PyTorch (PSNR {figures['psnr_db']:.1f} dB < "
            f"{FP32_MIN_PSNR_DB:.0f} dB, max abs error {figures['max_abs_error']:.3g}); export aborted"
        )
