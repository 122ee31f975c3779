"""The page of `sdcpu serve` in a real headless Chromium against the real server and the bundled model.

Generate with live progress, cancel, refill the form from a dropped PNG (ours and an A1111-style one) or from a
gallery image, inpaint with a drawn mask, show a server error, and load nothing from any other host.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image, PngImagePlugin

SERVER_LIFETIME_S = 300
SERVER_COMMAND = [sys.executable, "-m", "sdcpu.engine.cli.app", "serve", "--port", "{port}", "--max-steps", "400",
                  "--stop-after", str(SERVER_LIFETIME_S)]
STARTUP_TIMEOUT_S = 90
JOB_TIMEOUT_MS = 60_000
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
WATCH_STEPS = 100
A1111_TEXT = ("a cat\nNegative prompt: blurry\nSteps: 12, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5, "
              "Seed: 42, Size: 64x64, Model: sdcpu-shapes")


def no_browser(reason: str):
    message = f"{reason}; install it with: apt-get install chromium (and pip install playwright)"
    if os.environ.get("SDCPU_REQUIRE_BROWSER") == "1":
        pytest.fail(f"SDCPU_REQUIRE_BROWSER=1 but {message}")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, body=None, timeout: float = 30):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read())


def stop(process: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
            process.wait(wait_s)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def server():
    """The real `sdcpu serve` on a free loopback port; it stops by itself (--stop-after, and `timeout` as a backstop)
    if this process dies first."""
    port = free_port()
    command = [part.format(port=port) for part in SERVER_COMMAND]
    if shutil.which("timeout"):
        command = ["timeout", "-k", "5", str(SERVER_LIFETIME_S + 30), *command]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while True:
                try:
                    get_json(f"{url}/sdapi/v1/options", timeout=2)
                    break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    if process.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        pytest.fail(f"`sdcpu serve` did not come up:\n{log.read().decode(errors='replace')[-3000:]}")
                    time.sleep(0.2)
            yield url
        finally:
            stop(process)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        no_browser("the playwright package is missing")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if not executable:
        no_browser("chromium is not installed")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    page.set_default_timeout(JOB_TIMEOUT_MS)
    page.requested = []
    page.errors = []
    page.on("request", lambda request: page.requested.append(request.url))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready]")
    assert page.get_attribute("body", "data-ready") == "true", page.inner_text("#error")
    yield page
    context.close()
    assert not page.errors, page.errors


@pytest.fixture(scope="module")
def sdcpu_png(server):
    """A PNG of ours from the API, and the request that made it."""
    request = {"prompt": "a blue square", "negative_prompt": "green", "seed": 31, "steps": 6, "cfg_scale": 6.5,
               "width": 64, "height": 64, "sampler_name": "euler", "batch_size": 1}
    answer = get_json(f"{server}/sdapi/v1/txt2img", request, timeout=60)
    return base64.b64decode(answer["images"][0]), request


def a1111_png(text: str | None) -> bytes:
    info = PngImagePlugin.PngInfo()
    if text is not None:
        info.add_text("parameters", text)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def fill(page, **fields):
    for name, value in fields.items():
        page.fill(f"#{name}", str(value))


def generate(page):
    page.click("#generate")
    page.wait_for_function("!document.querySelector('#generate').disabled")


def form(page, *names):
    return {name: page.input_value(f"#{name}") for name in names}


def drop(page, data: bytes, name: str):
    page.evaluate("""([b64, name]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: "image/png"}));
        document.body.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
    }""", [base64.b64encode(data).decode(), name])
    page.wait_for_function("(name) => document.querySelector('#drop_status').textContent.includes(name)"
                           " && !document.querySelector('#drop_status').textContent.startsWith('Reading')", arg=name)
    return page.inner_text("#drop_status")


def image_of(element) -> Image.Image:
    src = element.get_attribute("src")
    assert src.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))


def test_generate_shows_progress_then_the_image(page):
    page.evaluate("""() => {
        window.seen = [];
        const text = document.querySelector('#progress_text');
        const preview = document.querySelector('#preview');
        new MutationObserver(() => seen.push([document.querySelector('#progress').value, text.textContent,
                                              !preview.hidden && preview.src.startsWith('data:image/png')]))
            .observe(text, {childList: true, characterData: true, subtree: true});
    }""")
    fill(page, prompt="two small yellow triangles on a white background", seed=7, steps=WATCH_STEPS)
    generate(page)
    seen = page.evaluate("window.seen")
    moving = [(value, text, preview) for value, text, preview in seen if "step" in text and 0 < value < 1]
    assert moving, seen
    assert "s/step" in moving[-1][1] and "ETA" in moving[-1][1], moving
    assert any(preview for _, _, preview in moving), "no per-step preview was shown while it ran"
    results = page.locator("#gallery .result")
    assert results.count() == 1
    assert results.first.locator(".seed").inner_text() == "7"
    assert f"Steps: {WATCH_STEPS}" in results.first.locator(".infotext").inner_text()
    image = image_of(results.first.locator("img"))
    image.load()
    assert image.size == (64, 64)
    assert page.inner_text("#progress_text").startswith("done")
    page.click("#reuse_seed")
    assert page.input_value("#seed") == "7"


def test_dropped_png_fills_the_form(page, sdcpu_png):
    data, request = sdcpu_png
    status = drop(page, data, "ours.png")
    assert "Filled" in status and "prompt" in status, status
    assert form(page, "prompt", "negative_prompt", "seed", "steps", "width", "height", "sampler") == {
        "prompt": request["prompt"], "negative_prompt": request["negative_prompt"], "seed": str(request["seed"]),
        "steps": str(request["steps"]), "width": str(request["width"]), "height": str(request["height"]),
        "sampler": request["sampler_name"]}
    assert float(page.input_value("#cfg_scale")) == request["cfg_scale"]
    assert page.is_disabled("#scheduler") and page.input_value("#scheduler") == "Automatic"

    status = drop(page, a1111_png(A1111_TEXT), "a1111.png")
    assert "Filled" in status and "Note" not in status, status
    assert form(page, "prompt", "negative_prompt", "steps", "sampler", "scheduler", "seed", "width", "height",
                "model") == {
        "prompt": "a cat", "negative_prompt": "blurry", "steps": "12", "sampler": "DPM++ 2M", "scheduler": "Karras",
        "seed": "42", "width": "64", "height": "64", "model": "sdcpu-shapes"}
    assert float(page.input_value("#cfg_scale")) == 5
    assert page.is_enabled("#scheduler")

    status = drop(page, a1111_png(None), "plain.png")
    assert "no generation parameters" in status
    assert page.input_value("#prompt") == "a cat"


def test_cancel_ends_a_long_job(page):
    fill(page, prompt="a long job", seed=3, steps=400)
    page.click("#generate")
    page.wait_for_function("document.querySelector('#progress_text').textContent.includes('step ')"
                           " || !document.querySelector('#error').hidden")
    assert not page.is_visible("#error"), page.inner_text("#error")
    assert page.is_disabled("#generate")
    started = time.monotonic()
    page.click("#cancel")
    page.wait_for_function("!document.querySelector('#generate').disabled")
    assert time.monotonic() - started < 10
    result = page.locator("#gallery .result").first
    assert "interrupted" in (result.get_attribute("class") or "")
    assert "interrupted" in page.inner_text("#progress_text")
    match = page.inner_text("#progress_text").split("step ")[1].split(" ")[0]
    assert int(match.split("/")[0]) < 400 and match.endswith("/400"), match

    fill(page, steps=4, seed=5)
    generate(page)
    assert page.locator("#gallery .result").count() == 2
    newest = page.locator("#gallery .result").first
    assert "interrupted" not in (newest.get_attribute("class") or "")
    assert newest.locator(".seed").inner_text() == "5"
    assert page.is_visible("#error") is False


def test_use_these_settings_refills_the_form(page):
    fill(page, prompt="a red circle", negative_prompt="blue", seed=123, steps=8, cfg_scale=4)
    page.press("#prompt", "Control+Enter")
    page.wait_for_function("document.querySelectorAll('#gallery .result').length === 1 || !document.querySelector('#error').hidden")
    assert not page.is_visible("#error"), page.inner_text("#error")
    fill(page, prompt="something else", negative_prompt="", seed=-1, steps=30, cfg_scale=9)
    page.locator("#gallery .result button.use-settings").first.click()
    page.wait_for_function("document.querySelector('#drop_status').textContent.startsWith('Filled')")
    assert form(page, "prompt", "negative_prompt", "seed", "steps") == {
        "prompt": "a red circle", "negative_prompt": "blue", "seed": "123", "steps": "8"}
    assert float(page.input_value("#cfg_scale")) == 4


def test_inpaint_with_a_drawn_mask(page, sdcpu_png, tmp_path):
    data, _ = sdcpu_png
    init = tmp_path / "init.png"
    init.write_bytes(data)
    page.click("#img2img_panel summary")
    page.set_input_files("#init_image", str(init))
    page.wait_for_selector("#canvas_stack:not([hidden])")
    box = page.locator("#mask_canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    fill(page, prompt="a yellow triangle", seed=9, steps=6, strength=0.6)
    with page.expect_request("**/sdapi/v1/img2img") as posted:
        generate(page)
    body = posted.value.post_data_json
    assert body["init_images"][0].startswith("data:image/png;base64,")
    assert body["denoising_strength"] == 0.6
    assert (body["inpainting_fill"], body["inpaint_full_res"], body["mask_blur"]) == (1, False, 4)
    mask = Image.open(io.BytesIO(base64.b64decode(body["mask"].split(",", 1)[1]))).convert("L")
    assert mask.size == (64, 64)
    assert mask.getpixel((32, 32)) == 255 and mask.getpixel((32, 4)) == 0 and mask.getpixel((2, 32)) == 0
    assert not page.is_visible("#error"), page.inner_text("#error")
    assert page.locator("#gallery .result").count() == 1
    assert image_of(page.locator("#gallery .result img").first).size == (64, 64)


def test_server_error_is_shown(page):
    fill(page, prompt="odd size", width=60, steps=2)
    generate(page)
    assert page.is_visible("#error")
    detail = page.inner_text("#error")
    assert detail and "[object" not in detail and "\n" not in detail.strip(), detail
    assert page.locator("#gallery .result").count() == 0


def test_page_loads_offline_with_the_model_defaults(page, server):
    model = get_json(f"{server}/sdcpu/v1/models")[0]
    assert page.input_value("#model") == model["title"]
    assert form(page, "steps", "width", "height", "sampler", "scheduler") == {
        "steps": str(model["steps"]), "width": str(model["width"]), "height": str(model["height"]),
        "sampler": model["sampler_name"], "scheduler": model["scheduler"]}
    assert float(page.input_value("#cfg_scale")) == model["cfg_scale"]
    fill(page, prompt="offline", steps=2)
    generate(page)
    assert page.requested
    foreign = [url for url in page.requested if not url.startswith((server + "/", "data:", "blob:"))]
    assert not foreign, foreign
    assert {server + "/", server + "/page/app.js", server + "/page/style.css"} <= set(page.requested)
