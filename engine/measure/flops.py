"""Multiply-accumulate work of an exported graph at concrete input shapes, counted op by op.

One code path for both formats: OpenVINO reads IR (.xml) and ONNX (.onnx) files alike, so the
graph is read (not compiled), reshaped to the call's shapes, and its ops walked in order. Counted:
Convolution and GroupConvolution, MatMul (ONNX Gemm arrives as MatMul) and fused
ScaledDotProductAttention; everything else (adds, norms, activations, softmax) is left out, as it
is a few percent of a UNet's work. FLOPs = 2 x MACs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

Shape = tuple[int, ...]


def conv_macs(inputs: list[Shape], output: Shape) -> int:
    """Convolution: every output element sums Cin x kernel products; weights are [Cout, Cin, *kernel]."""
    weights = inputs[1]
    return math.prod(output) * math.prod(weights[1:])


def group_conv_macs(inputs: list[Shape], output: Shape) -> int:
    """GroupConvolution: weights are [groups, Cout/groups, Cin/groups, *kernel]."""
    weights = inputs[1]
    return math.prod(output) * math.prod(weights[2:])


def matmul_macs(inputs: list[Shape], output: Shape, transpose_a: bool = False) -> int:
    """MatMul: every output element sums K products, K being A's last (transposed: second-last) dim."""
    a = inputs[0]
    k = a[-2] if transpose_a and len(a) > 1 else a[-1]
    return math.prod(output) * k


def attention_macs(inputs: list[Shape], output: Shape) -> int:
    """ScaledDotProductAttention: Q K^T ([.., L, E] x [.., S, E]) plus weights x V ([.., L, S] x [.., S, Ev])."""
    query, key = inputs[0], inputs[1]
    rows = math.prod(output[:-1])
    return rows * key[-2] * query[-1] + math.prod(output) * key[-2]


def _transpose_a(op) -> bool:
    return bool(op.get_attributes().get("transpose_a", False))


COUNTERS: dict[str, Callable] = {
    "Convolution": lambda op, ins, out: conv_macs(ins, out),
    "GroupConvolution": lambda op, ins, out: group_conv_macs(ins, out),
    "MatMul": lambda op, ins, out: matmul_macs(ins, out, _transpose_a(op)),
    "ScaledDotProductAttention": lambda op, ins, out: attention_macs(ins, out),
}


def static_shape(partial, where: str) -> Shape:
    """A fully known shape, or ValueError naming the op whose shape the inputs left open."""
    if partial.is_dynamic:
        raise ValueError(f"{where} has dynamic shape {partial}; give every graph input a concrete shape")
    return tuple(int(d) for d in partial.to_shape())


def count_macs_by_op(path: Path, shapes: dict[str, tuple]) -> dict[str, int]:
    """MACs per counted op type of the graph at `path` (.xml or .onnx) with inputs reshaped to `shapes`."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    model.reshape({name: ov.PartialShape(list(shape)) for name, shape in shapes.items()})
    totals: dict[str, int] = {}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in COUNTERS:
            continue
        where = f"{kind} {op.get_friendly_name()}"
        ins = [static_shape(op.get_input_partial_shape(i), where) for i in range(op.get_input_size())]
        out = static_shape(op.get_output_partial_shape(0), where)
        totals[kind] = totals.get(kind, 0) + COUNTERS[kind](op, ins, out)
    return totals


def count_flops(path: Path, shapes: dict[str, tuple]) -> int:
    """FLOPs (2 x MACs of the counted ops) of one call of the graph at `path` with these input shapes."""
    return 2 * sum(count_macs_by_op(path, shapes).values())
