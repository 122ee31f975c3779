"""Run an exported graph on OpenVINO or ONNX Runtime behind one call signature.

As apple/ml-stable-diffusion's runtime wrapper does, every call is checked against the inputs
the manifest declares (names, rank, static sizes) and fed in the declared dtypes; outputs come
back as float32 whatever precision the graph computes in.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Callable

import numpy as np

from sdcpu.engine.compile_cache import Log, compile_through_cache
from sdcpu.engine.errors import UserError
from sdcpu.engine.manifest import ComponentEntry

BACKENDS = ("openvino", "onnx")
INFERENCE_PRECISIONS = ("auto", "f32", "bf16")
Runner = Callable[[dict], dict[str, np.ndarray]]


def default_cache_dir() -> Path:
    """Where OpenVINO keeps compiled models: $SDCPU_CACHE_DIR, else ~/.cache/sdcpu/openvino."""
    if os.environ.get("SDCPU_CACHE_DIR"):
        return Path(os.environ["SDCPU_CACHE_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sdcpu" / "openvino"


class Graph:
    """One compiled component: `graph(**inputs)` gives its first output, `graph.run` all of them."""

    def __init__(self, name: str, entry: ComponentEntry, run: Runner,
                 reshape: Callable[[dict[str, tuple]], Runner] | None = None, properties: dict | None = None):
        self.name = name
        self.entry = entry
        self._run = run
        self._reshape = reshape
        self.properties = properties or {}
        self.calls = 0

    def run(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        """All outputs by name, as float32; NaN or Inf in one is an error naming this graph."""
        self.calls += 1
        outputs = self._run(self._checked(feeds))
        outputs = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in outputs.items()}
        for key, value in outputs.items():
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise UserError(self._non_finite_message(key, feeds))
        return outputs

    def _non_finite_message(self, output: str, feeds: dict[str, np.ndarray]) -> str:
        bad_inputs = [k for k, v in feeds.items() if np.asarray(v).dtype.kind == "f" and not np.isfinite(v).all()]
        if bad_inputs:
            return f"{self.name} was given NaN/Inf in {', '.join(sorted(bad_inputs))}; no image was written"
        return (f"{self.name} produced NaN/Inf in its output {output!r} from finite inputs; no image was written "
                "(a broken build or corrupt weights; retry with --no-compile-cache, or re-export the model)")

    def __call__(self, **feeds: np.ndarray) -> np.ndarray:
        return next(iter(self.run(**feeds).values()))

    def static_mismatches(self, shapes: dict[str, tuple]) -> dict[str, tuple]:
        """The inputs whose declared static shape differs from the one a request needs."""
        declared = self.entry.inputs
        return {k: tuple(v) for k, v in shapes.items() if k in declared and not _fits(v, declared[k]["shape"])}

    def reshape(self, shapes: dict[str, tuple]) -> None:
        """Recompile for new static input shapes (OpenVINO); other backends cannot."""
        if self._reshape is None:
            raise UserError(f"{self.name}: this backend cannot reshape a static graph")
        self._run = self._reshape(shapes)
        self.entry = copy.deepcopy(self.entry)
        for key, shape in shapes.items():
            self.entry.inputs[key]["shape"] = list(shape)

    def _checked(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        declared = self.entry.inputs
        if set(feeds) != set(declared):
            raise ValueError(f"{self.name}: inputs {sorted(feeds)} != model's {sorted(declared)}")
        out = {}
        for key, value in feeds.items():
            spec = declared[key]
            value = np.ascontiguousarray(value, dtype=spec["dtype"])
            if not _fits(value.shape, spec["shape"]):
                raise UserError(
                    f"{self.name} input {key} has shape {tuple(value.shape)}, but the exported model takes "
                    f"{tuple(spec['shape'])}; re-export for this size/batch"
                )
            out[key] = value
        return out


def _fits(shape, declared: list) -> bool:
    return len(shape) == len(declared) and all(isinstance(d, str) or d == s for s, d in zip(shape, declared))


def openvino_config(precision: str, inference_precision: str | None = None) -> dict:
    """fp32 models infer in f32 (OpenVINO on AMX/AVX512-BF16 CPUs picks bf16 by default) unless told."""
    explicit = inference_precision not in (None, "auto")
    hint = inference_precision if explicit else ("f32" if precision == "fp32" else None)
    return {"INFERENCE_PRECISION_HINT": hint} if hint else {}


def check_ir_header(path: Path) -> None:
    """Refuse a file that is not OpenVINO IR before OpenVINO tries its other frontends on it (and logs noise)."""
    with open(path, "rb") as file:
        head = file.read(4096).lstrip()
    if not (head.startswith(b"<?xml") or head.startswith(b"<net")) or b"<net" not in head:
        raise ValueError(f"{path.name} is not an OpenVINO IR file")


def load_openvino(folder: Path, name: str, entry: ComponentEntry, config: dict,
                  cache_dir: Path | None = None, log: Log | None = None) -> Graph:
    """Compile an IR for the CPU, through this build's own compile-cache folder when `cache_dir` is given."""
    import openvino as ov

    core = ov.Core()
    path = folder / entry.file
    graph_files = [folder / file for file in entry.files]
    check_ir_header(path)

    def compile_model(model, shapes: dict | None):
        if cache_dir is None:
            return core.compile_model(model, "CPU", config)
        return compile_through_cache(cache_dir, name, graph_files, config, shapes,
                                     lambda properties: core.compile_model(model, "CPU", properties), log)

    def runner(compiled) -> Runner:
        request = compiled.create_infer_request()
        ports = {out: compiled.output(out) for out in entry.outputs}

        def run(feeds: dict) -> dict[str, np.ndarray]:
            result = request.infer(feeds)
            return {out: result[port].copy() for out, port in ports.items()}

        return run

    def reshape(shapes: dict[str, tuple]) -> Runner:
        model = core.read_model(str(path))
        model.reshape({key: ov.PartialShape(list(shape)) for key, shape in shapes.items()})
        return runner(compile_model(model, shapes))

    compiled = compile_model(str(path), None)
    return Graph(name, entry, runner(compiled), reshape, openvino_properties(compiled))


def openvino_properties(compiled) -> dict:
    """The settings a compiled model actually runs with: precision, threads, streams, performance hint."""
    return {
        "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
        "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
        "streams": int(compiled.get_property("NUM_STREAMS")),
        "performance_hint": str(compiled.get_property("PERFORMANCE_HINT")),
    }


def load_onnxruntime(path: Path, name: str, entry: ComponentEntry) -> Graph:
    """Open an ONNX Runtime CPU session for one graph."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = list(entry.outputs)
    properties = {"inference_precision": "as exported", "threads": options.intra_op_num_threads or "all cores",
                  "streams": 1, "performance_hint": "none"}
    return Graph(name, entry, lambda feeds: dict(zip(names, session.run(names, feeds))), properties=properties)


def _short_reason(exc: Exception) -> str:
    """The informative line of a backend's multi-line error (not its source-location lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return (useful or lines or [type(exc).__name__])[-1]


def check_inference_precision(value: str | None, fmt: str) -> None:
    """Only OpenVINO takes an inference precision hint; ONNX Runtime computes in the exported precision."""
    if value in (None, "auto"):
        return
    if value not in INFERENCE_PRECISIONS:
        raise UserError(f"unknown inference precision {value!r}; choose one of {', '.join(INFERENCE_PRECISIONS)}")
    if fmt != "openvino":
        raise UserError(f"--inference-precision {value} needs an OpenVINO model (ONNX Runtime computes in the "
                        "precision the model was exported in)")


def load_graph(folder: Path, name: str, entry: ComponentEntry, fmt: str, precision: str,
               cache_dir: Path | None = None, inference_precision: str | None = None, log: Log | None = None) -> Graph:
    """Load component `name` of an exported folder with the backend its format calls for."""
    loaders = {
        "openvino": lambda: load_openvino(
            folder, name, entry, openvino_config(precision, inference_precision), cache_dir, log),
        "onnx": lambda: load_onnxruntime(folder / entry.file, name, entry),
    }
    if fmt not in loaders:
        raise UserError(f"unknown backend {fmt!r}; choose one of {', '.join(BACKENDS)}")
    check_inference_precision(inference_precision, fmt)
    try:
        return loaders[fmt]()
    except Exception as exc:  # any backend failure to read a file means a corrupt model folder
        raise UserError(f"cannot load {name} from {folder}: {_short_reason(exc)}") from None
