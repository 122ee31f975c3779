"""--guidance-interval: CFG only inside an interval of noise levels, the conditional half alone outside it.

The reference is diffusers' own recipe for stopping guidance part-way (a callback_on_step_end that sets
the guidance scale to 0 and keeps the conditional half of the prompt embeddings), on the tiny SD1.5 model.
"""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from sdcpu.engine.cli.app import app
from sdcpu.engine.deepcache import FEATURE, DeepCacheUNet
from sdcpu.engine.errors import UserError
from sdcpu.engine.pipeline import Pipeline, Request
from sdcpu.engine.png_text import read_parameters
from sdcpu.engine.pngmeta import params_from_text
from sdcpu.engine.schedules import make_schedule

torch = pytest.importorskip("torch")

from sdcpu.export.reference import image_difference, load_reference, reference_images  # noqa: E402

STEPS, CUT_AFTER = 8, 1
REQUEST = dict(prompt="a red circle on a blue background", negative_prompt="blurry", steps=STEPS, guidance=7.5,
               seed=1234, width=64, height=64, sampler="euler")


def stop_guidance_after(step_index: int):
    """diffusers' documented way to turn CFG off after a step: guidance 0, conditional embeddings only."""

    def callback(pipe, i, t, tensors):
        if i == step_index:
            pipe._guidance_scale = 0.0
            tensors["prompt_embeds"] = tensors["prompt_embeds"].chunk(2)[-1]
        return tensors

    return callback


def interval_cutting_after(pipe: Pipeline, step_index: int) -> tuple[float, float]:
    """A low end between the timesteps of steps step_index and step_index + 1."""
    timesteps = make_schedule("euler", pipe.scheduler_config, STEPS).timesteps
    return (float(timesteps[step_index]) + float(timesteps[step_index + 1])) / 2000, 1.0


@pytest.fixture(scope="module")
def sd15(tiny_exports):
    return Pipeline.load(tiny_exports["sd15", "openvino"], inference_precision="f32")


def test_a_low_cut_matches_diffusers_stopping_guidance(sd15, tiny_sources):
    interval = interval_cutting_after(sd15, CUT_AFTER)
    ours = np.stack(sd15.generate(Request(**REQUEST, guidance_interval=interval)).images)
    ref = reference_images(load_reference(str(tiny_sources["sd15"])), **REQUEST,
                           callback_on_step_end=stop_guidance_after(CUT_AFTER),
                           callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    plain = np.stack(sd15.generate(Request(**REQUEST)).images)
    to_plain, to_reference = image_difference(ours, plain)["mean"], image_difference(ours, ref)["mean"]
    assert to_plain > 1.0, "the cut changed nothing: the test would prove nothing"
    assert to_reference <= min(1.0, to_plain / 5)


def test_unguided_steps_run_one_batch_row(sd15):
    rows = []
    original = sd15.unet

    class Recorder:
        def __getattr__(self, name):
            return getattr(original, name)

        def __call__(self, **feeds):
            rows.append(len(feeds["sample"]))
            return original(**feeds)

    sd15.unet = Recorder()
    try:
        sd15.generate(Request(**REQUEST, guidance_interval=interval_cutting_after(sd15, CUT_AFTER)))
    finally:
        sd15.unet = original
    assert rows == [2] * (CUT_AFTER + 1) + [1] * (STEPS - CUT_AFTER - 1)


def test_the_full_interval_is_the_plain_image(sd15):
    plain = sd15.generate(Request(**REQUEST)).images[0]
    full = sd15.generate(Request(**REQUEST, guidance_interval=(0.0, 1.0))).images[0]
    assert np.array_equal(plain, full)


@pytest.mark.parametrize("interval", [(0.5, 0.5), (0.7, 0.2), (-0.1, 1.0), (0.0, 1.5), (float("nan"), 1.0)])
def test_bad_intervals_are_refused(sd15, interval):
    with pytest.raises(UserError, match="guidance-interval"):
        sd15.validate(Request(**REQUEST, guidance_interval=interval))


def test_deepcache_reuses_the_conditional_half_of_a_cfg_feature():
    class FakeGraph:
        def __init__(self, outputs):
            self.outputs, self.calls, self.feeds = outputs, 0, []
            self.entry = type("Entry", (), {"inputs": {"sample": {}, FEATURE: {}}})()
            self.properties = {}

        def run(self, **feeds):
            self.calls += 1
            return self.outputs

        def __call__(self, **feeds):
            self.feeds.append(feeds)
            return feeds["sample"]

    feature = np.arange(2, dtype=np.float32).reshape(2, 1)
    deep, shallow = FakeGraph({"out_sample": np.zeros((2, 1)), FEATURE: feature}), FakeGraph({})
    unet = DeepCacheUNet(deep, shallow, interval=3)
    unet(sample=np.zeros((2, 1), np.float32))
    unet(sample=np.zeros((1, 1), np.float32))
    assert deep.calls == 1
    assert shallow.feeds[0][FEATURE].tolist() == [[1.0]]


def test_the_png_records_the_interval_and_from_reruns_it(tmp_path):
    runner = CliRunner()
    first, again = tmp_path / "cut.png", tmp_path / "again.png"
    result = runner.invoke(app, ["generate", "two small yellow triangles on a white background", "--seed", "5",
                                 "--steps", "6", "--guidance-interval", "0.5-1", "-o", str(first)])
    assert result.exit_code == 0, result.output
    assert params_from_text(read_parameters(first)).guidance_interval == (0.5, 1.0)
    result = runner.invoke(app, ["generate", "--from", str(first), "-o", str(again)])
    assert result.exit_code == 0, result.output
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
    bad = runner.invoke(app, ["generate", "x", "--guidance-interval", "1-0.4", "-o", str(tmp_path / "b.png")])
    assert bad.exit_code == 2 and "--guidance-interval" in bad.output and "Traceback" not in bad.output


def test_fast_fills_the_family_preset_and_records_it(tiny_sources, tmp_path):
    from sdcpu.export.exporter import export_model

    runner = CliRunner()
    plain = tmp_path / "plain"
    export_model(str(tiny_sources["sd15"]), plain, precision="fp32", log=lambda line: None)
    args = ["generate", "a red circle", "--seed", "2", "--steps", "6", "--fast", "--model"]
    result = runner.invoke(app, [*args, str(plain), "-o", str(tmp_path / "a.png")])
    assert result.exit_code == 0, result.output
    assert "no DeepCache graphs" in result.output
    with_graphs = tmp_path / "fast"
    assert runner.invoke(app, ["export", str(tiny_sources["sd15"]), str(with_graphs), "--fast",
                               "--no-quality-check"]).exit_code == 0
    result = runner.invoke(app, [*args, str(with_graphs), "-o", str(tmp_path / "b.png")])
    assert result.exit_code == 0, result.output
    assert params_from_text(read_parameters(tmp_path / "b.png")).deepcache == 3
    given = runner.invoke(app, [*args, str(with_graphs), "--deepcache", "2", "-o", str(tmp_path / "c.png")])
    assert given.exit_code == 0 and params_from_text(read_parameters(tmp_path / "c.png")).deepcache == 2
