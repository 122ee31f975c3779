"""fp16 and int8 versions of an fp32 ONNX component, for ONNX Runtime's CPU provider.

fp16 is onnxruntime.transformers' Stable Diffusion recipe (float16.convert_float_to_float16 with
its default op block list) with float32 graph I/O, plus one fix: the sinusoidal timestep/size
embeddings (Sin/Cos and all they depend on) stay fp32, since t*freq reaches ~1000 rad where fp16
steps by 0.5 (tiny UNet at t=981.7: 77.8 dB instead of 60.0). On x86 ORT's CPU provider has no
fp16 Conv/MatMul kernels and wraps them in Casts, so fp16 is only smaller, not faster (tiny UNet,
16x16 latents, 1 thread: 18.6 ms vs 15.2 ms fp32; weights half size).

int8 follows onnxruntime.quantization's CPU guidance (quantize_static docstring), in two passes:
first, given calibration feeds, static QDQ Conv (uint8 activations, per-channel int8 weights,
reduce_range against pre-VNNI saturation) that ORT fuses to QLinearConv; then dynamic 8-bit
MatMul and Gemm weights as uint8 (quantize_dynamic's graph, written by export/onnx_dynamic_int8.py
with a third of its memory): u8u8 cannot saturate on any x86, and measured as accurate and fast as s8 here.
Attention/FF MatMuls stay dynamic rather than static: runtime scales follow each call's range.
Without calibration convolutions stay fp32: dynamic ConvInteger ran 9x slower than fp32 Conv.
Tiny UNet (16x16 latents, 1 thread): 12.5 ms vs 18.7 ms fp32, 1.4 MB vs 3.4 MB, 33-42 dB on held-out
feeds; quant_pre_process and per-tensor conv weights measured no better, so they are not used.
Calibration is ours, not quantize_static's: its calibrator holds the loaded graph, a second copy
for the augmented graph and an inference session at once (three fp32 models: the real-size SDXL
UNet was killed at 24 GiB). Ours adds ORT's ReduceMin/ReduceMax outputs to a weightless copy of
the graph that shares the weight file, runs one session, frees it, and hands the per-tensor
ranges to quantize_static through its calibration cache (onnxruntime >= 1.27), so one model is
in memory at a time. ORT's tools leave a transient "<name>-inferred.onnx" beside onnx_in.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

LARGE_BYTES = int(1.8 * 2**30)
SINUSOID_OPS = ("Sin", "Cos")
STATIC_OPS = ["Conv"]
ORT_HINTS = ("pre-process",)


def convert_fp16(onnx_in: Path, onnx_out: Path) -> list[Path]:
    """fp16 weights and compute with float32 graph inputs/outputs (onnxruntime.transformers.float16)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    model = _load_with_shapes(onnx_in)
    model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True,
                                     op_block_list=DEFAULT_OP_BLOCK_LIST, node_block_list=_sinusoid_nodes(model))
    _tidy(model)
    return _save(model, onnx_out)


def quantize_int8(onnx_in: Path, onnx_out: Path, calibration: list[dict[str, np.ndarray]] | None = None,
                  log: Callable[[str], None] = print) -> list[Path]:
    """ORT int8: static QDQ Conv calibrated on `calibration` (if given), then dynamic MatMul/Gemm weights."""
    from sdcpu.export.onnx_dynamic_int8 import quantize_matmul_weights

    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    with _workdir(onnx_out) as tmp:
        source = onnx_in
        if calibration:
            log(f"    static int8 {'/'.join(STATIC_OPS)} calibrated on {len(calibration)} feeds")
            large = _model_bytes(onnx_in) > LARGE_BYTES
            source = _quantize_static(source, tmp / "static" / onnx_out.name, calibration, large)
            gc.collect()
        model = _load_with_shapes(source)
        log(f"    dynamic int8 weights in {quantize_matmul_weights(model)} MatMul/Gemm ops")
        return _save(model, onnx_out)


def _load_with_shapes(path: Path) -> onnx.ModelProto:
    """The model with inferred shapes (ORT's fusions, e.g. SkipLayerNormalization, need them), then its weights."""
    model = onnx.shape_inference.infer_shapes(onnx.load(path, load_external_data=False))
    onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    return model


def _quantize_static(source: Path, target: Path, calibration: list[dict[str, np.ndarray]], large: bool) -> Path:
    """QDQ Conv, u8 activations and per-channel s8 weights (quantize_static's CPU guidance), on our ranges."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, save_tensors_data

    target.parent.mkdir()
    cache = target.parent / "ranges.json"
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, activation_ranges(source, calibration)), cache)
    gc.collect()
    with _quiet_ort_hints():
        quantize_static(source, target, None, quant_format=QuantFormat.QDQ, op_types_to_quantize=STATIC_OPS,
                        per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, use_external_data_format=large, calibration_cache_path=cache)
    return target


def activation_ranges(source: Path, calibration: list[dict[str, np.ndarray]],
                      op_types: list[str] = STATIC_OPS) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Min and max over the feeds of every non-constant input and output of `op_types` (ORT's MinMax calibration)."""
    import onnxruntime as ort

    model = onnx.load(source, load_external_data=False)
    constants = {tensor.name for tensor in model.graph.initializer}
    tensors = sorted({name for node in model.graph.node if node.op_type in op_types
                      for name in (*node.input, *node.output) if name and name not in constants})
    names = [f"{tensor}/{reduce}" for tensor in tensors for reduce in ("ReduceMin", "ReduceMax")]
    for name in names:
        tensor, reduce = name.rsplit("/", 1)
        model.graph.node.append(onnx.helper.make_node(reduce, [tensor], [name], keepdims=0))
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, []))
    augmented = source.with_name(f".{source.stem}.ranges-{os.getpid()}.onnx")
    onnx.save_model(model, augmented)
    del model
    try:
        session = ort.InferenceSession(str(augmented), providers=["CPUExecutionProvider"])
        lows, highs = np.full(len(tensors), np.inf, np.float32), np.full(len(tensors), -np.inf, np.float32)
        for feeds in calibration:
            values = np.array(session.run(names, feeds), dtype=np.float32).reshape(len(tensors), 2)
            lows, highs = np.fmin(lows, values[:, 0]), np.fmax(highs, values[:, 1])
    finally:
        session = None
        augmented.unlink(missing_ok=True)
    return {tensor: (lows[i:i + 1], highs[i:i + 1]) for i, tensor in enumerate(tensors)}


def _sinusoid_nodes(model: onnx.ModelProto) -> list[str]:
    """Sin/Cos nodes and every node they depend on (the timestep and size-id embeddings' arguments)."""
    producer = {name: node for node in model.graph.node for name in node.output}
    chosen, pending = {}, [n for n in model.graph.node if n.op_type in SINUSOID_OPS]
    while pending:
        node = pending.pop()
        if node.name not in chosen:
            chosen[node.name] = node
            pending.extend(producer[name] for name in node.input if name in producer)
    return list(chosen)


def _tidy(model: onnx.ModelProto) -> None:
    """Fix the converter's output: one of each repeated Cast, exact fp32 paths, no dead nodes or stale value_info."""
    nodes = list({node.SerializeToString(): node for node in model.graph.node}.values())
    producer = {name: node for node in nodes for name in node.output}
    for node in nodes:
        source = producer.get(node.input[0]) if _cast_to(node) == onnx.TensorProto.FLOAT else None
        if source is not None and _cast_to(source) == onnx.TensorProto.FLOAT16:
            node.input[0] = source.input[0]
    nodes = _sorted_live(nodes, producer, [o.name for o in model.graph.output])
    kept = [onnx.NodeProto.FromString(node.SerializeToString()) for node in nodes]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    del model.graph.value_info[:]


def _sorted_live(nodes: list[onnx.NodeProto], producer: dict, outputs: list[str]) -> list[onnx.NodeProto]:
    """The nodes the graph outputs depend on, producers before consumers."""
    order, done, stack = [], set(), [(producer[name], False) for name in outputs if name in producer]
    while stack:
        node, expanded = stack.pop()
        if id(node) in done:
            continue
        if expanded:
            done.add(id(node))
            order.append(node)
            continue
        stack.append((node, True))
        stack.extend((producer[name], False) for name in node.input if name in producer)
    return order


def _cast_to(node: onnx.NodeProto) -> int | None:
    if node.op_type != "Cast":
        return None
    return next(attr.i for attr in node.attribute if attr.name == "to")


def _model_bytes(path: Path) -> int:
    """Size of the .onnx file plus its external data files."""
    return sum(p.stat().st_size for p in _model_files(path))


def _model_files(path: Path) -> list[Path]:
    """The .onnx file and the external data files its initializers and Constants point to."""
    graph = onnx.load(path, load_external_data=False).graph
    tensors = [*graph.initializer, *(attr.t for node in graph.node for attr in node.attribute if attr.HasField("t"))]
    locations = {entry.value for tensor in tensors for entry in tensor.external_data if entry.key == "location"}
    return [path] + [path.parent / location for location in sorted(locations)]


@contextmanager
def _quiet_ort_hints() -> Iterator[None]:
    """Hide ORT's advice to pre-process the graph: we do not, deliberately (see the module docstring)."""
    def keep(record: logging.LogRecord) -> bool:
        return not any(hint in record.getMessage() for hint in ORT_HINTS)

    logging.getLogger().addFilter(keep)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(keep)


@contextmanager
def _workdir(onnx_out: Path) -> Iterator[Path]:
    """A scratch folder beside onnx_out, also used as tempfile's default while ORT's quantizers run."""
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    folder, previous = Path(tempfile.mkdtemp(prefix=".quantize-", dir=onnx_out.parent)), tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(folder, ignore_errors=True)


def _clear(onnx_out: Path) -> None:
    """Remove a previous result: onnx appends external data to an existing file."""
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    for path in (onnx_out, onnx_out.with_name(onnx_out.name + ".data")):
        path.unlink(missing_ok=True)


def _save(model: onnx.ModelProto, onnx_out: Path) -> list[Path]:
    """One file, or weights in onnx_out.name + '.data' when past protobuf's 2 GB limit."""
    _clear(onnx_out)
    weights = sum(t.ByteSize() for t in model.graph.initializer)
    if weights <= LARGE_BYTES:
        onnx.save_model(model, onnx_out)
        return [onnx_out]
    data = onnx_out.with_name(onnx_out.name + ".data")
    onnx.save_model(model, onnx_out, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    return [onnx_out, data]
