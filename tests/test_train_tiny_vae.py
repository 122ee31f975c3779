"""The tiny VAE distillation script: a few steps on a tiny pool write an AutoencoderTiny folder that reads 8x8x8 latents."""

from __future__ import annotations

import json

import torch

from sdcpu.export import train_tiny_vae


def test_a_few_steps_save_an_autoencoder_tiny_that_decodes_shapes_latents(tmp_path, monkeypatch):
    from diffusers import AutoencoderTiny

    monkeypatch.setattr(train_tiny_vae, "EVAL_EVERY", 2)
    work, out = tmp_path / "work", tmp_path / "vae_tiny"
    args = ["--work", str(work), "--out", str(out), "--steps", "2", "--batch", "2", "--pool", "8", "--heldout", "4"]
    train_tiny_vae.main([*args, "--time-limit", "0"])
    assert not out.exists() and (work / "tiny_vae.pt").exists()  # stopped after a step; the same command resumes
    train_tiny_vae.main(args)
    tiny = AutoencoderTiny.from_pretrained(out)
    assert tiny.config.latent_channels == 8 and tiny.config.scaling_factor == 1.0
    assert tiny.dtype == torch.float32
    with torch.no_grad():
        image = tiny.decode(torch.randn(1, 8, 8, 8)).sample
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()
    records = [json.loads(line) for line in (work / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "psnr_db" in r] == [2, 2]  # end of training, saved folder
    assert all(r["psnr_db"] > 0 for r in records if "psnr_db" in r)
