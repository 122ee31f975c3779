"""Dynamic int8 MatMul/Gemm weights for ONNX Runtime's CPU provider, rewritten in place.

The graph is the one onnxruntime.quantization.quantize_dynamic writes for op_types ["MatMul"]
with uint8 weights (its ONNXQuantizer, QOperator format): a Gemm with alpha = beta = 1, no transA
and a constant B becomes MatMul (+ Add of C); every MatMul whose B is a float constant gets a
DynamicQuantizeLinear on A (one per activation, shared), B quantized per tensor to uint8 by ORT's
own quant_utils.quantize_data, then MatMulInteger, Cast to float and a Mul by the product of the
two scales: the chain ORT fuses into DynamicQuantizeMatMul at load time.

We write the graph ourselves because quantize_dynamic deep-copies and reloads the whole model
while holding the original (three fp32 copies: the real-size SDXL UNet, 10 GB, was killed at
24 GiB). Here the weights are quantized in the loaded model and the fp32 ones dropped: one model
plus its int8 weights in memory.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Names = tuple[str, str, str]


def quantize_matmul_weights(model: onnx.ModelProto) -> int:
    """Rewrite every MatMul (and plain Gemm) with a constant float B as ORT's dynamic int8 chain; returns the count."""
    graph = model.graph
    _gemms_to_matmuls(graph)
    constants = {tensor.name: tensor for tensor in graph.initializer}
    activations: dict[str, Names] = {}
    weights: dict[str, Names] = {}
    new_tensors, nodes, count = [], [], 0
    for node in graph.node:
        weight = constants.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is None or weight.data_type != TensorProto.FLOAT:
            nodes.append(_copy(node))
            continue
        if node.input[0] not in activations:
            activations[node.input[0]] = _dynamic_quantize(node.input[0], nodes)
        if weight.name not in weights:
            weights[weight.name] = _quantize_weight(weight, new_tensors)
        nodes.extend(_integer_matmul(node, activations[node.input[0]], weights[weight.name]))
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_tensors)
    _drop_unused_constants(graph)
    return count


def _dynamic_quantize(name: str, nodes: list) -> Names:
    """DynamicQuantizeLinear of activation `name`: uint8 values, scale, zero point."""
    outputs = (f"{name}_quantized", f"{name}_quantized_scale", f"{name}_quantized_zero_point")
    nodes.append(helper.make_node("DynamicQuantizeLinear", [name], list(outputs), f"{name}_QuantizeLinear"))
    return outputs


def _quantize_weight(weight: TensorProto, new_tensors: list) -> Names:
    """Per-tensor asymmetric uint8 (quantize_dynamic's QUInt8 weights, no reduced range)."""
    from onnxruntime.quantization.quant_utils import quantize_data

    values = numpy_helper.to_array(weight)
    zero_point, scale, quantized = quantize_data(values.flatten(), TensorProto.UINT8, False)
    names = (f"{weight.name}_quantized", f"{weight.name}_scale", f"{weight.name}_zero_point")
    new_tensors += [
        numpy_helper.from_array(np.asarray(quantized, np.uint8).reshape(values.shape), names[0]),
        helper.make_tensor(names[1], TensorProto.FLOAT, [], np.reshape(scale, -1).tolist()),
        helper.make_tensor(names[2], TensorProto.UINT8, [], np.reshape(zero_point, -1).tolist()),
    ]
    return names


def _integer_matmul(node: onnx.NodeProto, activation: Names, weight: Names) -> list[onnx.NodeProto]:
    """MatMulInteger -> Cast -> Mul(scale_a * scale_b), ending in the MatMul's own output."""
    output, base = node.output[0], node.name or node.output[0]
    integer, as_float, scales = f"{output}_quantized", f"{output}_quantized_cast", f"{base}_quant_scales"
    return [
        helper.make_node("MatMulInteger", [activation[0], weight[0], activation[2], weight[2]], [integer],
                         f"{base}_quant"),
        helper.make_node("Cast", [integer], [as_float], f"{base}_quant_cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", [activation[1], weight[1]], [scales], f"{base}_quant_scales_mul"),
        helper.make_node("Mul", [as_float, scales], [output], f"{base}_quant_output_scale_mul"),
    ]


def _gemms_to_matmuls(graph: onnx.GraphProto) -> None:
    """Gemm(A, B, C) with alpha = beta = 1, no transA and a constant B -> MatMul(A, B or B^T) [+ Add C]."""
    constants = {tensor.name: tensor for tensor in graph.initializer}
    transposed: dict[str, str] = {}
    nodes = []
    for node in graph.node:
        attributes = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
        plain = (attributes.get("alpha", 1.0), attributes.get("beta", 1.0), attributes.get("transA", 0)) == (1, 1, 0)
        if node.op_type != "Gemm" or not plain or node.input[1] not in constants:
            nodes.append(_copy(node))
            continue
        weight = node.input[1]
        if attributes.get("transB", 0):
            if weight not in transposed:
                transposed[weight] = f"{weight}_transposed"
                values = numpy_helper.to_array(constants[weight]).T
                graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(values), transposed[weight]))
            weight = transposed[weight]
        base, biased = node.name or node.output[0], len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_MatMul" if biased else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product], f"{base}_MatMul"))
        if biased:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], f"{base}_Add"))
    del graph.node[:]
    graph.node.extend(nodes)


def _drop_unused_constants(graph: onnx.GraphProto) -> None:
    """Delete initializers no node or graph output reads (the replaced fp32 weights), in place."""
    used = {name for node in graph.node for name in node.input} | {value.name for value in graph.output}
    for index in reversed(range(len(graph.initializer))):
        if graph.initializer[index].name not in used:
            del graph.initializer[index]


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    """A detached copy, so the graph's node list can be cleared and refilled."""
    return onnx.NodeProto.FromString(node.SerializeToString())
