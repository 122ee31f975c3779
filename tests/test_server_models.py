"""`sdcpu serve` with several models: family defaults, switching through the queue, override_settings, and the
same pixels as `sdcpu generate` for each (the tiny random LCM and SDXL-Turbo exports beside the bundled model)."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from sdcpu.engine.request_defaults import default_model
from tests.live_server import live_server


@pytest.fixture(scope="module")
def server(tiny_exports, tmp_path_factory):
    models = [default_model(), tiny_exports["lcm", "onnx"], tiny_exports["sdxl-turbo", "openvino"]]
    args = [arg for folder in models for arg in ("--model", str(folder))]
    with live_server(tmp_path_factory.mktemp("serve-models"), *args) as live:
        yield live


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def cli_image(tmp_path, *args) -> np.ndarray:
    out = tmp_path / "cli.png"
    subprocess.run([sys.executable, "-m", "sdcpu.engine.cli.app", "generate", *map(str, args), "-o", str(out)],
                   check=True, capture_output=True)
    return np.asarray(Image.open(out))


def test_models_are_listed_by_name_with_their_family_defaults(server):
    status, listed = server.get("/sdapi/v1/sd-models")
    assert status == 200
    assert [m["model_name"] for m in listed] == ["sdcpu-shapes", "lcm-onnx", "sdxl-turbo-openvino"]
    assert all("/" not in m["filename"] for m in listed)  # names, never this machine's paths
    _, defaults = server.get("/sdcpu/v1/models")
    by_name = {m["model_name"]: m for m in defaults}
    assert [by_name["lcm-onnx"][k] for k in ("family", "steps", "cfg_scale", "sampler_name")] == ["lcm", 4, 8.0, "lcm"]
    assert [by_name["sdxl-turbo-openvino"][k] for k in ("steps", "cfg_scale", "sampler_name")] == [1, 0.0, "euler-a"]
    assert by_name["sdcpu-shapes"]["width"] == 64


def test_a_request_for_another_model_gets_its_defaults_and_the_clis_pixels(server, tiny_exports, tmp_path):
    status, answer = server.post("/sdapi/v1/txt2img", {"prompt": "a dog", "seed": 5,
                                                       "override_settings": {"sd_model_checkpoint": "lcm-onnx"}})
    assert status == 200, answer
    info = json.loads(answer["info"])
    assert (info["steps"], info["cfg_scale"], info["sampler_name"], info["sd_model_name"]) == (4, 8.0, "LCM", "lcm-onnx")
    expected = cli_image(tmp_path, "a dog", "--model", tiny_exports["lcm", "onnx"], "--seed", 5)
    assert np.array_equal(pixels(answer["images"][0]), expected)
    _, options = server.get("/sdapi/v1/options")
    assert options["sd_model_checkpoint"] == "sdcpu-shapes"  # an override lasts one request


def test_override_settings_clip_skip_and_noise_match_the_cli(server, tmp_path):
    body = {"prompt": "a red circle", "seed": 9, "steps": 8, "sampler_name": "Euler a",
            "override_settings": {"CLIP_stop_at_last_layers": 2, "randn_source": "NV", "eta_noise_seed_delta": 31337}}
    status, answer = server.post("/sdapi/v1/txt2img", body)
    assert status == 200, answer
    infotext = json.loads(answer["info"])["infotexts"][0]
    assert all(field in infotext for field in ("Clip skip: 2", "RNG: NV", "ENSD: 31337"))
    expected = cli_image(tmp_path, "a red circle", "--seed", 9, "--steps", 8, "--sampler", "Euler a",
                         "--clip-skip", 2, "--noise", "nv", "--ensd", 31337)
    assert np.array_equal(pixels(answer["images"][0]), expected)


def test_switching_model_waits_for_the_running_job(server):
    finished = {}

    def long_job():
        finished["status"], finished["answer"] = server.post("/sdapi/v1/txt2img",
                                                             {"prompt": "a square", "steps": 60, "seed": 1})
        finished["job"] = time.monotonic()

    worker = threading.Thread(target=long_job)
    worker.start()
    deadline = time.monotonic() + 30
    while server.get("/sdapi/v1/progress")[1]["state"]["sampling_step"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    status, _ = server.post("/sdapi/v1/options", {"sd_model_checkpoint": "sdxl-turbo-openvino"})
    switched = time.monotonic()
    worker.join()
    assert status == 200 and finished["status"] == 200
    assert json.loads(finished["answer"]["info"])["sd_model_name"] == "sdcpu-shapes"  # not swapped mid-job
    assert finished["job"] <= switched + 0.5
    _, options = server.get("/sdapi/v1/options")
    assert options["sd_model_checkpoint"] == "sdxl-turbo-openvino"
    _, answer = server.post("/sdapi/v1/txt2img", {"prompt": "a cat", "seed": 2})
    info = json.loads(answer["info"])
    assert (info["sd_model_name"], info["steps"], info["cfg_scale"]) == ("sdxl-turbo-openvino", 1, 0.0)
    server.post("/sdapi/v1/options", {"sd_model_checkpoint": "sdcpu-shapes"})


def test_overrides_kept_when_asked_and_the_body_clip_skip(server):
    body = {"prompt": "a cat", "seed": 3, "override_settings_restore_afterwards": False,
            "override_settings": {"sd_model_checkpoint": "lcm-onnx", "CLIP_stop_at_last_layers": 2}}
    status, answer = server.post("/sdapi/v1/txt2img", body)
    assert status == 200, answer
    _, options = server.get("/sdapi/v1/options")
    assert (options["sd_model_checkpoint"], options["CLIP_stop_at_last_layers"]) == ("lcm-onnx", 2)
    assert server.post("/sdapi/v1/options", {"sd_model_checkpoint": "sdcpu-shapes", "CLIP_stop_at_last_layers": 1})[0] == 200
    status, answer = server.post("/sdapi/v1/txt2img", {"prompt": "a cat", "seed": 3, "steps": 4, "clip_skip": 2})
    assert status == 200 and "Clip skip: 2" in json.loads(answer["info"])["infotexts"][0]
    status, answer = server.post("/sdapi/v1/txt2img", {"prompt": "a cat", "clip_skip": True})
    assert status == 422 and "clip_skip" in answer["detail"]


def test_memory_refresh_and_prompt_limit(server):
    status, memory = server.get("/sdapi/v1/memory")
    assert status == 200 and memory["ram"]["total"] > memory["ram"]["process_rss"] > 0
    assert server.post("/sdapi/v1/refresh-checkpoints", {})[0] == 200
    assert len(server.get("/sdapi/v1/sd-models")[1]) == 3  # started with --model: the same three
    status, answer = server.post("/sdapi/v1/txt2img", {"prompt": "a " * 15_000})
    assert status == 422 and "characters" in answer["detail"]
