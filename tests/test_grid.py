"""`sdcpu grid`: sheet geometry and labels, one text-encoder run per grid, cells equal to `sdcpu generate`, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sdcpu.engine.cli import contact_sheet as cs
from sdcpu.engine.cli.app import app
from sdcpu.engine.cli.grid import run_grid
from sdcpu.engine.pipeline import Pipeline
from sdcpu.engine.png_text import read_parameters
from sdcpu.engine.pngmeta import params_from_text

runner = CliRunner()
SIZE = ("--width", "64", "--height", "64")


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result, result.output


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def region(sheet: np.ndarray, box) -> np.ndarray:
    left, top, right, bottom = box
    return sheet[top:bottom, left:right]


def has_ink(area: np.ndarray) -> bool:
    """Dark text on the light background: some pixel well below the background's grey."""
    return area.size > 0 and int(area.min()) < 128


def test_sheet_geometry_labels_and_cells(tiny_exports, tmp_path):
    out = tmp_path / "g.png"
    grid = run_grid("a cat", tiny_exports["sd15", "openvino"], steps="1,2,3", seeds="5,6",
                    width=64, height=64, output=out)
    assert grid.column_labels == ["1 step", "2 steps", "3 steps"]
    assert grid.row_labels == ["seed 5", "seed 6"]
    sheet = pixels(out)
    layout = grid.layout
    assert layout.column_width == 64 and layout.row_height == 64 + cs.CAPTION_HEIGHT
    width = 2 * cs.MARGIN + layout.label_width + cs.GAP + 3 * 64 + 2 * cs.GAP
    height = 2 * cs.MARGIN + cs.HEADER_HEIGHT + 2 * (64 + cs.CAPTION_HEIGHT) + cs.GAP
    assert sheet.shape == (height, width, 3) == (layout.height, layout.width, 3)

    singles = {}
    for r, seed in enumerate((5, 6)):
        for c, steps in enumerate((1, 2, 3)):
            path = tmp_path / f"g-s{steps}-seed{seed}.png"
            params = params_from_text(read_parameters(path))
            assert (params.steps, params.seed, params.width, params.prompt) == (steps, seed, 64, "a cat")
            singles[r, c] = pixels(path)
            np.testing.assert_array_equal(region(sheet, layout.cells[r][c]), singles[r, c])
            assert has_ink(region(sheet, layout.captions[r][c]))
        assert has_ink(region(sheet, layout.row_labels[r]))
    assert all(has_ink(region(sheet, box)) for box in layout.column_labels)
    assert sorted(grid.images) == sorted(tmp_path / f"g-s{s}-seed{e}.png" for s in (1, 2, 3) for e in (5, 6))
    images = list(singles.values())
    assert all(not np.array_equal(a, b) for i, a in enumerate(images) for b in images[i + 1:])


def test_sheet_widens_columns_for_long_labels_and_refuses_mixed_sizes():
    cells = [[np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 200, np.uint8)]]
    labels, captions = ["seed 1, cfg 7.5"], [["12.5 s", "0.1 s"]]
    sheet = cs.contact_sheet(cells, labels, ["1 step", "a much longer column label"], captions)
    layout = cs.sheet_layout(1, 2, 8, 8, labels, ["1 step", "a much longer column label"], captions)
    assert layout.column_width > 8 and sheet.shape == (layout.height, layout.width, 3)
    for c in range(2):
        np.testing.assert_array_equal(region(sheet, layout.cells[0][c]), cells[0][c])
    with pytest.raises(ValueError, match="one shape"):
        cs.contact_sheet([[cells[0][0], np.zeros((16, 8, 3), np.uint8)]], labels, ["a", "b"], captions)


class CountingGraph:
    """A text encoder graph that counts its runs."""

    def __init__(self, graph, calls: list):
        self.graph, self.calls = graph, calls

    def __call__(self, **inputs):
        self.calls.append("call")
        return self.graph(**inputs)

    def run(self, **inputs):
        self.calls.append("run")
        return self.graph.run(**inputs)

    def __getattr__(self, name):
        return getattr(self.graph, name)


@pytest.mark.parametrize("guidance,encodes,encoder_runs", [
    ("7.5", 1, 2),       # CFG: prompt + negative prompt, once for the whole grid
    ("1,7.5", 2, 3),     # CFG off (prompt only) and on (prompt + negative)
])
def test_text_encoder_runs_once_per_grid(tiny_exports, tmp_path, monkeypatch, guidance, encodes, encoder_runs):
    encoder_calls, conditioning_calls = [], []
    real_init, real_conditioning = Pipeline.__init__, Pipeline.conditioning

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.text.encoders = [CountingGraph(g, encoder_calls) for g in self.text.encoders]

    def conditioning(self, request, cfg):
        conditioning_calls.append(cfg)
        return real_conditioning(self, request, cfg)

    monkeypatch.setattr(Pipeline, "__init__", init)
    monkeypatch.setattr(Pipeline, "conditioning", conditioning)
    seeds = "5,6" if guidance == "7.5" else "5"
    result, text = run("grid", "a cat", "--model", tiny_exports["sd15", "openvino"], "--steps", "1,2,3",
                       "--seeds", seeds, "--guidance", guidance, *SIZE, "--output", tmp_path / "g.png")
    assert result.exit_code == 0, text
    assert "(2 rows x 3 columns)" in text
    assert len(conditioning_calls) == encodes and len(encoder_calls) == encoder_runs
    assert len(list(tmp_path.glob("g-s*-seed5*.png"))) == 3 * (1 if guidance == "7.5" else 2)


@pytest.mark.parametrize("family,fmt,guidance,cell", [
    ("sd15", "openvino", None, "g-s2-seed5.png"),
    ("lcm", "onnx", "2,8", "g-s2-seed5-g8.png"),  # LCM: the guidance embedding must follow each row's value
])
def test_grid_cell_equals_generate(tiny_exports, tmp_path, family, fmt, guidance, cell):
    model = tiny_exports[family, fmt]
    grid_args = ["--guidance", guidance] if guidance else []
    result, text = run("grid", "a red circle", "--model", model, "--steps", "1,2", "--seeds", "5,6",
                       *grid_args, *SIZE, "--output", tmp_path / "g.png")
    assert result.exit_code == 0, text
    one_args = ["--guidance", "8"] if guidance else []
    result, text = run("generate", "a red circle", "--model", model, "--steps", 2, "--seed", 5,
                       *one_args, *SIZE, "--output", tmp_path / "one.png")
    assert result.exit_code == 0, text
    np.testing.assert_array_equal(pixels(tmp_path / cell), pixels(tmp_path / "one.png"))
    assert params_from_text(read_parameters(tmp_path / cell)) == params_from_text(read_parameters(tmp_path / "one.png"))


@pytest.mark.parametrize("args,expected", [
    (("--steps", "2,x"), "--steps must be a comma-separated list of integers >= 1"),
    (("--steps", "0,2"), "--steps must be"),
    (("--seeds", "1,-1"), "--seeds must be"),
    (("--guidance", "7.5,abc"), "--guidance must be a comma-separated list of numbers"),
    (("--guidance", "nan"), "--guidance must be"),
    (("--seeds", "3,3"), "--seeds lists 3 more than once"),
    (("--steps", ",".join(map(str, range(1, 10))), "--seeds", "1,2,3,4,5,6,7,8"), "grid of 72 cells; at most 64"),
    (("--steps", "1,2", "--width", "60"), "multiple of 8"),
    (("--steps", "1,2", "--scheduler", "heunn"), "unknown sampler 'heunn'; sdcpu's own"),
        (("--steps", "1,2", "--sampler", "DPM++ SDE"), "nearest we have is 'DPM++ 2S a'"),
        (("--steps", "1,2", "--sampler", "Euler", "--schedule-type", "Beta"), "nearest we have is 'Karras'"),
        (("--steps", "1,2", "--subseed-strengths", "0,0.1"), "--subseed-strengths needs --subseed"),
])
def test_grid_user_errors(tiny_exports, tmp_path, args, expected):
    result, text = run("grid", "p", "--model", tiny_exports["sd15", "openvino"], "--seeds", "1", *SIZE,
                       *args, "--output", tmp_path / "g.png")
    assert result.exit_code == 2, text
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], text
    assert list(tmp_path.iterdir()) == []


def test_every_cell_is_validated_before_any_renders(tiny_exports, tmp_path, monkeypatch):
    """LCM runs 2 steps but not 400: the error comes before the 2-step cell is generated."""
    generated = []
    monkeypatch.setattr(Pipeline, "generate", lambda self, request, **kw: generated.append(request))
    result, text = run("grid", "p", "--model", tiny_exports["lcm", "onnx"], "--steps", "2,400", "--seeds", "1",
                       *SIZE, "--output", tmp_path / "g.png")
    assert result.exit_code == 2 and "LCM takes at most" in text and "Traceback" not in text, text
    assert generated == [] and list(tmp_path.iterdir()) == []
