"""fp16 and int8 ONNX conversions of the tiny SD1.5 export: they run on ORT's CPU provider and stay close to fp32.

PSNR thresholds (sdcpu.export.parity.psnr_db, peak = the fp32 output's range) sit about 10 dB under
what the tiny random-weight models measure, so they catch a broken conversion, not noise.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("diffusers")

from sdcpu.export import quantize_onnx
from sdcpu.export.parity import psnr_db

COMPONENTS = ("text_encoder", "unet", "vae_decoder")
FP16_MIN_PSNR = 60.0  # measured 74.5 (text encoder) to 79.2 dB (VAE decoder)
FRACTIONAL_TIMESTEP = 981.7  # fp16 rounds t*freq by up to 0.25 rad: 60 dB without the fp32 sinusoid path
INT8_MIN_PSNR = {
    "text_encoder": 35.0,  # dynamic MatMul: measured 47.2 dB
    "unet": 30.0,  # static Conv + dynamic MatMul on the held-out generation's last feed: 40.6 dB (others 33-42)
    "vae_decoder": 35.0,  # static Conv + dynamic MatMul on the held-out generation's latent: 45.0 dB
}
INT8_TYPES = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory) -> Path:
    """One tiny SD1.5 pipeline exported to fp32 ONNX."""
    from sdcpu.export.exporter import export_model
    from sdcpu.export.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp("quantize-onnx")
    source = build_tiny_pipeline(root / "sd15", family="sd15")
    export_model(str(source), root / "onnx", fmt="onnx", log=lambda line: None)
    return root / "onnx"


@pytest.fixture(scope="module")
def recorded(fp32) -> dict[str, list[dict[str, np.ndarray]]]:
    """UNet and VAE decoder feeds exactly as our runtime makes them, from three short generations."""
    from sdcpu.engine.pipeline import Pipeline, Request
    from sdcpu.export.calibration import record_feeds

    pipe = Pipeline.load(fp32, compile_cache=False)
    feeds = {"unet": [], "vae_decoder": []}
    with record_feeds(pipe.unet, feeds["unet"]), record_feeds(pipe.vae_decoder, feeds["vae_decoder"]):
        for seed, prompt in enumerate(("a red house", "a cat on a sofa", "portrait of an old man")):
            pipe.generate(Request(prompt=prompt, negative_prompt="", steps=4, guidance=7.5, seed=seed,
                                  width=64, height=64, sampler="euler"))
    return feeds


def fixed_feed(name: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if name == "text_encoder":
        return {"input_ids": rng.integers(0, 1000, (2, 77)).astype(np.int64)}
    if name == "unet":
        return {"sample": rng.standard_normal((2, 4, 8, 8), dtype=np.float32),
                "timestep": np.full(2, FRACTIONAL_TIMESTEP, np.float32),
                "encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32)}
    return {"latent_sample": 3 * rng.standard_normal((1, 4, 8, 8), dtype=np.float32)}


def outputs(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


def assert_close(fp32_path: Path, path: Path, feed: dict[str, np.ndarray], min_psnr: float) -> None:
    expected, got = outputs(fp32_path, feed), outputs(path, feed)
    assert list(got) == list(expected)
    for name, reference in expected.items():
        assert got[name].dtype == np.float32
        assert psnr_db(reference, got[name]) >= min_psnr, name


def model_bytes(files: list[Path]) -> int:
    return sum(f.stat().st_size for f in files)


def initializer_types(path: Path) -> Counter:
    return Counter(t.data_type for t in onnx.load(path).graph.initializer)


@pytest.mark.parametrize("name", COMPONENTS)
def test_fp16_runs_close_with_float32_io(fp32, tmp_path, name):
    source = fp32 / name / "model.onnx"
    files = quantize_onnx.convert_fp16(source, tmp_path / "model.onnx")
    assert files == [tmp_path / "model.onnx"]
    model = onnx.load(files[0])
    onnx.checker.check_model(model)
    io = [*model.graph.input, *model.graph.output]
    assert all(v.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for v in io)
    assert initializer_types(files[0])[onnx.TensorProto.FLOAT16] > 0
    assert model_bytes(files) < source.stat().st_size
    assert_close(source, files[0], fixed_feed(name), FP16_MIN_PSNR)


def test_fp16_unet_keeps_fractional_timesteps_exact(fp32, tmp_path):
    source = fp32 / "unet" / "model.onnx"
    files = quantize_onnx.convert_fp16(source, tmp_path / "model.onnx")
    assert_close(source, files[0], fixed_feed("unet"), 70.0)  # measured 77.8 dB


def test_int8_text_encoder_dynamic(fp32, tmp_path):
    source = fp32 / "text_encoder" / "model.onnx"
    files = quantize_onnx.quantize_int8(source, tmp_path / "model.onnx", log=lambda line: None)
    assert files == [tmp_path / "model.onnx"]
    ops = Counter(node.op_type for node in onnx.load(files[0]).graph.node)
    assert ops["MatMulInteger"] > 0 and ops["QuantizeLinear"] == 0
    assert sum(initializer_types(files[0])[t] for t in INT8_TYPES) > 0
    assert model_bytes(files) < source.stat().st_size
    assert_close(source, files[0], fixed_feed("text_encoder"), INT8_MIN_PSNR["text_encoder"])


@pytest.mark.parametrize("name", ["unet", "vae_decoder"])
def test_int8_calibrated_convolutions(fp32, recorded, tmp_path, name):
    source = fp32 / name / "model.onnx"
    calibration, held_out = recorded[name][:-1], recorded[name][-1]
    files = quantize_onnx.quantize_int8(source, tmp_path / "model.onnx", calibration, log=lambda line: None)
    model = onnx.load(files[0])
    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    consumers = Counter((node.op_type, name) for node in model.graph.node for name in node.input)
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    assert convs and all(producer.get(node.input[0]) == producer.get(node.input[1]) == "DequantizeLinear"
                         for node in convs)
    assert all(consumers["QuantizeLinear", node.output[0]] for node in convs)
    assert initializer_types(files[0])[onnx.TensorProto.INT8] >= len(convs)
    assert model_bytes(files) < source.stat().st_size
    assert_close(source, files[0], held_out, INT8_MIN_PSNR[name])


def test_int8_vae_decoder_without_calibration_quantizes_attention_only(fp32, tmp_path):
    source = fp32 / "vae_decoder" / "model.onnx"
    files = quantize_onnx.quantize_int8(source, tmp_path / "model.onnx", log=lambda line: None)
    ops = Counter(node.op_type for node in onnx.load(files[0]).graph.node)
    assert ops["MatMulInteger"] > 0 and ops["DequantizeLinear"] == 0
    assert_close(source, files[0], fixed_feed("vae_decoder"), 60.0)  # measured 77.5 dB


def test_external_data_in_and_out(fp32, recorded, tmp_path, monkeypatch):
    """A >2 GB-style model (weights in model.onnx.data) converts, and large results keep that layout."""
    source = tmp_path / "fp32" / "model.onnx"
    source.parent.mkdir()
    onnx.save_model(onnx.load(fp32 / "unet" / "model.onnx"), source, save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    before = {p.name: p.read_bytes() for p in source.parent.iterdir()}
    monkeypatch.setattr(quantize_onnx, "LARGE_BYTES", 0)
    for kind, convert in (("fp16", quantize_onnx.convert_fp16),
                          ("int8", lambda a, b: quantize_onnx.quantize_int8(a, b, recorded["unet"][:-1], log=print))):
        out = tmp_path / kind / "model.onnx"
        files = convert(source, out)
        assert files == [out, tmp_path / kind / "model.onnx.data"]
        assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
        tensors = onnx.load(out, load_external_data=False).graph.initializer
        locations = {e.value for t in tensors for e in t.external_data if e.key == "location"}
        assert locations == {"model.onnx.data"}
        assert_close(source, out, recorded["unet"][-1], INT8_MIN_PSNR["unet"])
    assert {p.name: p.read_bytes() for p in source.parent.iterdir()} == before


def test_activation_ranges_match_ort_calibrator(fp32, recorded, tmp_path):
    """Our one-session calibration gives ORT's own MinMax ranges for every Conv input and output."""
    from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator

    class Feeds(CalibrationDataReader):
        def __init__(self, feeds):
            self.feeds = iter(feeds)

        def get_next(self):
            return next(self.feeds, None)

    source = tmp_path / "model.onnx"
    source.write_bytes((fp32 / "unet" / "model.onnx").read_bytes())
    feeds = recorded["unet"][:5]
    ours = quantize_onnx.activation_ranges(source, feeds)
    calibrator = create_calibrator(source, ["Conv"], augmented_model_path=str(tmp_path / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.MinMax)
    calibrator.collect_data(Feeds(feeds))
    theirs = calibrator.compute_data()
    assert sorted(ours) == sorted(theirs.data) and len(ours) > 10
    for name, (low, high) in ours.items():
        their_low, their_high = theirs[name].range_value
        np.testing.assert_allclose([low, high], [their_low, their_high], rtol=1e-5, atol=1e-6, err_msg=name)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_calibration_releases_the_fp32_pipeline(fp32, monkeypatch):
    """Once collect_inputs returns, its fp32 graphs are gone without waiting for a garbage collection."""
    import gc
    import weakref

    from sdcpu.engine.pipeline import Pipeline
    from sdcpu.export import calibration

    loaded = []
    real_load = Pipeline.load.__func__

    def load(cls, *args, **kwargs):
        pipe = real_load(cls, *args, **kwargs)
        loaded.extend(weakref.ref(graph) for graph in pipe.graphs().values())
        return pipe

    monkeypatch.setattr(Pipeline, "load", classmethod(load))
    gc.collect()
    gc.disable()
    try:
        recorded = calibration.collect_inputs(fp32, ["a red house", "a cat"], 3, (64, 64), log=lambda line: None)
        assert len(recorded["unet"]) == 3 and loaded
        assert all(ref() is None for ref in loaded)
    finally:
        gc.enable()


def optimized_op_counts(path: Path, tmp_path: Path) -> Counter:
    """Op types of the graph ORT actually runs, after its fusions (e.g. DynamicQuantizeMatMul)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / f"{path.stem}-optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


@pytest.mark.parametrize("name", ["text_encoder", "unet"])
def test_dynamic_matmuls_are_ort_quantize_dynamic_graph(fp32, tmp_path, name):
    """Our in-place rewrite gives quantize_dynamic's results and, after ORT's fusions, its kernels."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = fp32 / name / "model.onnx"
    theirs = tmp_path / "theirs.onnx"
    quantize_dynamic(source, theirs, op_types_to_quantize=["MatMul"], weight_type=QuantType.QUInt8)
    ours = quantize_onnx.quantize_int8(source, tmp_path / "ours" / "model.onnx", log=lambda line: None)[0]
    model = onnx.load(ours)
    onnx.checker.check_model(model)
    constants = {tensor.name for tensor in model.graph.initializer}
    assert not any(node.op_type == "Gemm" or (node.op_type == "MatMul" and node.input[1] in constants)
                   for node in model.graph.node)
    gemms = sum(node.op_type == "Gemm" for node in onnx.load(source).graph.node)
    expected, got = outputs(theirs, fixed_feed(name)), outputs(ours, fixed_feed(name))
    for key, reference in expected.items():
        np.testing.assert_allclose(got[key], reference, rtol=0, atol=1e-5 * np.abs(reference).max())
    counts = optimized_op_counts(ours, tmp_path)
    assert counts == optimized_op_counts(theirs, tmp_path)
    assert counts["DynamicQuantizeMatMul"] > 0 and (name != "unet" or gemms > 0)
