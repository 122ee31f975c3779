"""`sdcpu serve` driven by the real `webuiapi` client (mix1009/sdwebuiapi), the package A1111 scripts use.

One server on the bundled 64x64 shapes model (plus a copy of it in the server's folder, so switching models
has somewhere to go), started once for the module; a second one with --api-auth for the credential checks.
txt2img and img2img through the client, the PNGs it gets back re-read and re-made by the CLI pixel for pixel,
png-info, the lists clients read on start, model switching, interrupt, and basic auth on every route.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import requests
import webuiapi
from PIL import Image, ImageDraw

from sdcpu.engine.request_defaults import default_model
from tests.live_server import live_server

PROMPT = "two small yellow triangles on a white background"
BATCH = dict(prompt=PROMPT, seed=7, steps=12, width=64, height=64, sampler_name="Euler a", cfg_scale=2, batch_size=2)
COPY = "shapes-copy"
"""A copy of the bundled model in the server's folder: `serve` without --model lists it second."""
USER, PASSWORD = "user", "secret"
CLI = [sys.executable, "-m", "sdcpu.engine.cli.app"]


def port_of(server) -> int:
    return urlparse(server.url).port


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-webuiapi")
    shutil.copytree(default_model(), root / COPY)
    with live_server(root) as running:
        yield running


@pytest.fixture(scope="module")
def api(server) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=port_of(server))


@pytest.fixture(scope="module")
def batch(api) -> webuiapi.WebUIApiResult:
    """The txt2img batch most tests start from: seed 7, two images."""
    return api.txt2img(**BATCH)


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else Image.open(image).convert("RGB"))


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"sdcpu {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def written(stdout: str) -> dict[int, Path]:
    """`generate`'s "wrote PATH (seed N)" lines, by seed."""
    found = {}
    for line in stdout.splitlines():
        if line.startswith("wrote "):
            path, _, rest = line[len("wrote "):].partition(" (seed ")
            found[int(rest.split(")")[0].split(",")[0])] = Path(path)
    return found


def info_fields(stdout: str) -> dict[str, str]:
    """`sdcpu info`'s "Key:   value" lines (up to the first blank line)."""
    fields = {}
    for line in stdout.splitlines():
        if not line.strip():
            break
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def wait_for_progress(server, condition, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, answer = server.get("/sdapi/v1/progress?skip_current_image=true")
        assert status == 200
        if condition(answer):
            return answer
        time.sleep(0.05)
    raise AssertionError(f"/progress never got there in {timeout} s; last: {answer}")


def in_thread(work) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run():
        try:
            box["result"] = work()
        except Exception as exc:  # the test reads it
            box["error"] = exc
        box["finished"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


# --- txt2img ------------------------------------------------------------------------------------------------


def test_txt2img_batch_images_and_info(batch):
    assert len(batch.images) == 2
    assert all(isinstance(image, Image.Image) and image.size == (64, 64) for image in batch.images)
    info = batch.info
    assert isinstance(info, dict)
    assert info["seed"] == 7
    assert info["all_seeds"] == [7, 8]
    assert len(info["infotexts"]) == 2
    assert info["interrupted"] is False
    assert info["sampler_name"] == "Euler a" and info["steps"] == 12 and info["cfg_scale"] == 2
    for image, infotext, seed in zip(batch.images, info["infotexts"], (7, 8)):
        assert image.info["parameters"] == infotext
        assert infotext.startswith(PROMPT + "\n")
        assert f"Seed: {seed}," in infotext and "Steps: 12," in infotext and "Sampler: Euler a," in infotext
        assert "Size: 64x64" in infotext
    assert not np.array_equal(pixels(batch.images[0]), pixels(batch.images[1])), "two seeds, one picture"
    assert pixels(batch.images[0]).std() > 1, "a blank image"


def test_txt2img_png_reread_and_remade_by_the_cli(batch, tmp_path):
    """The API's PNGs as files: `sdcpu info` reads them, `generate --from` and the same flags re-make them."""
    api_files = {}
    for seed, encoded in zip((7, 8), batch.json["images"]):
        api_files[seed] = tmp_path / f"api-{seed}.png"
        api_files[seed].write_bytes(base64.b64decode(encoded))

    for seed, path in api_files.items():
        fields = info_fields(cli("info", str(path), cwd=tmp_path).stdout)
        assert fields["Prompt"] == PROMPT
        assert fields["Seed"] == str(seed)
        assert fields["Steps"] == "12" and fields["Sampler"] == "Euler a" and fields["CFG scale"] == "2"
        assert fields["Size"] == "64x64" and fields["Model"] == "sdcpu-shapes"

        remade = tmp_path / f"from-{seed}.png"
        assert written(cli("generate", "--from", str(path), "-o", str(remade), cwd=tmp_path).stdout) == {seed: remade}
        assert np.array_equal(pixels(remade), pixels(path)), f"generate --from api-{seed}.png drew another image"

    direct = written(cli("generate", PROMPT, "--seed", "7", "--batch", "2", "--steps", "12", "--sampler", "Euler a",
                         "--guidance", "2", "-o", str(tmp_path / "direct.png"), cwd=tmp_path).stdout)
    assert sorted(direct) == [7, 8]
    for seed, path in direct.items():
        assert np.array_equal(pixels(path), pixels(api_files[seed])), f"seed {seed}: CLI and API pixels differ"
        served = Image.open(api_files[seed]).info["parameters"]
        assert "Model path:" not in served  # the server does not tell clients its folders
        assert without_model_path(Image.open(path).info["parameters"]) == served


def without_model_path(infotext: str) -> str:
    return re.sub(r", Model path: [^,]*", "", infotext)


# --- img2img ------------------------------------------------------------------------------------------------

SQUARE = (16, 16, 47, 47)
"""The mask's white square (inclusive corners)."""
FAR = 8
"""Pixels this far from the square are untouched by the mask's blur (4) and the 8-pixel latent cells."""


def square_mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle(SQUARE, fill=255)
    return mask


def regions() -> tuple[np.ndarray, np.ndarray]:
    """(inside the square, far outside it) as boolean masks."""
    inside = np.asarray(square_mask()) > 0
    y, x = np.mgrid[:64, :64]
    x0, y0, x1, y1 = SQUARE
    far = (x < x0 - FAR) | (x > x1 + FAR) | (y < y0 - FAR) | (y > y1 + FAR)
    return inside, far


def mean_difference(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16))[where].mean())


IMG2IMG = dict(prompt="a red circle on a white background", denoising_strength=0.6, seed=3, steps=12, width=64,
               height=64, cfg_scale=2)


def test_img2img_from_an_api_image(api, batch):
    init = batch.images[0]
    first = api.img2img(images=[init], sampler_name="Euler a", **IMG2IMG)
    again = api.img2img(images=[init], sampler_name="Euler a", **IMG2IMG)
    assert len(first.images) == 1 and first.images[0].size == (64, 64)
    assert first.info["seed"] == 3 and first.info["denoising_strength"] == 0.6
    infotext = first.info["infotexts"][0]
    assert first.images[0].info["parameters"] == infotext
    assert "Denoising strength: 0.6" in infotext and "Seed: 3," in infotext
    assert np.array_equal(pixels(first.images[0]), pixels(again.images[0])), "same img2img request, other pixels"
    assert not np.array_equal(pixels(first.images[0]), pixels(init)), "img2img at 0.6 changed nothing"


def test_img2img_with_a_mask_keeps_the_unmasked_region(api, batch):
    init = batch.images[0]
    masked = api.img2img(images=[init], mask_image=square_mask(), inpainting_fill=1, inpaint_full_res=False,
                         sampler_name="euler-a", **IMG2IMG)
    plain = api.img2img(images=[init], sampler_name="euler-a", **IMG2IMG)
    assert len(masked.images) == 1 and masked.images[0].size == (64, 64)
    assert "Mask SHA-256" in masked.info["infotexts"][0]
    inside, far = regions()
    original, out, unmasked_run = pixels(init), pixels(masked.images[0]), pixels(plain.images[0])
    far_change = mean_difference(out, original, far)
    assert far_change < 8, f"outside the mask the image moved by {far_change:.1f} on average"
    assert far_change < mean_difference(unmasked_run, original, far) / 2, "the mask did not protect the outside"
    assert mean_difference(out, original, inside) > 2 * far_change, "the masked square was not repainted"


def test_img2img_default_client_mask_call_is_refused_naming_the_field(api, batch):
    """webuiapi's defaults with a mask send inpainting_fill=0 and inpaint_full_res=True, which sdcpu cannot do."""
    with pytest.raises(RuntimeError) as refused:
        api.img2img(images=[batch.images[0]], mask_image=square_mask(), sampler_name="euler-a", **IMG2IMG)
    status, text = refused.value.args
    assert status == 422
    detail = json.loads(text)["detail"]
    assert "inpainting_fill" in detail and "\n" not in detail

    with pytest.raises(RuntimeError) as refused:
        api.img2img(images=[batch.images[0]], mask_image=square_mask(), inpainting_fill=1, sampler_name="euler-a",
                    **IMG2IMG)
    status, text = refused.value.args
    assert status == 422 and "inpaint_full_res" in json.loads(text)["detail"]


# --- png-info, lists, options -------------------------------------------------------------------------------


def test_png_info_of_an_api_image(api, batch):
    read = api.png_info(batch.images[0])
    assert read.info == batch.info["infotexts"][0]
    fields = read.json["parameters"]
    assert fields["Seed"] == "7" and fields["Steps"] == "12" and fields["Sampler"] == "Euler a"
    assert (fields["Size-1"], fields["Size-2"]) == ("64", "64")


def test_models_samplers_schedulers_options(api):
    models = api.get_sd_models()
    by_name = {m["model_name"]: m for m in models}
    assert by_name["sdcpu-shapes"]["title"] == "sdcpu-shapes"
    assert by_name[COPY]["title"] == COPY
    assert "sdcpu-shapes" in api.util_get_model_names()

    samplers = api.util_get_sampler_names()
    for name in ("Euler a", "DPM++ 2M", "euler-a"):
        assert name in samplers
    schedulers = api.get_schedulers()
    assert {"automatic", "karras"} <= {s["name"] for s in schedulers}
    assert all(set(s) >= {"name", "label"} for s in schedulers)

    options = api.get_options()
    assert options["sd_model_checkpoint"] == "sdcpu-shapes"
    assert api.util_get_current_model() == "sdcpu-shapes"


def test_lists_clients_read_on_start(api, server):
    getters = {"upscalers": api.get_upscalers, "latent-upscale-modes": api.get_latent_upscale_modes,
               "sd-vae": api.get_sd_vae, "scripts": api.get_scripts, "embeddings": api.get_embeddings,
               "loras": api.get_loras, "hypernetworks": api.get_hypernetworks,
               "face-restorers": api.get_face_restorers, "realesrgan-models": api.get_realesrgan_models,
               "prompt-styles": api.get_prompt_styles}
    for name, getter in getters.items():
        answer = requests.get(f"{server.url}/sdapi/v1/{name}", timeout=30)
        assert answer.status_code == 200, f"/sdapi/v1/{name}: {answer.status_code}"
        assert answer.json() == getter(), name
    scripts = api.get_scripts()
    assert isinstance(scripts["txt2img"], list) and isinstance(scripts["img2img"], list)
    embeddings = api.get_embeddings()
    assert isinstance(embeddings["loaded"], dict) and isinstance(embeddings["skipped"], dict)
    for name in ("upscalers", "latent-upscale-modes", "sd-vae", "loras"):
        assert isinstance(getters[name](), list), name


def test_util_set_model_switches_and_back(api, batch):
    answers = []
    api.session.hooks["response"].append(lambda r, *args, **kwargs: answers.append((r.request.method, r.url,
                                                                                    r.status_code)))
    try:
        api.util_set_model(COPY)
        assert api.get_options()["sd_model_checkpoint"] == COPY
        assert api.util_get_current_model() == COPY
        on_copy = api.txt2img(**(BATCH | {"batch_size": 1}))
        assert on_copy.info["sd_model_name"] == COPY and f"Model: {COPY}," in on_copy.info["infotexts"][0]
        assert np.array_equal(pixels(on_copy.images[0]), pixels(batch.images[0])), "the same weights drew another image"

        api.util_set_model("sdcpu-shapes")
        assert api.get_options()["sd_model_checkpoint"] == "sdcpu-shapes"
        back = api.txt2img(**(BATCH | {"batch_size": 1}))
        assert back.info["sd_model_name"] == "sdcpu-shapes"
    finally:
        api.session.hooks["response"].clear()
        api.set_options({"sd_model_checkpoint": "sdcpu-shapes"})
    posted = [status for method, url, status in answers if method == "POST" and url.endswith("/options")]
    assert posted == [200, 200]


def test_util_wait_for_ready_waits_for_the_running_job(api, server):
    thread, box = in_thread(lambda: api.txt2img(prompt=PROMPT, seed=5, steps=60, width=64, height=64,
                                                sampler_name="Euler a", cfg_scale=2))
    wait_for_progress(server, lambda p: p["state"]["sampling_steps"] == 60 and p["state"]["sampling_step"] > 0)
    api.util_wait_for_ready(check_interval=0.2)
    status, progress = server.get("/sdapi/v1/progress")
    assert status == 200 and progress["state"]["job_count"] == 0 and progress["progress"] == 0
    thread.join(30)
    assert "result" in box, box.get("error")
    assert box["result"].info["interrupted"] is False


# --- interrupt ----------------------------------------------------------------------------------------------


def test_interrupt_stops_a_long_job(api, server):
    steps = 150  # the server's default --max-steps
    started = time.monotonic()
    thread, box = in_thread(lambda: api.txt2img(prompt=PROMPT, seed=11, steps=steps, width=256, height=256,
                                                sampler_name="Euler a", cfg_scale=2))
    running = wait_for_progress(server, lambda p: p["state"]["sampling_steps"] == steps
                                and p["state"]["sampling_step"] >= 3 and p["seconds_per_step"])
    remaining = (steps - running["state"]["sampling_step"]) * running["seconds_per_step"]
    interrupted_at = time.monotonic()
    assert api.interrupt() == {}
    thread.join(max(60, 3 * remaining))
    assert not thread.is_alive(), "the interrupted request never answered"
    assert "result" in box, box.get("error")
    took = box["finished"] - interrupted_at
    assert took < remaining / 3, f"answered {took:.1f} s after interrupt; the job had about {remaining:.1f} s left"
    result = box["result"]
    assert result.info["interrupted"] is True
    assert len(result.images) == 1 and result.images[0].size == (256, 256)
    assert box["finished"] - started < steps * running["seconds_per_step"]

    after = api.txt2img(prompt=PROMPT, seed=1, steps=4, width=64, height=64, sampler_name="Euler a", cfg_scale=2)
    assert len(after.images) == 1 and after.info["interrupted"] is False


# --- basic auth ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("serve-auth"), "--api-auth", f"{USER}:{PASSWORD}") as running:
        yield running


def test_client_with_the_right_credentials_works(auth_server):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port_of(auth_server), username=USER, password=PASSWORD)
    assert "sdcpu-shapes" in api.util_get_model_names()
    result = api.txt2img(prompt=PROMPT, seed=7, steps=4, width=64, height=64, sampler_name="Euler a", cfg_scale=2)
    assert len(result.images) == 1 and result.info["seed"] == 7

    later = webuiapi.WebUIApi(host="127.0.0.1", port=port_of(auth_server))
    later.set_auth(USER, PASSWORD)
    assert later.get_options()["sd_model_checkpoint"] == "sdcpu-shapes"


def test_wrong_or_no_credentials_get_401(auth_server):
    for path in ("/sdapi/v1/options", "/", "/docs"):
        url = auth_server.url + path
        assert requests.get(url, auth=(USER, PASSWORD), timeout=30).status_code == 200, path
        for auth in (None, (USER, "wrong"), ("someone", PASSWORD)):
            answer = requests.get(url, auth=auth, timeout=30)
            assert answer.status_code == 401, f"{path} with {auth}: {answer.status_code}"
            assert answer.headers.get("WWW-Authenticate", "").lower().startswith("basic")

    wrong = webuiapi.WebUIApi(host="127.0.0.1", port=port_of(auth_server), username=USER, password="wrong")
    with pytest.raises(RuntimeError) as refused:
        wrong.txt2img(prompt=PROMPT, seed=7, steps=4, width=64, height=64, cfg_scale=2)
    assert refused.value.args[0] == 401
