"""`sdcpu bench`: the --quality table and JSON, the latency table, and one-line errors for bad options."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from sdcpu.engine.cli.app import app
from sdcpu.engine.measure.quality import QualityRow, evaluate, seed_runs
from sdcpu.engine.pipeline import Pipeline
from sdcpu.engine.samplers import SAMPLERS
from sdcpu.models.shapes.grammar import evaluation_prompts
from tests.test_cli import assert_user_error

runner = CliRunner()
QUALITY_COLUMNS = ("model", "scheduler", "steps", "guidance", "images", "match", "background", "colour",
                   "shape", "count", "s/image")


@pytest.fixture(scope="module")
def model(tiny_exports):
    return tiny_exports["sd15", "openvino"]


def run(*args):
    result = runner.invoke(app, ["bench", *[str(a) for a in args]])
    return result, result.output


def table_rows(text: str, first_cell: str) -> list[list[str]]:
    """The cells of the markdown rows whose first cell is `first_cell`."""
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row] for row in rows if row[0].strip() == first_cell]


def test_quality_table_and_json_have_every_field(model, tmp_path):
    out = tmp_path / "quality.json"
    result, text = run("--model", model, "--quality", "--prompts", 2, "--seeds", "3,4", "--steps", "1,2",
                       "--schedulers", "euler", "--json", out)
    assert result.exit_code == 0, text
    header = table_rows(text, "model")[0]
    assert tuple(header) == QUALITY_COLUMNS
    rows = table_rows(text, "fp32")
    assert [(r[1], r[2], r[4]) for r in rows] == [("euler", "1", "4"), ("euler", "2", "4")]
    data = json.loads(out.read_text())
    assert data["prompts"] == evaluation_prompts(2) and data["seeds"] == [3, 4]
    fields = {f.name for f in dataclasses.fields(QualityRow)}
    assert [set(row) for row in data["rows"]] == [fields, fields]
    assert [(row["steps"], row["images"], row["guidance"]) for row in data["rows"]] == [(1, 4, 7.5), (2, 4, 7.5)]
    for row in data["rows"]:
        assert all(0.0 <= row[key] <= 1.0 for key in ("match", "background", "color", "shape", "count"))
        assert row["match"] <= min(row["background"], row["color"], row["shape"])


def test_batched_seeds_score_as_one_at_a_time(model):
    pipe = Pipeline.load(model)
    prompts = evaluation_prompts(2)
    batched = evaluate(pipe, prompts, [5, 6, 7], steps=2, sampler="euler-a", max_batch=8)
    single = evaluate(pipe, prompts, [5, 6, 7], steps=2, sampler="euler-a", max_batch=1)
    assert dataclasses.replace(batched, seconds=0) == dataclasses.replace(single, seconds=0)
    assert batched.images == 6


def test_seed_runs_group_consecutive_seeds():
    assert seed_runs([1, 2, 3, 7, 8, 4], max_batch=2) == [(1, 2), (3, 1), (7, 2), (4, 1)]


def test_latency_prints_seconds_per_step(model):
    result, text = run("--model", model, "--steps", "1,3", "--runs", 1)
    assert result.exit_code == 0, text
    assert "s/step median" in text
    assert [(r[0], r[1]) for r in table_rows(text, "pndm")] == [("pndm", "1"), ("pndm", "3")]


def test_all_schedulers_that_run_on_an_eps_model(model, tmp_path):
    out = tmp_path / "latency.json"
    result, text = run("--model", model, "--steps", "2", "--runs", 1, "--schedulers", "all", "--json", out)
    assert result.exit_code == 0, text
    assert [row["sampler"] for row in json.loads(out.read_text())["rows"]] == list(SAMPLERS)


@pytest.mark.parametrize("args,expected", [
    (("--steps", "2,x"), "--steps must be a comma-separated list"),
    (("--steps", "0"), "--steps must be a comma-separated list"),
    (("--steps", ""), "--steps must be a comma-separated list"),
    (("--seeds", "1,-2", "--quality"), "--seeds must be a comma-separated list"),
    (("--schedulers", "heun"), "unknown scheduler 'heun'"),
    (("--schedulers", "euler,nope", "--quality"), "unknown scheduler 'nope'"),
    (("--prompts", "0", "--quality"), "--prompts must be at least 1"),
    (("--runs", "0"), "--runs must be at least 1"),
])
def test_bad_options_give_one_line(model, args, expected):
    assert_user_error(["bench", "--model", str(model), *args], expected)


def test_prompt_file_outside_the_grammar_is_refused(model, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle on a blue background\n\na photo of a cat\n")
    result, text = run("--model", model, "--quality", "--prompt-file", prompts)
    assert result.exit_code == 2, text
    assert text.strip().splitlines()[-1] == (
        f"error: --quality scores shapes-grammar captions only; {prompts} line 3: "
        "not a caption of the shapes grammar: 'a photo of a cat'"
    )
