"""Bad requests to `sdcpu serve` get the right 4xx with one clear line, and the server stays healthy.

One real server for the module, started with --max-body-mb 1 (the 413 check) and --queue-size 1 (the full queue
and the client that leaves while queued). Each refusal: its status, and a `detail` that is one line, no traceback,
naming what was wrong. The last test sends a good request and checks the process lived through it all.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from urllib.parse import urlparse

import pytest
from PIL import Image

from tests.live_server import live_server, request

GOOD = dict(prompt="two small yellow triangles on a white background", seed=1, steps=4, width=64, height=64,
            sampler_name="Euler a", cfg_scale=2)
LONG = dict(GOOD, steps=150, width=384, height=384)
"""A request that runs for many seconds on this model (150 steps is the default --max-steps)."""
B_STEPS = 77
"""The step count of the request that leaves while queued: /progress would show it if that job ran."""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-errors")
    with live_server(root, "--max-body-mb", "1", "--queue-size", "1") as running:
        running.root = root
        yield running


def one_line(answer, *words: str) -> str:
    """The `detail` of an error answer, checked: a non-empty single line, no traceback, naming WORDS."""
    assert isinstance(answer, dict) and "detail" in answer, answer
    detail = answer["detail"]
    assert isinstance(detail, str) and detail.strip(), answer
    assert "\n" not in detail and "\r" not in detail, detail
    assert "Traceback" not in detail and 'File "' not in detail, detail
    for word in words:
        assert word.lower() in detail.lower(), f"{word!r} not in {detail!r}"
    return detail


def refused(server, path: str, body=None, status: int = 422, *words: str, raw: bytes | None = None,
            headers: dict | None = None) -> str:
    got, answer = request(server.url + path, body, raw=raw, headers=headers, timeout=60)
    assert got == status, f"{path} {body if raw is None else raw[:60]!r}: {got} {answer}"
    return one_line(answer, *words)


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def jpeg_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


def small_picture() -> Image.Image:
    return Image.new("RGB", (64, 64), (200, 40, 40))


def claimed_size_png(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of WIDTH x HEIGHT, all black: tens of KB that decode to hundreds of MB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    packer = zlib.compressobj(9)
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def with_headers(url: str, body: dict, timeout: float = 120) -> tuple[int, dict, dict]:
    """(status, headers, JSON answer) by urllib, to see Retry-After."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            return answer.status, answer.headers, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read())


def progress(server) -> dict:
    status, answer = server.get("/sdapi/v1/progress?skip_current_image=true")
    assert status == 200
    return answer


def wait_until(condition, timeout: float = 60, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen in {timeout} s")


def interrupt_until_done(server, threads: list[threading.Thread], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while any(t.is_alive() for t in threads):
        assert time.monotonic() < deadline, "the interrupted requests never answered"
        server.post("/sdapi/v1/interrupt", {})
        time.sleep(0.2)


def started(server, steps: int) -> dict:
    return wait_until(lambda: (p := progress(server))["state"]["sampling_steps"] == steps
                      and p["state"]["sampling_step"] > 0 and p, what=f"a {steps}-step job running")


# --- the body itself ----------------------------------------------------------------------------------------


def test_malformed_json(server):
    refused(server, "/sdapi/v1/txt2img", None, 422, "json", raw=b'{"prompt": ')


@pytest.mark.parametrize("raw", [b'[1, 2]', b'"a prompt"', b'null'], ids=["list", "string", "null"])
def test_json_that_is_not_an_object(server, raw):
    refused(server, "/sdapi/v1/txt2img", None, 422, "object", raw=raw)


@pytest.mark.parametrize("field, value", [("steps", "abc"), ("width", 1.5), ("seed", "x"), ("prompt", 5),
                                          ("batch_size", "two"), ("override_settings", [1])])
def test_wrong_types_name_the_field(server, field, value):
    refused(server, "/sdapi/v1/txt2img", GOOD | {field: value}, 422, field)


@pytest.mark.parametrize("field, value", [("width", -64), ("height", -8), ("width", 0), ("steps", 0),
                                          ("steps", -3), ("batch_size", 0), ("n_iter", 0)])
def test_sizes_and_counts_below_one(server, field, value):
    refused(server, "/sdapi/v1/txt2img", GOOD | {field: value}, 422, field)


def test_unknown_top_level_field_is_named(server):
    refused(server, "/sdapi/v1/txt2img", GOOD | {"my_extension_flag": True}, 422, "my_extension_flag")


# --- the limits ---------------------------------------------------------------------------------------------


def test_huge_size_names_the_pixel_limit(server):
    refused(server, "/sdapi/v1/txt2img", GOOD | {"width": 20000, "height": 20000}, 422,
            "20000x20000", "limit", str(2048 * 2048), "--max-pixels")


def test_steps_above_the_limit(server):
    refused(server, "/sdapi/v1/txt2img", GOOD | {"steps": 151}, 422, "151", "150", "--max-steps")


def test_batch_times_iterations_above_the_limit(server):
    refused(server, "/sdapi/v1/txt2img", GOOD | {"batch_size": 4, "n_iter": 5}, 422, "batch_size", "n_iter",
            "20", "16", "--max-images")


def test_body_above_max_body_mb_is_413(server):
    big = json.dumps(GOOD | {"prompt": "x" * (2 * 2**20)}).encode()
    refused(server, "/sdapi/v1/txt2img", None, 413, "1 MiB", "--max-body-mb", raw=big)
    refused(server, "/sdapi/v1/img2img", None, 413, "--max-body-mb", raw=big)

    host = urlparse(server.url)
    connection = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
    try:  # no Content-Length: counted as it arrives
        connection.request("POST", "/sdapi/v1/txt2img", body=(big[i:i + 2**16] for i in range(0, len(big), 2**16)),
                           headers={"content-type": "application/json"}, encode_chunked=True)
        answer = connection.getresponse()
        assert answer.status == 413
        one_line(json.loads(answer.read()), "--max-body-mb")
    finally:
        connection.close()


# --- images sent in -----------------------------------------------------------------------------------------


def img2img(image: str, **fields) -> dict:
    return GOOD | {"init_images": [image], "denoising_strength": 0.5} | fields


def test_init_image_bad_base64(server):
    refused(server, "/sdapi/v1/img2img", img2img("this is not base64!"), 422, "init_images", "base64")


@pytest.mark.parametrize("url", [
    "data:image/png;base64," + base64.b64encode(b"hello, this is not a picture").decode(),
    "data:text/plain;base64," + base64.b64encode(b"hello, this is not a picture").decode(),
], ids=["image-mime", "text-mime"])
def test_init_image_data_url_that_is_not_an_image(server, url):
    refused(server, "/sdapi/v1/img2img", img2img(url), 422, "init_images")


def test_mask_that_is_not_an_image(server):
    refused(server, "/sdapi/v1/img2img", img2img(png_b64(small_picture()), mask="@@@", inpainting_fill=1,
                                                 inpaint_full_res=False, sampler_name="euler-a"), 422, "mask")


def test_init_image_url_or_path_is_refused_unread(server):
    """The server reads no client paths: a real PNG next to it, by absolute and relative path, is refused."""
    on_disk = Path(server.root) / "init.png"
    small_picture().save(on_disk)
    for where in ("http://127.0.0.1:1/init.png", "https://example.com/init.png", f"file://{on_disk}",
                  str(on_disk), "init.png", "./init.png"):
        refused(server, "/sdapi/v1/img2img", img2img(where), 422, "init_images")
    for where in ("http://127.0.0.1:1/init.png", str(on_disk)):
        refused(server, "/sdapi/v1/img2img", img2img(where), 422, "init_images", "does not fetch")


def test_raw_base64_jpeg_init_image_is_not_taken_for_a_path(server):
    """A1111 clients send raw base64 (no data: prefix); every JPEG's base64 starts with "/9j/"."""
    encoded = jpeg_b64(small_picture())
    assert encoded.startswith("/9j/")
    status, answer = request(server.url + "/sdapi/v1/img2img", img2img("data:image/jpeg;base64," + encoded))
    assert status == 200, answer
    status, answer = request(server.url + "/sdapi/v1/img2img", img2img(encoded))
    assert status == 200, f"a raw base64 JPEG init image was refused: {answer}"


def peak_rss_during(server, work) -> tuple[int, object]:
    """The server's highest resident memory, sampled every few ms while WORK runs, and WORK's answer."""
    peak, done = [server.rss_bytes()], threading.Event()

    def sample():
        while not done.is_set():
            peak.append(server.rss_bytes())
            time.sleep(0.003)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        answer = work()
    finally:
        done.set()
        sampler.join()
    return max(peak), answer


@pytest.mark.parametrize("side, words", [(20000, ("init_images",)), (8000, ("init_images", "8000x8000", "4096"))])
def test_huge_init_image_is_refused_from_its_header(server, side, words):
    bomb = claimed_size_png(side, side)
    assert len(bomb) < 2**19, "the test image must be small to send"
    body = img2img(base64.b64encode(bomb).decode())
    before = server.rss_bytes()
    began = time.monotonic()
    peak, (status, answer) = peak_rss_during(server, lambda: request(server.url + "/sdapi/v1/img2img", body))
    took = time.monotonic() - began
    assert status == 422, answer
    detail = one_line(answer, *words)
    if side == 20000:
        assert "20000x20000" in detail or f"{side * side}" in detail, detail
    assert took < 3, f"refusing a {side}x{side} header took {took:.1f} s"
    assert peak - before < 50 * 2**20, f"RSS rose by {(peak - before) / 2**20:.0f} MB for a {side}x{side} PNG"


def test_png_info_of_a_huge_png_reads_its_text_without_decoding(server):
    """png-info walks the chunks; a PNG claiming 20000x20000 is no bomb to it (it was a 500 once)."""
    status, answer = request(server.url + "/sdapi/v1/png-info",
                             {"image": base64.b64encode(claimed_size_png(20000, 20000)).decode()})
    assert status == 200, answer
    assert answer["info"] == "" and answer["parameters"] == {}


# --- models, samplers, refused fields, settings -------------------------------------------------------------


def test_unknown_model_in_override_settings(server):
    refused(server, "/sdapi/v1/txt2img", GOOD | {"override_settings": {"sd_model_checkpoint": "no-such-model"}},
            422, "no-such-model", "sd-models")


def test_unknown_model_in_post_options(server):
    refused(server, "/sdapi/v1/options", {"sd_model_checkpoint": "no-such-model"}, 422, "no-such-model")
    status, options = server.get("/sdapi/v1/options")
    assert status == 200 and options["sd_model_checkpoint"] == "sdcpu-shapes"


def test_refused_post_options_changes_nothing(server):
    """A POST /options answered 422 must leave every setting as it was (not half applied)."""
    status, before = server.get("/sdapi/v1/options")
    assert status == 200 and before["CLIP_stop_at_last_layers"] == 1
    try:
        refused(server, "/sdapi/v1/options", {"CLIP_stop_at_last_layers": 2, "sd_model_checkpoint": "no-such-model"},
                422, "no-such-model")
        status, after = server.get("/sdapi/v1/options")
        assert after == before, f"a refused POST /options changed settings: {before} -> {after}"
    finally:
        server.post("/sdapi/v1/options", {"CLIP_stop_at_last_layers": 1})


def test_unknown_sampler_is_named(server):
    refused(server, "/sdapi/v1/txt2img", GOOD | {"sampler_name": "Bogus Sampler 9"}, 422, "Bogus Sampler 9")
    refused(server, "/sdapi/v1/txt2img", GOOD | {"sampler_name": None, "sampler_index": "Bogus Sampler 9"}, 422,
            "Bogus Sampler 9")


@pytest.mark.parametrize("field, value", [("enable_hr", True), ("restore_faces", True),
                                          ("alwayson_scripts", {"ControlNet": {"args": [{"enabled": True}]}}),
                                          ("styles", ["cinematic"]), ("script_name", "x/y/z plot"),
                                          ("tiling", True)])
def test_refused_fields_are_named(server, field, value):
    refused(server, "/sdapi/v1/txt2img", GOOD | {field: value}, 422, field, "cannot be honoured")


def test_unknown_override_setting(server):
    refused(server, "/sdapi/v1/txt2img", GOOD | {"override_settings": {"not_a_setting": 1}}, 422, "not_a_setting")
    refused(server, "/sdapi/v1/options", {"not_a_setting": 1}, 422, "not_a_setting")


# --- routes, methods, png-info, host ------------------------------------------------------------------------


def test_unknown_route_is_404(server):
    refused(server, "/sdapi/v1/no-such-list", None, 404, "no-such-list")
    refused(server, "/no/such/page", None, 404)


def test_get_on_a_post_route_is_405(server):
    statuses = {path: request(server.url + path)[0]
                for path in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/png-info")}
    assert statuses == dict.fromkeys(statuses, 405), f"GET on POST-only routes: {statuses}"


def test_post_on_a_get_route_is_405(server):
    refused(server, "/sdapi/v1/samplers", {}, 405)


def test_png_info_of_a_non_png(server):
    gif = io.BytesIO()
    small_picture().save(gif, format="GIF")
    refused(server, "/sdapi/v1/png-info", {"image": base64.b64encode(gif.getvalue()).decode()}, 422, "image", "PNG")
    refused(server, "/sdapi/v1/png-info", {"image": base64.b64encode(b"plain text, no picture").decode()}, 422,
            "image", "PNG")
    refused(server, "/sdapi/v1/png-info", {"image": "%%% not base64"}, 422, "image", "base64")
    refused(server, "/sdapi/v1/png-info", {}, 422, "image")


def test_foreign_host_header_is_400(server):
    refused(server, "/sdapi/v1/options", None, 400, "evil.example", headers={"Host": "evil.example"})
    refused(server, "/sdapi/v1/txt2img", GOOD, 400, headers={"Host": "evil.example:80"})
    status, _ = request(server.url + "/sdapi/v1/options", headers={"Host": f"localhost:{urlparse(server.url).port}"})
    assert status == 200


def test_host_that_merely_starts_like_loopback_is_400(server):
    """A DNS-rebinding page can name its host 127.0.0.1.attacker.example: that is not a loopback name."""
    statuses = {host: request(server.url + "/sdapi/v1/options", headers={"Host": host})[0]
                for host in ("127.0.0.1.evil.example", "127.evil.example:80")}
    assert statuses == dict.fromkeys(statuses, 400), f"foreign hosts answered: {statuses}"


# --- the queue ----------------------------------------------------------------------------------------------


def test_full_queue_is_503_with_retry_after(server):
    answers: dict[int, tuple] = {}

    def send(i: int) -> None:
        answers[i] = with_headers(server.url + "/sdapi/v1/txt2img", LONG | {"seed": 100 + i})

    threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(4)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    wait_until(lambda: any(a[0] == 503 for a in answers.values()), 30, "a 503")
    interrupt_until_done(server, threads)
    assert time.monotonic() - began < 60
    statuses = sorted(a[0] for a in answers.values())
    assert len(statuses) == 4 and set(statuses) <= {200, 503}, statuses
    for status, headers, body in answers.values():
        if status == 503:
            assert int(headers.get("Retry-After")) >= 1, dict(headers)
            one_line(body, "queue")
        else:
            assert isinstance(body["images"], list) and json.loads(body["info"])["interrupted"] is True
    assert statuses.count(200) >= 1
    wait_until(lambda: progress(server)["state"]["job_count"] == 0, 30, "the server idle again")


def test_client_that_leaves_while_queued_has_its_job_dropped(server):
    answer: dict = {}
    running = threading.Thread(target=lambda: answer.update(a=with_headers(server.url + "/sdapi/v1/txt2img", LONG)),
                               daemon=True)
    running.start()
    started(server, LONG["steps"])

    host = urlparse(server.url)
    connection = http.client.HTTPConnection(host.hostname, host.port, timeout=1.5)
    try:
        connection.request("POST", "/sdapi/v1/txt2img", body=json.dumps(GOOD | {"steps": B_STEPS}),
                           headers={"content-type": "application/json"})
        with pytest.raises(TimeoutError):
            connection.getresponse()
    finally:
        connection.close()
    wait_until(lambda: "a client left; its txt2img job was dropped" in server.log(), 10, "the drop")
    now = progress(server)
    assert now["queue_length"] == 0 and now["state"]["sampling_steps"] == LONG["steps"], now

    server.post("/sdapi/v1/interrupt", {})
    running.join(60)
    assert not running.is_alive()
    status, _, body = answer["a"]
    assert status == 200 and json.loads(body["info"])["interrupted"] is True
    seen = set()
    for _ in range(30):
        seen.add(progress(server)["state"]["sampling_steps"])
        time.sleep(0.05)
    assert B_STEPS not in seen, "the dropped job ran after all"
    assert progress(server)["state"]["job_count"] == 0


# --- after all of it ----------------------------------------------------------------------------------------


def test_server_still_healthy(server):
    status, answer = server.post("/sdapi/v1/txt2img", GOOD)
    assert status == 200, answer
    assert len(answer["images"]) == 1 and json.loads(answer["info"])["seed"] == 1
    assert server.process.poll() is None, "the server process died"
    assert "error in /" not in server.log(), f"an unexpected exception (500) was logged:\n{server.log()}"
