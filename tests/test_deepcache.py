"""DeepCache: exported deep/shallow graphs match PyTorch, every-call reuse equals the plain UNet, errors are one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sdcpu.engine.cli.app import app
from sdcpu.engine.manifest import load_manifest
from sdcpu.engine.pipeline import Pipeline, Request
from sdcpu.engine.png_text import read_parameters
from sdcpu.engine.pngmeta import params_from_text
from sdcpu.export.exporter import export_model
from sdcpu.export.quality import image_psnr_db

runner = CliRunner()
SHAPES_PROMPT = "two small yellow triangles on a white background"
REPO = Path(__file__).parents[1]
# Measured on the bundled shapes model, 25 PNDM steps, seed 3: N=2 41.9 dB, N=3 36.0 dB vs the plain UNet.
MIN_PSNR_DB = {2: 35.0, 3: 30.0}


@pytest.fixture(scope="module")
def deepcache_exports(tiny_sources, tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("deepcache")
    exports = {}
    for family, fmt in (("sd15", "openvino"), ("sd15", "onnx"), ("lcm", "openvino"), ("sdxl-turbo", "openvino")):
        out = root / f"{family}-{fmt}"
        export_model(str(tiny_sources[family]), out, fmt=fmt, deepcache=True, log=lambda line: None)
        exports[family, fmt] = out
    return exports


@pytest.fixture(scope="module")
def shapes_deepcache(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes-deepcache") / "shapes-dc"
    export_model(str(REPO / "models" / "shapes" / "diffusers"), out, deepcache=True, log=lambda line: None)
    return out


def image(pipe: Pipeline, steps: int = 6, sampler: str | None = None) -> np.ndarray:
    w, h = pipe.manifest.default_size
    request = Request(prompt="a red cube", negative_prompt="", steps=steps, guidance=pipe.manifest.default_guidance
                      or 7.5, seed=4, width=min(w, 64), height=min(h, 64), sampler=sampler or pipe.default_sampler())
    return pipe.generate(request).images[0]


@pytest.mark.parametrize("key", [("sd15", "openvino"), ("sd15", "onnx"), ("lcm", "openvino"), ("sdxl-turbo", "openvino")])
def test_graphs_match_pytorch_and_reuse_every_call_is_the_plain_unet(deepcache_exports, key):
    folder = deepcache_exports[key]
    components = load_manifest(folder).components
    assert {"unet_deep", "unet_shallow"} <= set(components)
    assert all(components[name].parity["psnr_db"] >= 60 for name in ("unet_deep", "unet_shallow"))
    plain = image(Pipeline.load(folder, compile_cache=False))
    every_call = Pipeline.load(folder, compile_cache=False, deepcache=1)
    assert np.array_equal(image(every_call), plain)
    assert every_call.unet.shallow.calls == 0


def test_interval_sets_how_often_the_full_unet_runs(deepcache_exports):
    pipe = Pipeline.load(deepcache_exports["sd15", "openvino"], compile_cache=False, deepcache=3)
    image(pipe, steps=7, sampler="euler")
    assert (pipe.unet.deep.calls, pipe.unet.shallow.calls) == (3, 4)
    image(pipe, steps=7, sampler="euler")
    assert (pipe.unet.deep.calls, pipe.unet.shallow.calls) == (6, 8), "each image starts with a full call"


@pytest.mark.parametrize("interval", [2, 3])
def test_quality_cost_on_the_shapes_model(shapes_deepcache, tmp_path, interval):
    plain, cached = tmp_path / "plain.png", tmp_path / "cached.png"
    common = ["generate", SHAPES_PROMPT, "--model", str(shapes_deepcache), "--seed", "3"]
    assert runner.invoke(app, [*common, "-o", str(plain)]).exit_code == 0
    result = runner.invoke(app, [*common, "--deepcache", str(interval), "-o", str(cached)])
    assert result.exit_code == 0, result.output
    a, b = (np.asarray(Image.open(p)) for p in (plain, cached))
    assert MIN_PSNR_DB[interval] <= image_psnr_db(a, b) < float("inf")
    assert params_from_text(read_parameters(cached)).deepcache == interval
    again = tmp_path / "again.png"
    rerun = runner.invoke(app, ["generate", "--from", str(cached), "--model", str(shapes_deepcache), "-o", str(again)])
    assert rerun.exit_code == 0, rerun.output
    assert again.read_bytes() == cached.read_bytes()


@pytest.mark.parametrize("args,expected", [
    (["--deepcache", "2"], "has no DeepCache graphs; re-export it with `sdcpu export --deepcache`"),
    (["--deepcache", "0"], "--deepcache must be at least 1"),
])
def test_generate_errors_are_one_line(tiny_exports, tmp_path, args, expected):
    result = runner.invoke(app, ["generate", "x", "--model", str(tiny_exports["sd15", "openvino"]), "--steps", "2",
                                 *args, "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and expected in result.output and "Traceback" not in result.output


def test_export_refuses_deepcache_with_static_shapes(tiny_sources, tmp_path):
    result = runner.invoke(app, ["export", str(tiny_sources["sd15"]), str(tmp_path / "x"), "--deepcache",
                                 "--width", "64"])
    assert result.exit_code == 2 and "--deepcache does not combine with static shapes" in result.output


def test_calibration_pairs_each_shallow_call_with_the_previous_feature():
    from sdcpu.export.calibration import shallow_feeds

    feeds = [{"sample": np.full(1, i), "encoder_hidden_states": np.zeros(1)} for i in range(6)]
    features = [np.full(1, 10 + i) for i in range(6)]
    shallow = shallow_feeds(feeds, features, first_calls={0, 3}, inputs={"sample"})
    assert [(int(f["sample"][0]), int(f["deep_feature"][0])) for f in shallow] == [(1, 10), (2, 11), (4, 13), (5, 14)]
    assert all(set(f) == {"sample", "deep_feature"} for f in shallow)


@pytest.mark.parametrize("family", ["sd15", "sdxl-turbo"])  # SDXL-Turbo: 1 default step, still shallow samples
def test_hybrid_export_quantizes_the_deepcache_graphs_too(tiny_sources, tmp_path, family):
    import openvino as ov

    out = tmp_path / "hybrid-dc"
    export_model(str(tiny_sources[family]), out, precision="int8", quant="hybrid", deepcache=True,
                 calibration_samples=4, log=lambda line: None)
    components = load_manifest(out).components
    for name in ("unet", "unet_deep", "unet_shallow"):
        model = ov.Core().read_model(str(out / components[name].file))
        on_activations = [op for op in model.get_ops() if op.get_type_name() == "FakeQuantize"
                          and op.input_value(0).get_node().get_type_name() != "Constant"]
        assert on_activations, f"{name}: no FakeQuantize on activations"
    pipe = Pipeline.load(out, compile_cache=False, deepcache=3)
    assert image(pipe, steps=4, sampler="euler").shape == (64, 64, 3)
    assert (pipe.unet.deep.calls, pipe.unet.shallow.calls) == (2, 2)


@pytest.mark.parametrize("down_blocks,up_blocks", [
    (("CrossAttnDownBlock2D", "DownBlock2D"), ("UpBlock2D", "CrossAttnUpBlock2D")),
    (("DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D")),
])
@pytest.mark.parametrize("layers", [1, 2])
def test_shallow_branch_on_a_fresh_feature_is_the_whole_unet(down_blocks, up_blocks, layers):
    import torch
    from diffusers import UNet2DConditionModel

    from sdcpu.export.deepcache import DeepUNetGraph, ShallowUNetGraph

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                layers_per_block=layers, norm_num_groups=8, cross_attention_dim=16,
                                attention_head_dim=4, down_block_types=down_blocks, up_block_types=up_blocks).eval()
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 700.0]), torch.randn(2, 77, 16)
    with torch.no_grad():
        expected = unet(x, t, context, return_dict=False)[0]
        out, feature = DeepUNetGraph(unet, []).eval()(x, t, context)
        shallow = ShallowUNetGraph(unet, []).eval()(x, t, context, feature)
    assert torch.equal(out, expected)
    assert feature.shape[-2:] == x.shape[-2:]
    torch.testing.assert_close(shallow, expected, rtol=0, atol=1e-5)
