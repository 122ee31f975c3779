"""`sdcpu bench` timing mode: every JSON field, the table, the chart, FLOPs against hand counts, bad options."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sdcpu.engine.cli.app import app
from sdcpu.engine.measure.bench_plot import COLOURS, SIZE
from sdcpu.engine.measure.bench_report import fit_totals
from sdcpu.engine.measure.flops import count_flops, count_macs_by_op
from sdcpu.engine.measure.latency import LatencyRow
from tests.test_cli import assert_user_error

runner = CliRunner()

TOP_KEYS = {"model", "format", "precision", "tiny_vae", "width", "height", "guidance", "runs", "warmup",
            "compile_cache", "sdcpu_version", "machine", "gemm_probe", "compile_s", "first_call_s", "warm_total_s", "memory",
            "unet_flops", "fits", "rows", "gemm_probe_openvino", "unet_vs_openvino_gemm", "runtime"}
RUNTIME_KEYS = {"inference_precision", "threads", "streams", "performance_hint"}
MACHINE_KEYS = {"cpu", "isa", "logical_cores", "openvino", "onnxruntime", "numpy", "python"}
GEMM_KEYS = {"label", "size", "repeats", "seconds_median", "gflops"}
MEMORY_KEYS = {"peak_rss_mib", "current_rss_mib"}
FLOPS_KEYS = {"per_call", "batch", "cfg", "by_op"}
OP_KEYS = {"Convolution", "GroupConvolution", "MatMul", "ScaledDotProductAttention"}
FIT_KEYS = {"sampler", "a_s", "b_s_per_step", "step_counts"}
ROW_KEYS = {"sampler", "steps", "runs", "warmup", "text_encoder", "step_median", "step_min", "step_p90", "step_max",
            "unet_calls", "unet_call_median", "denoise", "vae_decoder", "total_median", "first_call", "vae_encoder",
            "unet_flops_per_step", "unet_tflops"}


def unet_shapes(batch: int) -> dict[str, tuple]:
    """The tiny SD1.5 UNet's inputs at 64x64 (latent 8x8), as the pipeline feeds them."""
    return {"sample": (batch, 4, 8, 8), "timestep": (batch,), "encoder_hidden_states": (batch, 77, 32)}


@pytest.fixture(scope="module")
def bench_run(tiny_exports, tmp_path_factory):
    """One `sdcpu bench --steps 1,6 --runs 3` per format, with its output, JSON and chart.

    Five steps apart and medians of three: with 1,2 and one run, timing noise on a busy 2-core
    machine turned the fitted slope negative in 5 of 16 tries.
    """
    runs = {}
    for fmt in ("openvino", "onnx"):
        out = tmp_path_factory.mktemp(f"bench-{fmt}")
        args = ["bench", "--model", str(tiny_exports["sd15", fmt]), "--steps", "1,6", "--runs", "3",
                "--json", str(out / "bench.json"), "--plot", str(out / "bench.png")]
        result = runner.invoke(app, args)
        runs[fmt] = result, out / "bench.json", out / "bench.png"
    return runs


@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
def test_json_has_every_field(bench_run, fmt):
    result, json_path, _ = bench_run[fmt]
    assert result.exit_code == 0, result.output
    data = json.loads(json_path.read_text())
    assert set(data) == TOP_KEYS
    assert set(data["machine"]) == MACHINE_KEYS and set(data["gemm_probe"]) == GEMM_KEYS
    assert set(data["memory"]) == MEMORY_KEYS
    assert set(data["unet_flops"]) == FLOPS_KEYS and set(data["unet_flops"]["by_op"]) == OP_KEYS
    assert [set(fit) for fit in data["fits"]] == [FIT_KEYS]
    assert [set(row) for row in data["rows"]] == [ROW_KEYS, ROW_KEYS]
    assert (data["format"], data["precision"], data["width"], data["height"]) == (fmt, "fp32", 64, 64)
    assert (data["runs"], data["warmup"], data["guidance"]) == (3, 1, 7.5)
    assert [row["steps"] for row in data["rows"]] == [1, 6]
    assert data["gemm_probe"]["label"] == "numpy fp32 GEMM probe" and data["gemm_probe"]["gflops"] > 0
    assert set(data["gemm_probe_openvino"]) == GEMM_KEYS and data["gemm_probe_openvino"]["gflops"] > 0
    assert data["gemm_probe_openvino"]["label"] == "OpenVINO bf16 GEMM probe"
    best = max(row["unet_tflops"] for row in data["rows"])
    assert data["unet_vs_openvino_gemm"] == pytest.approx(best * 1e3 / data["gemm_probe_openvino"]["gflops"])
    assert data["memory"]["peak_rss_mib"] >= data["memory"]["current_rss_mib"] * 0.99 > 0
    assert data["compile_s"] > 0 and data["first_call_s"] > 0 and data["warm_total_s"] > 0
    assert set(data["runtime"]) == {"text_encoder", "unet", "vae_decoder"}
    assert all(set(graph) == RUNTIME_KEYS for graph in data["runtime"].values())
    expected = "f32" if fmt == "openvino" else "as exported"
    assert data["runtime"]["unet"]["inference_precision"] == expected


@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
def test_fit_and_flops_are_consistent(bench_run, tiny_exports, fmt):
    _, json_path, _ = bench_run[fmt]
    data = json.loads(json_path.read_text())
    fit = data["fits"][0]
    assert fit["sampler"] == "pndm" and fit["step_counts"] == [1, 6]
    assert fit["b_s_per_step"] > 0 and fit["a_s"] is not None
    unet_file = tiny_exports["sd15", fmt] / ("unet/model.xml" if fmt == "openvino" else "unet/model.onnx")
    flops = data["unet_flops"]
    assert (flops["batch"], flops["cfg"]) == (2, True)
    assert flops["per_call"] == count_flops(unet_file, unet_shapes(2)) == sum(flops["by_op"].values()) > 0
    for row in data["rows"]:
        assert row["unet_calls"] >= row["steps"]
        assert row["unet_flops_per_step"] == pytest.approx(flops["per_call"] * row["unet_calls"] / row["steps"])
        assert row["unet_tflops"] == pytest.approx(flops["per_call"] / row["unet_call_median"] / 1e12)
        assert row["step_min"] <= row["step_median"] <= row["step_p90"] <= row["step_max"]


def test_both_formats_count_the_same_unet_work(tiny_exports):
    """IR attention arrives fused (ScaledDotProductAttention), ONNX attention as MatMuls: the same total."""
    ir = count_macs_by_op(tiny_exports["sd15", "openvino"] / "unet/model.xml", unet_shapes(2))
    onnx = count_macs_by_op(tiny_exports["sd15", "onnx"] / "unet/model.onnx", unet_shapes(2))
    assert sum(ir.values()) == sum(onnx.values())
    assert ir["Convolution"] == onnx["Convolution"]


def test_table_and_plot(bench_run):
    result, _, plot_path = bench_run["openvino"]
    assert "s/step" in result.output and "UNet s/step median" in result.output
    assert "total ≈ " in result.output and " s/step (pndm, steps 1,6)" in result.output
    assert "numpy fp32 GEMM probe" in result.output and "peak RSS" in result.output
    with Image.open(plot_path) as image:
        assert image.format == "PNG" and image.size == SIZE
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    for colour in COLOURS:
        assert (pixels == colour).all(axis=1).sum() > 20, f"no line drawn in {colour}"


def test_no_warmup_times_the_first_call(tiny_exports, tmp_path):
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "--model", str(tiny_exports["sd15", "openvino"]), "--steps", "2",
                                 "--runs", "1", "--warmup", "0", "--schedulers", "euler", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert data["warmup"] == row["warmup"] == 0 and row["first_call"] == row["total_median"] == data["first_call_s"]
    assert data["fits"] == [{"sampler": "euler", "a_s": None, "b_s_per_step": row["step_median"], "step_counts": [2]}]
    assert "total ≈ ? s + " in result.output


def test_one_step_count_fits_no_intercept():
    def row(steps, step_median, total):
        return LatencyRow(sampler="euler", steps=steps, runs=1, warmup=1, text_encoder=0.0, step_median=step_median,
                          step_min=0.0, step_p90=0.0, step_max=0.0, unet_calls=steps, unet_call_median=0.0,
                          denoise=0.0, vae_decoder=0.0, total_median=total, first_call=0.0)

    single = fit_totals([row(4, 0.25, 1.5)])
    assert (single[0].a_s, single[0].b_s_per_step) == (None, 0.25)
    fit = fit_totals([row(1, 0.0, 0.75), row(2, 0.0, 1.0), row(4, 0.0, 1.5)])[0]
    assert (round(fit.a_s, 9), round(fit.b_s_per_step, 9)) == (0.5, 0.25)


def test_openvino_graph_matches_hand_count(tmp_path):
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([-1, 3, 8, 8], np.float32, name="x")
    conv = ops.convolution(x, ops.constant(np.ones((4, 3, 3, 3), np.float32)), [1, 1], [1, 1], [1, 1], [1, 1])
    rows = ops.reshape(conv, ops.constant(np.array([0, 4, 64], np.int64)), special_zero=True)
    proj = ops.matmul(rows, ops.constant(np.ones((4, 16), np.float32)), transpose_a=True, transpose_b=False)
    attn = ops.scaled_dot_product_attention(proj, proj, proj, causal=False)
    path = tmp_path / "tiny.xml"
    ov.save_model(ov.Model([attn], [x], "tiny"), str(path))
    # batch 2: conv 2*4*8*8 outputs x 3*3*3; matmul [2,64,4]@[4,16]; attention 2 x (64x64x16) per product
    assert count_macs_by_op(path, {"x": (2, 3, 8, 8)}) == {
        "Convolution": 13824, "MatMul": 8192, "ScaledDotProductAttention": 262144}
    assert count_flops(path, {"x": (2, 3, 8, 8)}) == 2 * (13824 + 8192 + 262144)


def test_onnx_graph_matches_hand_count(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name, array):
        return numpy_helper.from_array(array, name)

    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "shape"], ["r"]),
        helper.make_node("MatMul", ["r", "m"], ["p"]),
        helper.make_node("Reshape", ["p", "flat"], ["f"]),
        helper.make_node("Gemm", ["f", "g"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [const("w", np.ones((4, 3, 3, 3), np.float32)), const("shape", np.array([0, 64, 4], np.int64)),
         const("m", np.ones((4, 16), np.float32)), const("flat", np.array([-1, 16], np.int64)),
         const("g", np.ones((5, 16), np.float32))],
    )
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    # batch 2: conv 13824; matmul [2,64,4]@[4,16] = 8192; gemm [128,16]@[16,5] = 10240
    assert count_macs_by_op(path, {"x": (2, 3, 8, 8)}) == {"Convolution": 13824, "MatMul": 8192 + 10240}
    assert count_flops(path, {"x": (2, 3, 8, 8)}) == 2 * (13824 + 8192 + 10240)


def test_open_input_shapes_are_refused(tmp_path):
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([-1, 4], np.float32, name="x")
    path = tmp_path / "open.xml"
    ov.save_model(ov.Model([ops.matmul(x, ops.constant(np.ones((4, 2), np.float32)), False, False)], [x]), str(path))
    with pytest.raises(ValueError, match="dynamic shape"):
        count_flops(path, {})


@pytest.mark.parametrize("args,expected", [
    (("--warmup", "-1"), "--warmup must be at least 0 (got -1)"),
    (("--steps", "0"), "--steps must be a comma-separated list of integers >= 1"),
    (("--plot", "chart.jpg"), "--plot must name a .png file"),
    (("--plot", "{file}/chart.png"), "is not a writable folder"),
    (("--plot", "{tmp}"), "--plot must name a .png file"),
    (("--plot", "{tmp}/folder.png"), "is a folder, not a file"),
    (("--plot", "{tmp}/x.png", "--quality"), "--plot charts the timings"),
])
def test_bad_options_give_one_line(tiny_exports, tmp_path, args, expected):
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "folder.png").mkdir()
    args = [a.format(file=tmp_path / "file", tmp=tmp_path) for a in args]
    assert_user_error(["bench", "--model", str(tiny_exports["sd15", "openvino"]), *args], expected)
