"""Image-to-image and inpainting from the command line on the bundled shapes model: what the analyser
reads back, the PNG fields and --from, resize modes, and one clear line for each bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sdcpu.engine.cli.app import app
from sdcpu.engine.errors import UserError
from sdcpu.engine.init_image import mask_array, read_image_file, resized, target_size
from sdcpu.engine.pipeline import Pipeline, Request
from sdcpu.engine.png_text import read_parameters
from sdcpu.engine.pngmeta import parse_parameters
from sdcpu.engine.request_defaults import image_steps
from sdcpu.models.registry import DEFAULT_MODEL
from sdcpu.models.shapes.analyse import analyse
from sdcpu.models.shapes.grammar import parse_caption
from sdcpu.models.shapes.render import render
from tests.test_user_errors import one_error_line

runner = CliRunner()


@pytest.fixture(scope="module")
def shapes() -> Pipeline:
    return Pipeline.load(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def red_circle() -> np.ndarray:
    return render(parse_caption("a red circle on a blue background"), np.random.default_rng(0))


def shape_region(image: np.ndarray) -> np.ndarray:
    return np.abs(image.astype(int) - image[0, 0]).sum(-1) > 60


@pytest.mark.parametrize("seed", [0, 1])
def test_img2img_recolours_the_shape_and_keeps_the_background(shapes, red_circle, seed):
    request = Request(prompt="a yellow circle on a blue background", negative_prompt="", steps=42, guidance=2.0,
                      seed=seed, width=64, height=64, sampler="pndm", strength=0.6, init_image=red_circle)
    seen = analyse(shapes.generate(request).images[0])
    assert (seen.background, seen.color, seen.shape) == ("blue", "yellow", "circle")


@pytest.mark.parametrize("seed", [0, 1])
def test_inpainting_the_background_changes_only_the_background(shapes, red_circle, seed):
    shape = shape_region(red_circle)
    request = Request(prompt="a red circle on a green background", negative_prompt="", steps=34, guidance=2.0,
                      seed=seed, width=64, height=64, sampler="pndm", strength=0.75, init_image=red_circle,
                      mask=(~shape).astype(np.float32))
    out = shapes.generate(request).images[0]
    seen = analyse(out)
    assert (seen.background, seen.color, seen.shape) == ("green", "red", "circle")
    change = np.abs(out.astype(int) - red_circle).mean(-1)
    assert change[shape].mean() < 0.75 * change[~shape].mean()


def write_png(path, pixels) -> str:
    Image.fromarray(pixels).save(path)
    return str(path)


def generate(*args):
    return runner.invoke(app, ["generate", "a yellow circle on a blue background", "--seed", "4", *map(str, args)])


def test_png_records_the_run_and_from_repeats_it(tmp_path, red_circle):
    init = write_png(tmp_path / "red.png", red_circle)
    mask = write_png(tmp_path / "mask.png", np.where(shape_region(red_circle), 0, 255).astype(np.uint8))
    first = generate("--init-image", init, "--mask", mask, "--strength", "0.7", "--mask-blur", "2",
                     "-o", tmp_path / "a.png")
    assert first.exit_code == 0, first.output
    fields = parse_parameters(read_parameters(tmp_path / "a.png"))
    assert fields["Denoising strength"] == "0.7" and fields["Mask blur"] == "2"
    assert fields["Init image"] == str((tmp_path / "red.png").resolve()) and len(fields["Init image SHA-256"]) == 64
    assert fields["Mask"] == str((tmp_path / "mask.png").resolve()) and fields["Resize mode"] == "stretch"
    again = runner.invoke(app, ["generate", "--from", str(tmp_path / "a.png"), "-o", str(tmp_path / "b.png")])
    assert again.exit_code == 0, again.output
    assert "using the init image the PNG records" in again.output and "using the mask the PNG records" in again.output
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    info = runner.invoke(app, ["info", str(tmp_path / "a.png")])
    assert "Denoising strength" in info.output and "Init image SHA-256" in info.output

    Image.fromarray(red_circle[::-1].copy()).save(tmp_path / "red.png")
    changed = runner.invoke(app, ["generate", "--from", str(tmp_path / "a.png"), "-o", str(tmp_path / "c.png")])
    one_error_line(changed, "red.png", "SHA-256 differs", "--init-image")
    given = runner.invoke(app, ["generate", "--from", str(tmp_path / "a.png"), "--init-image", init,
                                "-o", str(tmp_path / "d.png")])
    assert given.exit_code == 0 and "using the init image given" in given.output


def test_an_a1111_img2img_png_asks_for_its_init_image(tmp_path):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64, "
                                "Denoising strength: 0.75")
    Image.new("RGB", (64, 64)).save(tmp_path / "a1111.png", pnginfo=info)
    result = runner.invoke(app, ["generate", "--from", str(tmp_path / "a1111.png"), "-o", str(tmp_path / "x.png")])
    one_error_line(result, "image-to-image", "--init-image")


def test_strength_zero_steps_is_a_clear_error(tmp_path, red_circle):
    init = write_png(tmp_path / "red.png", red_circle)
    one_error_line(generate("--init-image", init, "--steps", "2", "--strength", "0.3", "-o", tmp_path / "x.png"),
                   "runs no step")
    one_error_line(generate("--init-image", init, "--strength", "1.5", "-o", tmp_path / "x.png"), "(0, 1]")


@pytest.mark.parametrize("content,fragment", [(b"not an image at all", "not an image"),
                                              (None, "no such file")])
def test_unreadable_init_images_get_one_line(tmp_path, content, fragment):
    path = tmp_path / "bad.png"
    if content is not None:
        path.write_bytes(content)
    one_error_line(generate("--init-image", path, "-o", tmp_path / "x.png"), "--init-image", fragment)


def test_a_truncated_png_gets_one_line(tmp_path, red_circle):
    write_png(tmp_path / "whole.png", red_circle)
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:200])
    one_error_line(generate("--init-image", tmp_path / "cut.png", "-o", tmp_path / "x.png"), "--init-image")


@pytest.mark.parametrize("size,fragment", [(["--width", "-8"], "--width"), (["--height", "0"], "--height"),
                                           (["--width", "100"], "multiple of 8"), (["--width", "9000"], "limit")])
def test_a_bad_size_is_refused_before_the_image_is_resized(tmp_path, red_circle, size, fragment):
    init = write_png(tmp_path / "red.png", red_circle)
    one_error_line(generate("--init-image", init, *size, "-o", tmp_path / "x.png"), fragment)


def test_bad_resize_and_blur_are_refused_up_front(tmp_path, red_circle):
    init = write_png(tmp_path / "red.png", red_circle)
    one_error_line(generate("--init-image", init, "--resize", "zoom", "-o", tmp_path / "x.png"), "--resize", "stretch")
    one_error_line(generate("--init-image", init, "--mask", init, "--mask-blur", "-2", "-o", tmp_path / "x.png"),
                   "--mask-blur")


def test_an_image_over_the_limit_is_refused_before_decoding(tmp_path):
    Image.new("RGB", (4100, 8)).save(tmp_path / "wide.png")
    one_error_line(generate("--init-image", tmp_path / "wide.png", "-o", tmp_path / "x.png"), "4100x8", "4096")


def test_mask_without_init_image_and_inpaint_notes(tmp_path, red_circle):
    mask = write_png(tmp_path / "m.png", np.zeros((64, 64), np.uint8))
    one_error_line(generate("--mask", mask, "-o", tmp_path / "x.png"), "--mask needs --init-image")
    init = write_png(tmp_path / "red.png", red_circle)
    black = generate("--init-image", init, "--mask", mask, "--steps", "8", "-o", tmp_path / "x.png")
    assert black.exit_code == 0 and "nothing is repainted" in black.output
    small = write_png(tmp_path / "small.png", np.full((32, 32), 255, np.uint8))
    white = generate("--init-image", init, "--mask", small, "--steps", "8", "-o", tmp_path / "y.png")
    assert white.exit_code == 0 and "stretched to the image" in white.output and "whole image is repainted" in white.output


def test_an_export_without_encoder_says_how_to_add_it(tmp_path, red_circle):
    import json

    folder = tmp_path / "old-export"
    shutil.copytree(DEFAULT_MODEL, folder)
    shutil.rmtree(folder / "vae_encoder")
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["components"]["vae_encoder"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    init = write_png(tmp_path / "red.png", red_circle)
    one_error_line(generate("--model", folder, "--init-image", init, "-o", tmp_path / "x.png"),
                   "no VAE encoder", "re-export", "sdcpu export")


def test_size_follows_the_init_image(tmp_path):
    assert target_size((100, 70), None, None, 8) == (96, 64)
    assert target_size((200, 100), 64, None, 8) == (64, 32)
    assert target_size((200, 100), None, 48, 8) == (96, 48)
    assert target_size((100, 70), 64, 64, 8) == (64, 64)


def test_resize_modes_keep_or_fill_the_aspect():
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :20] = 255
    assert resized(wide, 20, 20, "stretch").shape == (20, 20, 3)
    crop = resized(wide, 20, 20, "crop")
    assert crop[:, :5].min() == 255 and crop[:, -5:].max() == 0  # the centre 20 columns of the scaled image
    fit = resized(wide, 20, 20, "fit")
    assert fit.shape == (20, 20, 3) and np.array_equal(fit[0], fit[4])  # bands above and below repeat the edge
    with pytest.raises(UserError, match="--resize"):
        resized(wide, 20, 20, "zoom")


def test_mask_is_binarized_unless_blurred(tmp_path):
    grey = np.full((16, 16), 140, np.uint8)
    Image.fromarray(grey).save(tmp_path / "m.png")
    image = read_image_file(write_png(tmp_path / "i.png", np.zeros((16, 16, 3), np.uint8)))
    mask = read_image_file(tmp_path / "m.png", "--mask", grayscale=True)
    assert set(np.unique(mask_array(mask, image, 16, 16, "stretch", 0))) == {1.0}
    soft = mask_array(mask, image, 16, 16, "stretch", 2)
    assert 0.5 < soft.mean() < 0.6


@pytest.mark.parametrize("steps,strength,total", [(25, 0.75, 34), (1, 0.75, 2), (1, 0.5, 2), (4, 1.0, 4)])
def test_left_out_steps_run_the_family_default(steps, strength, total):
    assert image_steps(steps, strength) == total and int(total * strength) >= steps


def test_grid_over_strengths_encodes_once(tmp_path, red_circle, monkeypatch):
    from sdcpu.engine.img2img import ImageEncoder

    init = write_png(tmp_path / "red.png", red_circle)
    encoded = []
    compiled = ImageEncoder.graph.fget

    class Counting:
        def __init__(self, graph):
            self.graph = graph

        def __call__(self, **feeds):
            encoded.append(feeds["sample"].shape)
            return self.graph(**feeds)

        def __getattr__(self, name):
            return getattr(self.graph, name)

    def counting_graph(self):
        return Counting(compiled(self))

    monkeypatch.setattr(ImageEncoder, "graph", property(counting_graph))
    result = runner.invoke(app, ["grid", "a yellow circle on a blue background", "--init-image", init,
                                 "--strengths", "0.3,0.6", "--seeds", "1,2", "-o", str(tmp_path / "g.png")])
    assert result.exit_code == 0, result.output
    singles = sorted(p.name for p in tmp_path.glob("g-*.png"))
    assert len(singles) == 4 and any("-d0.3-" in name for name in singles)
    strengths = {parse_parameters(read_parameters(tmp_path / name))["Denoising strength"] for name in singles}
    assert strengths == {"0.3", "0.6"} and encoded == [(1, 3, 64, 64)]  # four cells, one encode
    assert 'Grid strengths: "0.3,0.6"' in read_parameters(tmp_path / "g.png")
    one_error_line(runner.invoke(app, ["grid", "a cat", "--strengths", "0.5", "-o", str(tmp_path / "x.png")]),
                   "--strengths needs --init-image")


def test_bench_times_the_encoder(tmp_path, red_circle):
    import json

    init = write_png(tmp_path / "red.png", red_circle)
    result = runner.invoke(app, ["bench", "--model", str(DEFAULT_MODEL), "--init-image", init, "--steps", "4",
                                 "--runs", "2", "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "b.json").read_text())["rows"][0]
    assert row["vae_encoder"] > 0 and "VAE encoder s" in result.output
