"""bench/peers_report.py: slopes, extrapolation, ratios and PSNR from worker results (synthetic runs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))

import peer_worker  # noqa: E402
import peers_report  # noqa: E402


def run(peer: str, a: float, b: float, steps=(1, 5), image=None, round_index=0, error=None) -> dict:
    """A worker result whose image takes a + b * steps seconds."""
    if error:
        return {"peer": peer, "round": round_index, "error": error}
    return {"peer": peer, "round": round_index, "versions": {"x": "1"}, "load_s": 2.0, "first_image_s": a + b,
            "peak_rss_mib": 2048.0, "image": image,
            "rows": [{"steps": n, "total_s": a + b * n, "callback_gaps_s": [b] * n} for n in steps]}


def data(runs, peers, family="sd15") -> dict:
    return {"family": family, "settings": {"width": 512, "height": 512, "guidance": 7.5, "prompt": "p"},
            "steps": "1,5", "rounds": 2, "peers": peers, "gemm_probe_gflops": [400.0, 500.0], "runs": runs}


def test_slope_median_and_extrapolation():
    d = data([run("sdcpu-bf16", 4.0, 2.0), run("sdcpu-bf16", 6.0, 4.0, round_index=1),
              run("optimum-intel", 4.0, 6.0)], ["sdcpu-bf16", "optimum-intel"])
    ours, theirs = peers_report.summarise(d)
    assert ours["s_per_step"] == pytest.approx(3.0)
    assert ours["image_s"] == pytest.approx(((4 + 2 * 20) + (6 + 4 * 20)) / 2) and ours["extrapolated"]
    assert theirs["s_per_step"] == pytest.approx(6.0)
    assert peers_report.speedup(ours["s_per_step"], theirs, "s_per_step") == "2.00x"


def test_measured_step_count_is_not_extrapolated():
    ours, = peers_report.summarise(data([run("sdcpu-bf16", 3.0, 1.0, steps=(1, 4))], ["sdcpu-bf16"], family="lcm"))
    assert ours["image_s"] == pytest.approx(7.0) and not ours["extrapolated"]


def test_failed_peer_is_reported_not_dropped(tmp_path):
    d = data([run("sdcpu-bf16", 4.0, 2.0), run("optimum-intel", 4.0, 4.0), run("openvino-genai", 0, 0, error="boom")],
             ["sdcpu-bf16", "optimum-intel", "openvino-genai"])
    section = peers_report.family_section(d)
    assert "| openvino-genai | failed: boom |" in section
    assert "| sdcpu-bf16 | 2.00 | 2.00x |" in section, "step speed-up over optimum-intel"
    assert "| optimum-intel | 4.00 | 1.00x |" in section


def test_tiny_vae_peer_gets_no_psnr_against_the_real_decoder():
    tiny = {**run("sdcpu-bf16-tinyvae", 1.0, 1.0), "settings": {"tiny_vae": True}}
    row, = peers_report.summarise(data([tiny], ["sdcpu-bf16-tinyvae"]))
    assert peers_report.psnr_cell(row) == "n/a (random tiny VAE)"


def test_psnr_against_the_reference_image(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    noisy = np.clip(pixels.astype(int) + rng.integers(-2, 3, pixels.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "ref.png")
    Image.fromarray(noisy).save(tmp_path / "ours.png")
    d = data([run("diffusers-fp32", 4.0, 2.0, image=str(tmp_path / "ref.png")),
              run("sdcpu-bf16", 4.0, 1.0, image=str(tmp_path / "ours.png"))], ["sdcpu-bf16", "diffusers-fp32"])
    ours, ref = peers_report.summarise(d)
    assert 40 < ours["psnr_db"] < 50 and ref["psnr_db"] is None
    peers_report.draw_chart([d], tmp_path / "chart.png")
    assert Image.open(tmp_path / "chart.png").size[0] == 900


def test_worker_times_an_adapter(tmp_path, monkeypatch):
    class Adapter:
        @staticmethod
        def versions():
            return {"fake": "1"}

        @staticmethod
        def load(folder, settings):
            def generate(steps, seed, on_step):
                for i in range(steps):
                    on_step(i)
                return np.full((8, 8, 3), seed, np.uint8)
            return generate

    monkeypatch.setitem(sys.modules, "peer_fake", Adapter)
    result = peer_worker.run("fake", str(tmp_path), {}, [1, 3], 7, tmp_path / "img.png")
    assert [len(row["callback_gaps_s"]) for row in result["rows"]] == [1, 3]
    assert np.asarray(Image.open(tmp_path / "img.png")).max() == 7
    assert result["peak_rss_mib"] > 0 and json.dumps(result)
