"""The shapes model's training script: seeded, resumable to the same weights, text encoder frozen, saves an sd15 pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sdcpu.export import shapes_model, train_shapes
from sdcpu.models.shapes.render import make_dataset


@pytest.fixture(scope="module")
def images():
    return make_dataset(16, seed=3)


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_vae_training_resumes_to_the_same_weights(images, tmp_path):
    straight = train_shapes.train_vae(tmp_path / "straight", steps=4, batch=2, seed=1, images=images[0])
    (tmp_path / "resumed").mkdir()
    train_shapes.train_vae(tmp_path / "resumed", steps=2, batch=2, seed=1, images=images[0])
    resumed = train_shapes.train_vae(tmp_path / "resumed", steps=4, batch=2, seed=1, images=images[0])
    assert _same_weights(straight, resumed)
    other_seed = train_shapes.train_vae(tmp_path / "other", steps=4, batch=2, seed=2, images=images[0])
    assert not _same_weights(straight, other_seed)


def _latents(vae, images, work):
    work.mkdir(exist_ok=True)
    return train_shapes.encode_dataset(work, vae, images[0], images[1])


def test_denoiser_training_resumes_and_logs_the_loss(images, tmp_path, monkeypatch):
    monkeypatch.setattr(train_shapes, "LOG_EVERY", 2)
    (tmp_path / "straight").mkdir()
    vae = train_shapes.train_vae(tmp_path / "straight", steps=1, batch=2, seed=0, images=images[0])
    data = _latents(vae, images, tmp_path / "straight")
    assert data["mean"].shape == (16, shapes_model.LATENT_CHANNELS, 8, 8) and np.isfinite(data["scaling_factor"])
    tokenizer = shapes_model.build_tokenizer(tmp_path / "tokenizer")
    args = dict(data=data, tokenizer=tokenizer, batch=4, lr=1e-3, seed=5, time_limit=float("inf"))
    unet, text_encoder = train_shapes.train_denoiser(tmp_path / "straight", steps=4, **args)
    (tmp_path / "resumed").mkdir()
    stopped = train_shapes.train_denoiser(tmp_path / "resumed", steps=4, **{**args, "time_limit": 0.0})
    assert stopped is None
    resumed_unet, _ = train_shapes.train_denoiser(tmp_path / "resumed", steps=4, **args)
    assert _same_weights(unet, resumed_unet)
    (tmp_path / "short").mkdir()
    short_unet, short_text_encoder = train_shapes.train_denoiser(tmp_path / "short", steps=2, **args)
    assert _same_weights(text_encoder, short_text_encoder) and not _same_weights(unet, short_unet)
    records = [json.loads(line) for line in (tmp_path / "straight" / "loss.jsonl").read_text().splitlines()]
    unet_records = [r for r in records if r["stage"] == "unet"]
    assert [r["step"] for r in unet_records] == [2, 4]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in unet_records)


def test_saved_pipeline_is_an_sd15_diffusers_folder(tmp_path):
    from diffusers import StableDiffusionPipeline

    tokenizer = shapes_model.build_tokenizer(tmp_path / "tok")
    out = shapes_model.save_pipeline(tmp_path / "pipe", shapes_model.build_vae(scaling_factor=0.5),
                                     shapes_model.build_text_encoder(tokenizer), tokenizer, shapes_model.build_unet())
    pipe = StableDiffusionPipeline.from_pretrained(out, torch_dtype=torch.float32)
    assert pipe.vae.config.scaling_factor == 0.5
    assert pipe.vae_scale_factor == 8 and pipe.unet.config.sample_size * 8 == 64
    assert pipe.unet.dtype == torch.float32
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    assert pipe.scheduler.config.prediction_type == "v_prediction"


def test_loss_weights_count_the_noisy_steps_in_x0_terms():
    snr = torch.tensor([1e-6, 0.01, 0.5, 1.0, 3.0, 5.0, 50.0])
    x0_weights = train_shapes._loss_weights(snr) * (snr + 1)
    assert torch.allclose(x0_weights, torch.tensor([1.0, 1.0, 1.0, 1.0, 3.0, 5.0, 5.0]))
