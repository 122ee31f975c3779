"""Run an exported graph on OpenVINO or ONNX Runtime behind one call signature.

As apple/ml-stable-diffusion's runtime wrapper does, every call is checked against the inputs
the manifest declares (names, rank, static sizes) and fed in the declared dtypes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from engine.errors import UserError
from engine.manifest import ComponentEntry

BACKENDS = ("openvino", "onnx")


class Graph:
    """One compiled component: `graph(**inputs)` gives its first output, `graph.run` all of them."""

    def __init__(self, name: str, entry: ComponentEntry, run: Callable[[dict], dict[str, np.ndarray]]):
        self.name = name
        self.entry = entry
        self._run = run
        self.calls = 0

    def run(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        """All outputs by name."""
        self.calls += 1
        return self._run(self._checked(feeds))

    def __call__(self, **feeds: np.ndarray) -> np.ndarray:
        return next(iter(self.run(**feeds).values()))

    def _checked(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        declared = self.entry.inputs
        if set(feeds) != set(declared):
            raise ValueError(f"{self.name}: inputs {sorted(feeds)} != model's {sorted(declared)}")
        out = {}
        for key, value in feeds.items():
            spec = declared[key]
            value = np.ascontiguousarray(value, dtype=spec["dtype"])
            _check_shape(self.name, key, value.shape, spec["shape"])
            out[key] = value
        return out


def _check_shape(graph: str, name: str, shape: tuple, declared: list) -> None:
    static_ok = all(isinstance(d, str) or d == s for s, d in zip(shape, declared))
    if len(shape) != len(declared) or not static_ok:
        raise UserError(
            f"{graph} input {name} has shape {tuple(shape)}, but the exported model takes "
            f"{tuple(declared)}; re-export for this size/batch"
        )


def _ov_precision_hint(precision: str) -> dict[str, str]:
    # OpenVINO on AMX/AVX512-BF16 CPUs infers in bf16 by default even from an fp32 IR.
    return {"INFERENCE_PRECISION_HINT": "f32"} if precision == "fp32" else {}


def load_openvino(path: Path, name: str, entry: ComponentEntry, precision: str) -> Graph:
    """Compile an IR for the CPU; fp32 models keep fp32 inference precision."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(path), "CPU", _ov_precision_hint(precision))
    request = compiled.create_infer_request()
    outputs = {name: compiled.output(name) for name in entry.outputs}

    def run(feeds: dict) -> dict[str, np.ndarray]:
        result = request.infer(feeds)
        return {name: result[port].copy() for name, port in outputs.items()}

    return Graph(name, entry, run)


def load_onnxruntime(path: Path, name: str, entry: ComponentEntry) -> Graph:
    """Open an ONNX Runtime CPU session for one graph."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = list(entry.outputs)

    def run(feeds: dict) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, feeds)))

    return Graph(name, entry, run)


def _short_reason(exc: Exception) -> str:
    """The informative line of a backend's multi-line error (not its source-location lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return (useful or lines or [type(exc).__name__])[-1]


def load_graph(folder: Path, name: str, entry: ComponentEntry, fmt: str, precision: str) -> Graph:
    """Load component `name` of an exported folder with the backend its format calls for."""
    loaders = {
        "openvino": lambda: load_openvino(folder / entry.file, name, entry, precision),
        "onnx": lambda: load_onnxruntime(folder / entry.file, name, entry),
    }
    if fmt not in loaders:
        raise UserError(f"unknown backend {fmt!r}; choose one of {', '.join(BACKENDS)}")
    try:
        return loaders[fmt]()
    except Exception as exc:  # any backend failure to read a file means a corrupt model folder
        raise UserError(f"cannot load {name} from {folder}: {_short_reason(exc)}") from None
