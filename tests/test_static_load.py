"""Static shapes at load: every OpenVINO graph compiled for the size about to be generated (engine/graph_shapes.py).

The images must agree with the dynamic-shape build within the parity tolerance (the kernels differ, so
bits may too); other sizes, batches, guidance intervals and DeepCache must keep working.
"""

from __future__ import annotations

import numpy as np
import pytest

from sdcpu.engine.deepcache import FEATURE
from sdcpu.engine.pipeline import Pipeline, Request
from sdcpu.export.reference import image_difference

MAX_MEAN_ABS_DIFF = 1.0
SD15 = dict(prompt="a red circle on a blue background", negative_prompt="", steps=6, guidance=7.5, seed=7,
            width=64, height=64, sampler="euler")


def load(folder, **kwargs) -> Pipeline:
    return Pipeline.load(folder, inference_precision="f32", **kwargs)


def images(pipe: Pipeline, **request) -> np.ndarray:
    return np.stack(pipe.generate(Request(**{**SD15, **request})).images)


def assert_close(a: np.ndarray, b: np.ndarray) -> None:
    assert image_difference(a, b)["mean"] <= MAX_MEAN_ABS_DIFF


@pytest.fixture(scope="module")
def sd15_pair(tiny_exports):
    folder = tiny_exports["sd15", "openvino"]
    return load(folder, size=(64, 64)), load(folder)


def test_every_graph_is_static_and_the_unet_takes_both_cfg_halves(sd15_pair):
    static, _ = sd15_pair
    shapes = {name: {k: v["shape"] for k, v in graph.entry.inputs.items()} for name, graph in static.graphs().items()}
    assert shapes["unet"]["sample"] == [2, 4, 8, 8]
    assert shapes["vae_decoder"]["latent_sample"] == [1, 4, 8, 8]
    assert shapes["text_encoder"]["input_ids"][0] == 1
    assert all(isinstance(d, int) for graph in shapes.values() for shape in graph.values() for d in shape)


def test_static_images_match_dynamic_ones(sd15_pair):
    static, dynamic = sd15_pair
    assert_close(images(static), images(dynamic))
    assert_close(images(static, batch=2), images(dynamic, batch=2))


def test_another_size_recompiles_and_still_matches(sd15_pair):
    static, dynamic = sd15_pair
    assert_close(images(static, width=96, height=64), images(dynamic, width=96, height=64))
    assert static.unet.entry.inputs["sample"]["shape"] == [2, 4, 8, 12]


def test_a_guidance_interval_gives_the_unet_a_dynamic_batch(sd15_pair):
    static, dynamic = sd15_pair
    assert_close(images(static, guidance_interval=(0.5, 1.0)), images(dynamic, guidance_interval=(0.5, 1.0)))
    assert static.unet.static_batch is None
    assert static.unet.entry.inputs["sample"]["shape"][1:] == [4, 8, 8]


def test_models_without_cfg_compile_one_row(tiny_exports):
    lcm = load(tiny_exports["lcm", "openvino"], size=(64, 64))
    assert lcm.unet.static_batch == 1
    dynamic = load(tiny_exports["lcm", "openvino"])
    request = dict(SD15, steps=4, guidance=8.0, sampler="lcm")
    assert_close(images(lcm, **request), images(dynamic, **request))


def test_deepcache_graphs_compile_static_too(tiny_sources, tmp_path):
    from sdcpu.export.exporter import export_model

    folder = tmp_path / "dc"
    export_model(str(tiny_sources["sd15"]), folder, deepcache=True, log=lambda line: None)
    static, dynamic = load(folder, size=(64, 64), deepcache=3), load(folder, deepcache=3)
    assert static.unet.shallow.entry.inputs[FEATURE]["shape"][0] == 2
    assert_close(images(static), images(dynamic))
    assert_close(images(static, guidance_interval=(0.5, 1.0)), images(dynamic, guidance_interval=(0.5, 1.0)))


def test_onnx_ignores_the_size(tiny_exports):
    pipe = Pipeline.load(tiny_exports["sd15", "onnx"], size=(64, 64))
    assert pipe.unet.static_batch is None
