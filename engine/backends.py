"""Run an exported graph on OpenVINO or ONNX Runtime behind one call signature.

As apple/ml-stable-diffusion's runtime wrapper does, every call is checked against the inputs
the manifest declares (names, rank, static sizes) and fed in the declared dtypes; outputs come
back as float32 whatever precision the graph computes in.
"""

from __future__ import annotations

import copy
import os
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from sdcpu.engine.compile_cache import Log, compile_through_cache, short_reason
from sdcpu.engine.errors import UserError
from sdcpu.engine.manifest import ComponentEntry
from sdcpu.engine.mapped_files import MappedFile

BACKENDS = ("openvino", "onnx")
INFERENCE_PRECISIONS = ("auto", "f32", "bf16")
Runner = Callable[[dict], dict[str, np.ndarray]]
DYNAMIC_NAMES = ("batch", "dim1", "dim2", "dim3", "dim4")  # how a -1 (dynamic) dimension is declared


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
        """All outputs by name, as float32; NaN or Inf in one is an error naming this graph.

        A graph compiled for N rows runs a call of k x N rows as k calls (a batch of CFG pairs, say)."""
        rows = {len(v) for v in feeds.values() if np.ndim(v)}
        step = self.static_batch
        if step and len(rows) == 1 and (count := rows.pop()) > step and count % step == 0:
            parts = [self.run(**{k: v[i:i + step] for k, v in feeds.items()}) for i in range(0, count, step)]
            return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
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

    @property
    def mapped_files(self) -> list:
        """The files this build reads its weights from through our own mappings (engine/mapped_files.py)."""
        return list(getattr(self._run, "mappings", []))

    def output_shape(self, output: str) -> tuple | None:
        """The shape of one output of the compiled graph (-1 for a dynamic dimension); None when unknown."""
        compiled = getattr(self._run, "compiled", None)
        if compiled is None:
            return None
        shape = compiled.output(output).get_partial_shape()
        if shape.rank.is_dynamic or any(d.is_dynamic and i for i, d in enumerate(shape)):
            return None
        return tuple(-1 if d.is_dynamic else d.get_length() for d in shape)

    @property
    def static_batch(self) -> int | None:
        """The batch size the graph was compiled for, or None when its batch is dynamic."""
        first = next(iter(self.entry.inputs.values()))["shape"][0]
        return None if isinstance(first, str) else int(first)

    def static_mismatches(self, shapes: dict[str, tuple]) -> dict[str, tuple]:
        """The inputs whose declared static shape differs from the one a request needs (a graph compiled for
        N rows takes any multiple of N, run N at a time)."""
        declared = self.entry.inputs
        return {k: tuple(v) for k, v in self.per_call(shapes).items()
                if k in declared and not _fits(v, declared[k]["shape"])}

    def per_call(self, shapes: dict[str, tuple]) -> dict[str, tuple]:
        """`shapes` as each call sees them: rows that are a multiple of the compiled batch run that many at a time."""
        step = self.static_batch
        if step and all(v[0] % step == 0 for v in shapes.values()):
            return {k: (step, *v[1:]) for k, v in shapes.items()}
        return shapes

    def reshape(self, shapes: dict[str, tuple]) -> None:
        """Recompile for new static input shapes (OpenVINO); other backends cannot."""
        if self._reshape is None:
            raise UserError(f"{self.name}: this backend cannot reshape a static graph")
        self._run = None  # the old build goes before the new one is made: one build in memory at a time
        self._run = self._reshape(shapes)
        self.set_static(shapes)

    def set_static(self, shapes: dict[str, tuple]) -> None:
        """Declare the static input shapes this graph now takes (its entry is copied, not changed in place)."""
        self.entry = copy.deepcopy(self.entry)
        for key, shape in shapes.items():
            self.entry.inputs[key]["shape"] = [DYNAMIC_NAMES[i] if d == -1 else d for i, d in enumerate(shape)]

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


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes bf16 natively here (AVX512-BF16 or AMX)."""
    import openvino as ov

    try:
        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except RuntimeError:
        return False


def default_inference_precision() -> str:
    """What `auto` means: $SDCPU_INFERENCE_PRECISION if set, else bf16 on CPUs that compute it natively, else f32."""
    pinned = os.environ.get("SDCPU_INFERENCE_PRECISION", "").strip().lower()
    if pinned and pinned != "auto":
        if pinned not in INFERENCE_PRECISIONS:
            raise UserError(f"SDCPU_INFERENCE_PRECISION={pinned!r} is not one of {', '.join(INFERENCE_PRECISIONS)}")
        return pinned
    return "bf16" if cpu_has_bf16() else "f32"


def exact_precision(fmt: str) -> str | None:
    """The inference precision that computes a graph exactly as exported: f32 on OpenVINO; ONNX Runtime takes none."""
    return "f32" if fmt == "openvino" else None


def openvino_config(inference_precision: str | None = None, threads: int | None = None) -> dict:
    """The compute precision as OpenVINO's hint: the one asked for, or `default_inference_precision()`
    (whatever the export's weights: fp16 and int8 exports compute in the same type as fp32 ones); `threads`
    caps the cores one compiled graph uses (several worker processes on one machine), else all of them."""
    explicit = inference_precision not in (None, "auto")
    config = {"INFERENCE_PRECISION_HINT": inference_precision if explicit else default_inference_precision()}
    return config | ({"INFERENCE_NUM_THREADS": threads} if threads else {})


def check_ir_header(path: Path) -> None:
    """Refuse a file that is not OpenVINO IR before OpenVINO tries its other frontends on it (and logs noise)."""
    with open(path, "rb") as file:
        head = file.read(4096).lstrip()
    if not (head.startswith(b"<?xml") or head.startswith(b"<net")) or b"<net" not in head:
        raise ValueError(f"{path.name} is not an OpenVINO IR file")


def load_openvino(folder: Path, name: str, entry: ComponentEntry, config: dict,
                  cache_dir: Path | None = None, log: Log | None = None,
                  shapes: dict[str, tuple] | None = None) -> Graph:
    """Compile an IR for the CPU (reshaped to static `shapes` when given), through the compile cache when
    `cache_dir` is given: a warm load imports the cached build without reading the IR.

    The weights are read from files we map ourselves (engine/mapped_files.py), so once OpenVINO has
    made its own packed copy the mapped pages are given back: the IR or blob is not counted twice.
    """
    import openvino as ov

    core = ov.Core()
    path = folder / entry.file
    graph_files = [folder / file for file in entry.files]
    check_ir_header(path)

    def build(static: dict | None) -> Runner:
        mappings: list[MappedFile] = []

        def compile_ir(properties: dict):
            weights = MappedFile.open(path.with_suffix(".bin"))
            if weights is None:
                model = core.read_model(str(path))
            else:
                mappings.append(weights)
                model = core.read_model(path.read_text(encoding="utf-8"), ov.Tensor(weights.array, shared_memory=True))
            if static:
                model.reshape({key: ov.PartialShape(list(shape)) for key, shape in static.items()})
            return core.compile_model(model, "CPU", properties)

        def import_blob(blob: Path, properties: dict):
            mapped = MappedFile.open(blob)
            if mapped is None:
                raise ValueError(f"{blob.name} is empty")
            mappings.append(mapped)
            return core.import_model(ov.Tensor(mapped.array, shared_memory=True), "CPU", properties)

        if cache_dir is None:
            compiled = compile_ir(config)
        else:
            compiled = compile_through_cache(cache_dir, name, graph_files, config, static, compile_ir, import_blob, log)
        for mapping in mappings:
            mapping.page_out()
        return runner(compiled, mappings)

    def runner(compiled, mappings: list[MappedFile]) -> Runner:
        request = compiled.create_infer_request()
        ports = {out: compiled.output(out) for out in entry.outputs}
        first = [True]

        def run(feeds: dict) -> dict[str, np.ndarray]:
            result = request.infer(feeds)
            if first[0]:  # weights OpenVINO repacks on the first call: the mapped originals are idle from now on
                first[0] = False
                for mapping in mappings:
                    mapping.page_out()
            return {out: result[port].copy() for out, port in ports.items()}

        run.compiled, run.mappings = compiled, mappings
        return run

    run = build(shapes)
    graph = Graph(name, entry, run, build, openvino_properties(run.compiled))
    if shapes:
        graph.set_static(shapes)
    return graph


def openvino_properties(compiled) -> dict:
    """The settings a compiled model actually runs with: precision, threads, streams, performance hint."""
    return {
        "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
        "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
        "streams": int(compiled.get_property("NUM_STREAMS")),
        "performance_hint": str(compiled.get_property("PERFORMANCE_HINT")),
    }


def load_onnxruntime(path: Path, name: str, entry: ComponentEntry, threads: int | None = None) -> Graph:
    """Open an ONNX Runtime CPU session for one graph (on `threads` cores, else all of them)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = list(entry.outputs)
    properties = {"inference_precision": "as exported", "threads": options.intra_op_num_threads or "all cores",
                  "streams": 1, "performance_hint": "none"}
    return Graph(name, entry, lambda feeds: dict(zip(names, session.run(names, feeds))), properties=properties)


def check_inference_precision(value: str | None, fmt: str) -> None:
    """Only OpenVINO takes an inference precision hint; ONNX Runtime computes in the exported precision."""
    if value in (None, "auto"):
        return
    if value not in INFERENCE_PRECISIONS:
        raise UserError(f"unknown inference precision {value!r}; choose one of {', '.join(INFERENCE_PRECISIONS)}")
    if fmt != "openvino":
        raise UserError(f"--inference-precision {value} needs an OpenVINO model (ONNX Runtime computes in the "
                        "precision the model was exported in)")


def load_graph(folder: Path, name: str, entry: ComponentEntry, fmt: str,
               cache_dir: Path | None = None, inference_precision: str | None = None, log: Log | None = None,
               shapes: dict[str, tuple] | None = None, threads: int | None = None) -> Graph:
    """Load component `name` of an exported folder with the backend its format calls for.

    OpenVINO compiles it for static input `shapes` when given (ONNX Runtime graphs stay as exported);
    `threads` caps the cores it runs on."""
    config = openvino_config(inference_precision, threads) if fmt == "openvino" else {}  # a bad pin is its own error
    loaders = {
        "openvino": lambda: load_openvino(folder, name, entry, config, cache_dir, log, shapes),
        "onnx": lambda: load_onnxruntime(folder / entry.file, name, entry, threads),
    }
    if fmt not in loaders:
        raise UserError(f"unknown backend {fmt!r}; choose one of {', '.join(BACKENDS)}")
    check_inference_precision(inference_precision, fmt)
    try:
        return loaders[fmt]()
    except Exception as exc:  # any backend failure to read a file means a corrupt model folder
        raise UserError(f"cannot load {name} from {folder}: {short_reason(exc)}") from None
