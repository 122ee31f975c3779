"""The CLI as a user meets it: defaults, PNG parameters, seeds, and one-line errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdcpu.engine.cli.app import app
from sdcpu.engine.png_text import read_parameters
from sdcpu.engine.pngmeta import params_from_text

runner = CliRunner()


def run(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result, result.output


def assert_user_error(args, expected: str) -> None:
    result, text = run(*args)
    assert result.exit_code == 2, text
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], text


def test_generate_writes_png_with_parameters(tiny_exports, tmp_path):
    out = tmp_path / "cat.png"
    result, text = run("generate", "a cat, sitting", "--model", tiny_exports["sd15", "openvino"],
                       "--steps", 3, "--seed", 42, "--width", 64, "--height", 64, "--output", out)
    assert result.exit_code == 0, text
    params = params_from_text(read_parameters(out))
    assert (params.prompt, params.steps, params.seed, params.width, params.height) == ("a cat, sitting", 3, 42, 64, 64)
    assert params.sampler == "pndm" and params.guidance == 7.5
    assert "s/step" in text


@pytest.mark.parametrize("family,expected", [
    ("lcm", (4, 8.0, "lcm", 64, 64)),
    ("sdxl-turbo", (1, 0.0, "euler-a", 64, 64)),
])
def test_family_defaults_and_random_seed(tiny_exports, tmp_path, family, expected):
    out = tmp_path / "default.png"
    result, text = run("generate", "a dog", "--model", tiny_exports[family, "onnx"], "--output", out)
    assert result.exit_code == 0, text
    params = params_from_text(read_parameters(out))
    assert (params.steps, params.guidance, params.sampler, params.width, params.height) == expected
    assert params.model_family == family
    assert f"seed: {params.seed}" in text


def test_batch_writes_one_file_per_seed(tiny_exports, tmp_path):
    result, text = run("generate", "x", "--model", tiny_exports["sd15", "onnx"], "--steps", 2, "--seed", 10,
                       "--batch", 2, "--width", 64, "--height", 64, "--output", tmp_path / "b.png")
    assert result.exit_code == 0, text
    seeds = [params_from_text(read_parameters(tmp_path / f"b-{s}.png")).seed for s in (10, 11)]
    assert seeds == [10, 11]


@pytest.mark.parametrize("args,expected", [
    (("--width", 60), "multiple of 8"),
    (("--height", 0), "multiple of 8"),
    (("--steps", 0), "at least 1"),
    (("--scheduler", "heunn"), "unknown sampler 'heunn'"),
    (("--sampler", "DPM++ 2M SDE Karras"), "not available in sdcpu (its Brownian-tree noise needs torchsde"),
    (("--clip-skip", "13"), "--clip-skip must be a whole number from 1 to 12"),
    (("--noise", "gpu"), "--noise must be one of cpu, nv"),
    (("--subseed-strength", "0.5"), "--subseed-strength needs --subseed"),
    (("--seed-resize-from", "64by64"), "--seed-resize-from: size '64by64' is not WIDTHxHEIGHT"),
    (("--schedule-type", "Karras"), "--schedule-type applies to the Automatic1111 samplers"),
    (("--prompt-syntax", "comfy"), "--prompt-syntax must be one of a1111, plain"),
    (("--batch", 0), "at least 1"),
    (("--seed", -5), "seed"),
    (("--seed", 2**64), "seed"),
    (("--seed", 2**64 - 1, "--batch", 2), "below 2**64"),
])
def test_bad_generate_options(tiny_exports, args, expected):
    assert_user_error(["generate", "p", "--model", tiny_exports["sd15", "openvino"], *args], expected)


def test_missing_and_incomplete_model_folders(tiny_exports, tmp_path):
    assert_user_error(["generate", "p", "--model", tmp_path / "nope"], "not found")
    assert_user_error(["generate", "p", "--model", tmp_path], "not an exported sdcpu model")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_exports["sd15", "openvino"], broken)
    (broken / "unet" / "model.bin").write_bytes(b"truncated")
    assert_user_error(["generate", "p", "--model", broken], "cannot load unet")
    (broken / "unet" / "model.bin").unlink()
    assert_user_error(["generate", "p", "--model", broken], "missing unet/model.bin")
    onnx_copy = tmp_path / "broken-onnx"
    shutil.copytree(tiny_exports["sd15", "onnx"], onnx_copy)
    (onnx_copy / "vae_decoder" / "model.onnx").write_bytes(b"not a protobuf")
    assert_user_error(["generate", "p", "--model", onnx_copy], "cannot load vae_decoder")
    (broken / "manifest.json").write_text("{not json")
    assert_user_error(["generate", "p", "--model", broken], "corrupt")


def test_export_errors(tiny_sources, tiny_exports, tmp_path):
    assert_user_error(["export", tmp_path / "absent", tmp_path / "o"], "source not found")
    assert_user_error(["export", tmp_path, tmp_path / "o"], "no model_index.json")
    assert_user_error(["export", tiny_sources["sd15"], tmp_path / "o", "--precision", "int3"], "precision")
    assert_user_error(["export", tiny_sources["sd15"], tmp_path / "o", "--format", "tflite"], "format")
    assert_user_error(["export", tiny_sources["sd15"], tiny_exports["sd15", "onnx"]], "--overwrite")
    assert_user_error(["export", "sdcpu-tests/no-such-model", tmp_path / "o"], "cannot reach the model hub")


def test_interrupted_export_leaves_nothing_the_runtime_accepts(tiny_sources, tmp_path, monkeypatch):
    import sdcpu.export.exporter as exporter

    real = exporter.export_onnx

    def interrupt_on_unet(spec, path):
        if spec.name == "unet":
            raise KeyboardInterrupt
        return real(spec, path)

    monkeypatch.setattr(exporter, "export_onnx", interrupt_on_unet)
    out = tmp_path / "model"
    result, text = run("export", tiny_sources["sd15"], out)
    assert result.exit_code == 130 and "Traceback" not in text
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_export_whose_fp32_graph_disagrees_with_pytorch_fails(tiny_sources, tmp_path, monkeypatch):
    """A UNet graph that no longer matches its module (here: torch's references shifted) aborts the export."""
    import sdcpu.export.exporter as exporter

    real = exporter.torch_outputs

    def shifted_unet_references(spec):
        references = real(spec)
        if spec.name == "unet":
            references = [[output + 0.5 * output.std() for output in outputs] for outputs in references]
        return references

    monkeypatch.setattr(exporter, "torch_outputs", shifted_unet_references)
    out = tmp_path / "model"
    assert_user_error(["export", tiny_sources["sd15"], out, "--format", "onnx"],
                      "unet: exported graph disagrees with PyTorch")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.parametrize("model", ["tiny export", "bundled default"])
def test_runtime_never_imports_torch_or_diffusers(model, tiny_exports, tmp_path):
    args = ["a red circle on a blue background", "--seed", "1"] if model == "bundled default" else [
        "a cat", "--model", str(tiny_exports["sd15", "openvino"]), "--steps", "2", "--width", "64", "--height", "64"]
    code = (
        "import sys\n"
        "from sdcpu.engine.cli.app import main\n"
        f"sys.argv = ['sdcpu', 'generate', *{args!r}, '--output', r'{tmp_path / 'x.png'}']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers'))\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "x.png").is_file()
