"""CORS is closed unless asked: no browser page of another origin may read the API; --cors-allow-origins opens
it to the origins named, and to those only."""

from __future__ import annotations

import urllib.request

import pytest

from tests.live_server import live_server

ALLOWED = "http://studio.example"


def answer_headers(url: str, method: str, origin: str) -> tuple[int, dict]:
    headers = {"Origin": origin}
    if method == "OPTIONS":
        headers |= {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    req = urllib.request.Request(url, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}


@pytest.fixture(scope="module")
def closed(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("cors-closed")) as server:
        yield server


@pytest.fixture(scope="module")
def opened(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("cors-open"), "--cors-allow-origins", ALLOWED) as server:
        yield server


def test_by_default_no_origin_may_read_the_api(closed):
    status, headers = answer_headers(closed.url + "/sdapi/v1/options", "GET", ALLOWED)
    assert status == 200 and "access-control-allow-origin" not in headers
    status, headers = answer_headers(closed.url + "/sdapi/v1/txt2img", "OPTIONS", ALLOWED)
    assert "access-control-allow-origin" not in headers


def test_the_origins_named_may_and_no_other(opened):
    status, headers = answer_headers(opened.url + "/sdapi/v1/txt2img", "OPTIONS", ALLOWED)
    assert status == 200 and headers.get("access-control-allow-origin") == ALLOWED
    status, headers = answer_headers(opened.url + "/sdapi/v1/options", "GET", ALLOWED)
    assert headers.get("access-control-allow-origin") == ALLOWED
    status, headers = answer_headers(opened.url + "/sdapi/v1/options", "GET", "http://evil.example")
    assert "access-control-allow-origin" not in headers


def test_save_images_writes_only_into_the_save_dir(closed, tmp_path_factory):
    status, answer = closed.post("/sdapi/v1/txt2img", {"prompt": "a red circle", "save_images": True})
    assert status == 422 and "--save-dir" in answer["detail"]
    folder = tmp_path_factory.mktemp("saved")
    with live_server(tmp_path_factory.mktemp("cors-save"), "--save-dir", str(folder)) as server:
        status, answer = server.post("/sdapi/v1/txt2img", {"prompt": "a red circle", "seed": 4, "steps": 4,
                                                           "batch_size": 2, "save_images": True})
    assert status == 200, answer
    saved = sorted(folder.glob("*.png"))
    assert [p.name.rsplit("-", 1)[1] for p in saved] == ["4.png", "5.png"]
    assert not list(folder.glob(".*.tmp"))
