"""fp16 / INT8-weight / hybrid-INT8 OpenVINO IRs of the tiny SD1.5 export: smaller, really int8, close to fp32.

Outputs are compared with the f32 inference hint so that only the file conversion is measured,
not the CPU's bf16 fallback. PSNR is against the fp32 output's peak-to-peak range.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from sdcpu.engine.backends import load_graph  # noqa: E402
from sdcpu.engine.manifest import load_manifest  # noqa: E402
from sdcpu.export import quantize_openvino as q  # noqa: E402

COMPONENTS = ("text_encoder", "unet", "vae_decoder")
# Measured on the tiny random model (f32 hint): fp16 78-81 dB, int8 weights 51.6-55.8 dB. fp16 rounding
# is ~2^-11 relative (~66 dB), so 60 dB still catches a wrong cast; 40 dB leaves >10 dB for int8 kernels.
MIN_PSNR_DB = {"fp16": 60.0, "int8": 40.0}
# Hybrid, calibrated on one prompt's 4 UNet calls, scored on another prompt's 4: 29.5-40.6 dB, worst
# 26.2 dB at t=1 where this random UNet's latents reach |x|~16. 20 dB (10% rms of range) keeps 6 dB
# of margin for other CPUs' int8 kernels yet fails a wrong scale or an unquantized/garbled graph.
MIN_HYBRID_PSNR_DB = 20.0


def psnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR of `test` against `reference`, with the reference's peak-to-peak range as the peak."""
    rmse = math.sqrt(float(np.mean((reference.astype(np.float64) - test) ** 2)))
    return math.inf if rmse == 0 else 20 * math.log10(float(np.ptp(reference)) / rmse)


def ir_size(xml: Path) -> int:
    return xml.stat().st_size + xml.with_suffix(".bin").stat().st_size


@pytest.fixture(scope="module")
def fp32(tmp_path_factory) -> Path:
    from sdcpu.export.exporter import export_model
    from sdcpu.export.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp("quantize-ov")
    source = build_tiny_pipeline(root / "sd15", family="sd15")
    export_model(str(source), root / "fp32", fmt="openvino", precision="fp32", log=lambda line: None)
    return root / "fp32"


@pytest.fixture(scope="module")
def unet_calls(fp32) -> list[tuple[dict, np.ndarray]]:
    """(feeds, fp32 output) of every UNet call while generating two 4-step images."""
    from sdcpu.engine.pipeline import Pipeline, Request

    pipe = Pipeline.load(fp32, compile_cache=False)
    calls, original = [], pipe.unet.run

    def record(**feeds):
        outputs = original(**feeds)
        calls.append(({k: np.array(v, copy=True) for k, v in feeds.items()}, next(iter(outputs.values()))))
        return outputs

    pipe.unet.run = record
    for seed, prompt in enumerate(("a red house by the sea", "portrait of an old man")):
        pipe.generate(Request(prompt=prompt, negative_prompt="", steps=4, guidance=7.5, seed=seed,
                              width=64, height=64, sampler="euler"))
    return calls


@pytest.fixture(scope="module")
def converted(fp32, unet_calls, tmp_path_factory) -> dict[str, Path]:
    """Folders holding each component in fp16 and int8, and the UNet in hybrid int8."""
    root, entries = tmp_path_factory.mktemp("converted"), load_manifest(fp32).components
    for name in COMPONENTS:
        relative = entries[name].file
        q.save_fp16(fp32 / relative, root / "fp16" / relative)
        q.compress_int8_weights(fp32 / relative, root / "int8" / relative)
    relative = entries["unet"].file
    q.quantize_hybrid(fp32 / relative, root / "hybrid" / relative, [f for f, _ in unet_calls[:4]],
                      log=lambda line: None)
    return {kind: root / kind for kind in ("fp16", "int8", "hybrid")}


@pytest.fixture(scope="module")
def references(fp32, unet_calls) -> dict[str, tuple[dict, np.ndarray]]:
    """A fixed input per component and its fp32 output (the UNet's: a recorded call of the second image)."""
    rng = np.random.default_rng(0)
    feeds = {"text_encoder": {"input_ids": rng.integers(0, 1000, (1, 77)).astype(np.int64)},
             "vae_decoder": {"latent_sample": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)}}
    outputs = {name: (inputs, graph(fp32, fp32, name, "fp32")(**inputs)) for name, inputs in feeds.items()}
    return {**outputs, "unet": unet_calls[-3]}


def graph(fp32: Path, folder: Path, name: str, precision: str):
    """Component `name` of `folder` (laid out as the fp32 export) through the runtime's loader, f32 hint."""
    entry = load_manifest(fp32).components[name]
    return load_graph(folder, name, entry, "openvino", inference_precision="f32")


@pytest.mark.parametrize("kind", ["fp16", "int8"])
@pytest.mark.parametrize("name", COMPONENTS)
def test_converted_ir_runs_close_and_smaller(fp32, converted, references, kind, name):
    relative = load_manifest(fp32).components[name].file
    feeds, reference = references[name]
    assert psnr_db(reference, graph(fp32, converted[kind], name, kind)(**feeds)) >= MIN_PSNR_DB[kind]
    assert ir_size(converted[kind] / relative) < ir_size(fp32 / relative)


@pytest.mark.parametrize("kind,names", [("int8", COMPONENTS), ("hybrid", ("unet",))])
def test_int8_irs_hold_int8_weights(fp32, converted, kind, names):
    for name in names:
        relative = load_manifest(fp32).components[name].file
        before, after = q.weight_element_types(fp32 / relative), q.weight_element_types(converted[kind] / relative)
        assert after.get("u8", 0) + after.get("i8", 0) > 0.9 * before["f32"]
        assert after.get("f32", 0) < 0.1 * before["f32"]


def test_hybrid_quantizes_activations_and_stays_close(fp32, converted, unet_calls):
    import openvino as ov

    relative = load_manifest(fp32).components["unet"].file
    xml = converted["hybrid"] / relative
    model = ov.Core().read_model(str(xml))
    on_activations = [op for op in model.get_ops() if op.get_type_name() == "FakeQuantize"
                      and op.input_value(0).get_node().get_type_name() != "Constant"]
    assert on_activations, "no FakeQuantize on activations: the hybrid IR is weight-only"
    runtime = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).get_runtime_model()
    int8_convs = [op for op in runtime.get_ops() if op.get_rt_info()["layerType"].astype(str) == "Convolution"
                  and op.get_rt_info()["runtimePrecision"].astype(str) in ("u8", "i8")]
    assert int8_convs, "the CPU plugin runs no convolution in int8"
    assert ir_size(xml) < ir_size(fp32 / relative)
    unet = graph(fp32, converted["hybrid"], "unet", "int8")
    scores = [psnr_db(expected, unet(**feeds)) for feeds, expected in unet_calls[4:]]
    assert min(scores) >= MIN_HYBRID_PSNR_DB, scores


def test_in_place_rewrite_is_quiet_and_leaves_no_temp_files(fp32, tmp_path, capsys):
    relative = load_manifest(fp32).components["vae_decoder"].file
    xml = tmp_path / "vae" / "model.xml"
    xml.parent.mkdir()
    for suffix in (".xml", ".bin"):
        shutil.copy(fp32 / Path(relative).with_suffix(suffix), xml.with_suffix(suffix))
    level = logging.getLogger("nncf").level
    assert q.compress_int8_weights(xml, xml) == [xml, xml.with_suffix(".bin")]
    assert sorted(p.name for p in xml.parent.iterdir()) == ["model.bin", "model.xml"]
    assert q.weight_element_types(xml).get("u8", 0) > 0
    assert capsys.readouterr().out == ""
    assert logging.getLogger("nncf").level == level


def test_bad_arguments_raise(fp32, tmp_path):
    relative = load_manifest(fp32).components["unet"].file
    with pytest.raises(ValueError):
        q.quantize_hybrid(fp32 / relative, tmp_path / "model.xml", [])
    with pytest.raises(ValueError):
        q.save_fp16(fp32 / relative, tmp_path / "model.onnx")
