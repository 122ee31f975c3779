"""Every format x precision on the tiny SD1.5, LCM and SDXL-Turbo fixtures: export, load, generate, shrink.

Image PSNR thresholds (fixed prompt and seed, fp32 export as reference): the tiny fixture's
weights are random, so its "images" are high-frequency noise, a worst case for quantization (no
smooth regions to hide errors in). Measured on it (comment after each threshold): OpenVINO's
fp16/int8 IRs run in bf16 on this AMX CPU, which dominates their error (~45 dB); ONNX fp16 keeps
the timestep embedding fp32 (~64 dB); ONNX int8 quantizes conv activations statically (~35 dB).
Each threshold sits about 10 dB below the measurement: loose enough for CPUs without bf16 and
for calibration noise, tight enough to catch a broken conversion (a wrong scale or a dropped
graph gives < 15 dB).
The thresholds come from the SD1.5 fixture; the tiny LCM and SDXL-Turbo images measured 2-16 dB
closer to fp32 than SD1.5's in every combination (bench/export_matrix.py --tiny), so they share them.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from sdcpu.engine.cli.app import app
from sdcpu.engine.manifest import load_manifest
from sdcpu.engine.pipeline import Pipeline, Request

COMBOS = {
    ("openvino", "fp16", "weights"): 35.0,  # 45.8
    ("openvino", "int8", "weights"): 35.0,  # 47.0
    ("openvino", "int8", "hybrid"): 33.0,  # 41.6
    ("onnx", "fp16", "weights"): 50.0,  # 63.5
    ("onnx", "int8", "weights"): 25.0,  # 36.5
}


FAMILIES = ("sd15", "lcm", "sdxl-turbo")
CASES = [(family, combo) for family in FAMILIES for combo in COMBOS]


def _case_id(case) -> str:
    family, combo = case
    return "-".join((family, *combo))


@pytest.fixture(scope="module")
def reduced_exports(tiny_sources, tmp_path_factory):
    """Every tiny family x reduced combination, keyed by (family, (format, precision, quant))."""
    from sdcpu.export.exporter import export_model

    root = tmp_path_factory.mktemp("reduced")
    exports, logs = {}, {}
    for family, (fmt, precision, quant) in CASES:
        out = root / f"{family}-{fmt}-{precision}-{quant}"
        lines = []
        export_model(str(tiny_sources[family]), out, fmt=fmt, precision=precision, quant=quant,
                     calibration_samples=6, log=lines.append)
        key = family, (fmt, precision, quant)
        exports[key], logs[key] = out, lines
    return exports, logs


def _size(folder, entry) -> int:
    return sum((folder / f).stat().st_size for f in entry.files)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_reduced_export_generates_close_to_fp32(reduced_exports, tiny_exports, case):
    exports, logs = reduced_exports
    folder, manifest = exports[case], load_manifest(exports[case])
    family, (fmt, precision, quant) = case
    assert (manifest.family, manifest.format, manifest.precision) == (family, fmt, precision)
    assert manifest.quality["image_psnr_db"] >= COMBOS[fmt, precision, quant], manifest.quality
    print(case, "image PSNR vs fp32:", manifest.quality["image_psnr_db"], "dB")
    assert any("image vs fp32" in line for line in logs[case])
    assert all("psnr_db" in entry.parity for entry in manifest.components.values())
    assert not (folder / ".fp32").exists()
    request = Request(prompt="a red circle", negative_prompt="", steps=2, guidance=7.5, seed=3,
                      width=64, height=64, sampler="euler")
    image = Pipeline.load(folder).generate(request).images[0]
    assert image.shape == (64, 64, 3) and image.std() > 0


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_reduced_unet_is_smaller_than_fp32(reduced_exports, tiny_exports, case):
    family, (fmt, precision, _) = case
    unet = load_manifest(reduced_exports[0][case]).components["unet"]
    fp32_unet = load_manifest(tiny_exports[family, fmt]).components["unet"]
    ratio = _size(reduced_exports[0][case], unet) / _size(tiny_exports[family, fmt], fp32_unet)
    assert ratio < (0.6 if precision == "fp16" else 0.45), ratio


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("quant", ["weights", "hybrid"])
def test_openvino_int8_ir_holds_int8_weights(reduced_exports, family, quant):
    from sdcpu.export.quantize_openvino import weight_element_types

    folder = reduced_exports[0][family, ("openvino", "int8", quant)]
    for name in load_manifest(folder).components:
        counts = weight_element_types(folder / name / "model.xml")
        int8 = counts.get("i8", 0) + counts.get("u8", 0)
        assert int8 > 4 * counts.get("f32", 0), (name, counts)


def test_onnx_fp16_keeps_the_sdxl_vae_fp32_both_ways(reduced_exports):
    folder = reduced_exports[0]["sdxl-turbo", ("onnx", "fp16", "weights")]
    manifest = load_manifest(folder)
    assert manifest.vae_precision == "fp32" and manifest.components["unet"].precision == "fp16"
    for name in ("vae_decoder", "vae_encoder"):
        assert manifest.components[name].precision == "fp32"
        vae = onnx.load(str(folder / name / "model.onnx"))
        assert {init.data_type for init in vae.graph.initializer} == {onnx.TensorProto.FLOAT}


def test_openvino_hybrid_quantizes_unet_activations(reduced_exports):
    import openvino as ov

    folder = reduced_exports[0]["sd15", ("openvino", "int8", "hybrid")]
    ops = {op.get_type_name() for op in ov.Core().read_model(str(folder / "unet" / "model.xml")).get_ops()}
    assert "FakeQuantize" in ops or "FakeConvert" in ops, sorted(ops)


def test_onnx_int8_holds_int8_initializers_and_qdq_convs(reduced_exports):
    folder = reduced_exports[0]["sd15", ("onnx", "int8", "weights")]
    model = onnx.load(str(folder / "unet" / "model.onnx"))
    kinds = [init.data_type for init in model.graph.initializer]
    assert kinds.count(onnx.TensorProto.INT8) + kinds.count(onnx.TensorProto.UINT8) > 10
    ops = [node.op_type for node in model.graph.node]
    assert "QuantizeLinear" in ops and ("DynamicQuantizeLinear" in ops or "MatMulInteger" in ops)


def test_onnx_fp16_keeps_float32_inputs(reduced_exports):
    folder = reduced_exports[0]["sd15", ("onnx", "fp16", "weights")]
    manifest = load_manifest(folder)
    assert manifest.components["unet"].inputs["timestep"]["dtype"] == "float32"
    model = onnx.load(str(folder / "unet" / "model.onnx"))
    kinds = {init.data_type for init in model.graph.initializer if len(init.dims) > 1}
    assert onnx.TensorProto.FLOAT16 in kinds


@pytest.mark.parametrize("args, expected", [
    (["--format", "onnx", "--precision", "int8", "--quant", "hybrid"], "--quant hybrid needs --format openvino"),
    (["--precision", "int4"], "unknown precision 'int4'"),
    (["--calibration-samples", "0", "--precision", "int8"], "--calibration-samples must be at least 1"),
    (["--calibration-prompts", "/nonexistent/prompts.txt", "--precision", "int8"], "calibration prompt file not found"),
])
def test_bad_export_flags_are_one_line_errors(tiny_sources, tmp_path, args, expected):
    result = CliRunner().invoke(app, ["export", str(tiny_sources["sd15"]), str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and expected in result.output


def test_random_weights_takes_out_dir_as_only_argument(tmp_path):
    result = CliRunner().invoke(app, ["export", "--random-weights", "sd3", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--random-weights takes one of" in result.output, result.output


def test_custom_calibration_prompts_are_used(tiny_sources, tmp_path):
    from sdcpu.export.exporter import export_model

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a blue vase\n\na green field\n")
    lines = []
    export_model(str(tiny_sources["sd15"]), tmp_path / "out", fmt="onnx", precision="int8",
                 calibration_prompts=prompts, calibration_samples=3, quality_check=False, log=lines.append)
    assert any("3 UNet calls from" in line for line in lines), lines
    assert load_manifest(tmp_path / "out").quality == {}
    assert np.isfinite(load_manifest(tmp_path / "out").components["unet"].parity["psnr_db"])
