"""bench/optimum_layout.py and the OpenVINO GenAI / optimum-intel peer adapters, on the tiny exports."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
OPTIMUM_PYTHON = Path(os.environ.get("SDCPU_OPTIMUM_VENV", BENCH / ".venv-optimum")) / "bin" / "python"
# Loop iterations per image for 2 steps with each family's default scheduler: diffusers' and GenAI's
# PNDM (sd15) run steps + 1 UNet calls, LCM and Euler-ancestral (sdxl-turbo) one per step.
CALLBACKS_FOR_2_STEPS = {"sd15": [0, 1, 2], "lcm": [0, 1], "sdxl-turbo": [0, 1]}
GUIDANCE = {"sd15": 7.5, "lcm": 8.0, "sdxl-turbo": 0.0}


def bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings(family: str, width: int = 64, height: int = 48) -> dict:
    return {"family": family, "width": width, "height": height, "guidance": GUIDANCE[family], "prompt": "a red cube",
            "negative_prompt": "blurry", "inference_precision": "f32", "threads": None}


@pytest.fixture(scope="module")
def layouts(tiny_exports, tmp_path_factory) -> dict[str, Path]:
    write = bench_module("optimum_layout").write_optimum_layout
    root = tmp_path_factory.mktemp("optimum-layouts")
    return {family: write(tiny_exports[family, "openvino"], root / family, log=lambda line: None)
            for family in ("sd15", "lcm", "sdxl-turbo")}


def test_layout_files_and_links(layouts, tiny_exports):
    sd15 = layouts["sd15"]
    index = json.loads((sd15 / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["scheduler"] == ["diffusers", "PNDMScheduler"] and index["vae"] == ["diffusers", "AutoencoderKL"]
    for name in ("text_encoder", "unet", "vae_decoder"):
        assert (sd15 / name / "config.json").is_file()
        linked = sd15 / name / "openvino_model.bin"
        assert linked.samefile(tiny_exports["sd15", "openvino"] / name / "model.bin")  # linked, not copied
    assert (sd15 / "tokenizer" / "tokenizer.json").is_file()
    if importlib.util.find_spec("openvino_tokenizers"):  # GenAI's tokenizer IR, made when the package is here
        assert (sd15 / "tokenizer" / "openvino_tokenizer.xml").is_file()
        assert (sd15 / "tokenizer" / "openvino_detokenizer.xml").is_file()
    vae = json.loads((sd15 / "vae_decoder" / "config.json").read_text())
    assert vae["scaling_factor"] == pytest.approx(0.18215) and vae["latent_channels"] == 4
    assert json.loads((layouts["lcm"] / "unet" / "config.json").read_text())["time_cond_proj_dim"] == 32
    sdxl = json.loads((layouts["sdxl-turbo"] / "model_index.json").read_text())
    assert sdxl["_class_name"] == "StableDiffusionXLPipeline" and sdxl["tokenizer_2"] == ["transformers", "CLIPTokenizer"]
    assert sdxl["force_zeros_for_empty_prompt"] is True


def test_layout_rewrites_its_own_folder_only(layouts, tiny_exports, tmp_path):
    write = bench_module("optimum_layout").write_optimum_layout
    again = write(tiny_exports["sd15", "openvino"], layouts["sd15"], log=lambda line: None)
    assert (again / "model_index.json").is_file() and not again.with_name(again.name + ".partial").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        write(tiny_exports["sd15", "openvino"], foreign, log=lambda line: None)
    assert (foreign / "keep.txt").is_file()


def _infer(xml: Path, inputs: dict) -> list[np.ndarray]:
    import openvino as ov

    compiled = ov.Core().compile_model(xml, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return [np.array(v) for v in compiled(inputs).values()]


def test_edited_graphs_compute_what_ours_do(layouts, tiny_exports):
    """The int64 timestep UNet and the re-laid-out SDXL text encoders give our outputs, at the positions the peers read."""
    export, layout = tiny_exports["sdxl-turbo", "openvino"], layouts["sdxl-turbo"]
    ids = {"input_ids": np.array([[998, 320, 714, 999] + [0] * 73], dtype=np.int64)}
    for name in ("text_encoder", "text_encoder_2"):
        ours = _infer(export / name / "model.xml", ids)
        theirs = _infer(layout / name / "openvino_model.xml", ids)
        layers = json.loads((layout / name / "config.json").read_text())["num_hidden_layers"]
        assert len(theirs) == layers + 3
        np.testing.assert_array_equal(theirs[layers + 1], ours[0])  # GenAI: num_hidden_layers + 1 = hidden_states[-2]
        if name == "text_encoder_2":
            np.testing.assert_array_equal(theirs[0], ours[1])  # text_embeds first
    rng = np.random.default_rng(0)
    unet = {"sample": rng.standard_normal((2, 4, 6, 8), dtype=np.float32),
            "encoder_hidden_states": rng.standard_normal((2, 77, 64), dtype=np.float32),
            "text_embeds": rng.standard_normal((2, 32), dtype=np.float32),
            "time_ids": np.tile(np.array([64, 48, 0, 0, 64, 48], dtype=np.float32), (2, 1))}
    ours = _infer(export / "unet" / "model.xml", {**unet, "timestep": np.array([999.0], dtype=np.float32)})
    theirs = _infer(layout / "unet" / "openvino_model.xml", {**unet, "timestep": np.array([999], dtype=np.int64)})
    np.testing.assert_array_equal(theirs[0], ours[0])


@pytest.mark.parametrize("family", ["sd15", "lcm", "sdxl-turbo"])
def test_genai_generates(layouts, family):
    pytest.importorskip("openvino_genai")
    peer = bench_module("peer_genai")
    assert "openvino_genai" in peer.versions()
    generate = peer.load(layouts[family], settings(family))
    calls: list[int] = []
    assert generate(2, 3, calls.append) is generate.last_image
    assert calls == CALLBACKS_FOR_2_STEPS[family]
    assert generate.last_image.shape == (48, 64, 3) and generate.last_image.dtype == np.uint8
    again = generate(2, 3, lambda i: None)
    np.testing.assert_array_equal(again, generate.last_image)  # the seed fixes the image


OPTIMUM_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import peer_optimum
results = {"versions": peer_optimum.versions()}
for family, folder, settings in json.loads(sys.argv[2]):
    generate = peer_optimum.load(Path(folder), settings)
    calls = []
    image = generate(2, 3, calls.append)
    results[family] = {"calls": calls, "shape": list(image.shape), "dtype": str(image.dtype)}
print("RESULT " + json.dumps(results))
"""


@pytest.mark.skipif(not OPTIMUM_PYTHON.is_file(), reason="no optimum venv (bash bench/setup_optimum_venv.sh)")
def test_optimum_generates_in_its_venv(layouts):
    jobs = [(family, str(layouts[family]), settings(family)) for family in ("sd15", "lcm", "sdxl-turbo")]
    run = subprocess.run([str(OPTIMUM_PYTHON), "-c", OPTIMUM_SCRIPT, str(BENCH), json.dumps(jobs)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))
    results = json.loads(line[len("RESULT "):])
    assert results["versions"]["optimum-intel"] and "+cpu" in results["versions"]["torch"]
    for family, _, _ in jobs:
        assert results[family] == {"calls": CALLBACKS_FOR_2_STEPS[family], "shape": [48, 64, 3], "dtype": "uint8"}


def test_peer_modules_import_only_the_standard_library():
    """peer_optimum runs under another interpreter: module level must not need openvino, torch or sdcpu."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import peer_genai, peer_optimum; "
            "heavy = {'openvino', 'openvino_genai', 'torch', 'engine', 'diffusers', 'optimum'} & set(sys.modules); "
            "sys.exit(str(sorted(heavy)) if heavy else 0)")
    run = subprocess.run([sys.executable, "-c", code, str(BENCH)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
