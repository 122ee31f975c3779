"""Train the shapes model on two CPU cores: VAE, then a v-prediction UNet under a frozen text encoder.

python -m sdcpu.export.train_shapes --work runs/shapes --out models/shapes/diffusers
Stages: VAE on crops, latents of the dataset, UNet (text encoder frozen), decoder fine-tuning on whole
images (encoder frozen, so it can run beside the UNet stage: --decoder-only). Each stage is
resumable (re-run the same command), seeded per step, and logs its loss to WORK/loss.jsonl.
The recipe is Rombach et al. 2022 (latent diffusion) with the v-prediction loss (Salimans & Ho
2022), caption dropout for classifier-free guidance (Ho & Salimans 2022), loss weights that count
the noisiest steps (_loss_weights), gradient clipping and an EMA of the weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from sdcpu.export import shapes_model
from sdcpu.models.shapes.render import make_dataset

VAE_CROP = 32
VAE_LR = 2e-3
DECODER_LR = 5e-4
CAPTION_DROPOUT = 0.1
MIN_SNR_GAMMA = 5.0
GRAD_CLIP = 1.0
CHECKPOINT_EVERY = 200
LOG_EVERY = 50


def _torch():
    """torch, imported on use so that `--help` and the data code stay light."""
    import torch

    return torch


def _save_atomic(state: dict, path: Path) -> None:
    """torch.save through a temporary name, so an interrupted run never leaves a torn checkpoint."""
    torch = _torch()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _log(work: Path, record: dict) -> None:
    """Append one JSON line to WORK/loss.jsonl and echo it."""
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "loss.jsonl", "a") as log:
        log.write(json.dumps(record) + "\n")
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()), flush=True)


def _lr(step: int, total: int, peak: float, warmup: int = 200) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _resume_autoencoder(path: Path, vae, opt) -> int:
    """Load the VAE and optimizer state of a stage checkpoint if there is one; the step to go on from."""
    torch = _torch()
    if not path.exists():
        return 0
    state = torch.load(path, weights_only=False)
    vae.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    return state["step"]


def _reconstruction_loss(recon, target):
    """L1 + MSE of a decoded batch against its images; also the MSE alone, for the log."""
    error = recon.float() - target
    mse = error.pow(2).mean()
    return error.abs().mean() + mse, mse


def _log_and_checkpoint(work: Path, stage: str, step: int, steps: int, mse, started: float, path: Path, vae, opt) -> None:
    """After `step` (0-based): log every LOG_EVERY steps, checkpoint every CHECKPOINT_EVERY and at the end."""
    if (step + 1) % LOG_EVERY == 0:
        _log(work, {"stage": stage, "step": step + 1, "mse": mse.item(), "s": time.perf_counter() - started})
    if (step + 1) % CHECKPOINT_EVERY == 0 or step + 1 == steps:
        _save_atomic({"step": step + 1, "model": vae.state_dict(), "opt": opt.state_dict()}, path)


def _to_tensor(images: np.ndarray):
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    torch = _torch()
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def train_vae(work: Path, steps: int, batch: int, seed: int, images: np.ndarray):
    """Fit the autoencoder on random crops (it is convolutional) with L1 + MSE + a small KL term, bf16 autocast (AMX)."""
    torch = _torch()
    path = work / "vae.pt"
    torch.manual_seed(seed)
    vae = shapes_model.build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=VAE_LR, weight_decay=0.0)
    started = time.perf_counter()
    for step in range(_resume_autoencoder(path, vae, opt), steps):
        rng = np.random.default_rng([seed, step])
        torch.manual_seed(seed * 1_000_003 + step)
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, VAE_LR, warmup=50)
        index = rng.integers(0, len(images), batch)
        y, x = rng.integers(0, images.shape[1] - VAE_CROP + 1, 2)
        crops = _to_tensor(images[index, y:y + VAE_CROP, x:x + VAE_CROP])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            posterior = vae.encode(crops).latent_dist
            recon = vae.decode(posterior.sample()).sample
        loss, mse = _reconstruction_loss(recon, crops)
        opt.zero_grad(set_to_none=True)
        (loss + 1e-6 * posterior.kl().mean()).backward()
        opt.step()
        _log_and_checkpoint(work, "vae", step, steps, mse, started, path, vae, opt)
    vae.eval()
    return vae


def encode_dataset(work: Path, vae, images: np.ndarray, captions: list[str]) -> dict:
    """Posterior means and stds of every image (cached in WORK/latents.npz) and the latent scale."""
    torch = _torch()
    path = work / "latents.npz"
    if not path.exists():
        means, stds = [], []
        with torch.no_grad():
            for start in range(0, len(images), 256):
                dist = vae.encode(_to_tensor(images[start:start + 256])).latent_dist
                means.append(dist.mean.numpy())
                stds.append(dist.std.numpy())
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as out:
            np.savez(out, mean=np.concatenate(means), std=np.concatenate(stds), captions=np.array(captions))
        tmp.replace(path)
    data = dict(np.load(path))
    data["scaling_factor"] = float(1.0 / data["mean"].std())
    return data


def train_decoder(work: Path, vae, data: dict, images: np.ndarray, steps: int, batch: int, seed: int):
    """Fine-tune only the decoder on whole images from the frozen encoder's latents (SD's ft-MSE VAE recipe)."""
    torch = _torch()
    path = work / "decoder.pt"
    trained = list(vae.post_quant_conv.parameters()) + list(vae.decoder.parameters())
    opt = torch.optim.AdamW(trained, lr=DECODER_LR, weight_decay=0.0)
    mean, std = torch.from_numpy(data["mean"]), torch.from_numpy(data["std"])
    started = time.perf_counter()
    for step in range(_resume_autoencoder(path, vae, opt), steps):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, DECODER_LR, warmup=20)
        index = torch.randint(0, len(mean), (batch,), generator=generator)
        latents = mean[index] + std[index] * torch.randn(mean[index].shape, generator=generator)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            recon = vae.decode(latents).sample
        loss, mse = _reconstruction_loss(recon, _to_tensor(images[index.numpy()]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _log_and_checkpoint(work, "decoder", step, steps, mse, started, path, vae, opt)
    vae.eval()
    return vae


def _token_ids(tokenizer, captions: list[str]):
    """Padded 77-token ids, as the runtime and diffusers' pipeline feed them."""
    torch = _torch()
    return torch.tensor(tokenizer(captions, padding="max_length", max_length=77, truncation=True).input_ids)


def _ema_update(ema: list, params: list, step: int) -> None:
    """Exponential moving average of the weights with a warm-up of the decay (up to 0.999)."""
    torch = _torch()
    decay = min(0.999, (1 + step) / (10 + step))
    with torch.no_grad():
        torch._foreach_mul_(ema, decay)
        torch._foreach_add_(ema, params, alpha=1 - decay)


def _loss_weights(snr):
    """v-MSE weights that weigh the x0 error by clamp(SNR, 1, 5): min-SNR-5 (Hang et al. 2023) above
    SNR 1, and below it x0 weight 1 (v-MSE's own), so the noisy steps where a prompt's colours are
    decided count as much as the rest."""
    torch = _torch()
    return torch.clamp(snr, min=1.0, max=MIN_SNR_GAMMA) / (snr + 1)


def _diffusion_loss(unet, text_encoder, scheduler, latents, ids, generator):
    """Weighted v-prediction MSE (see _loss_weights) at uniformly drawn timesteps."""
    torch = _torch()
    noise = torch.randn(latents.shape, generator=generator)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
    noisy = scheduler.add_noise(latents, noise, t)
    with torch.no_grad():
        context = text_encoder(ids)[0]
    v = unet(noisy, t, context).sample
    alphas = scheduler.alphas_cumprod[t]
    weight = _loss_weights(alphas / (1 - alphas))
    return (weight * (v - scheduler.get_velocity(latents, noise, t)).pow(2).mean(dim=(1, 2, 3))).mean()


def train_denoiser(work: Path, data: dict, tokenizer, steps: int, batch: int, lr: float, seed: int,
                   time_limit: float, stop_after: int | None = None):
    """Train the UNet under a frozen text encoder (its seeded random init, frozen as SD freezes CLIP:
    trained jointly from scratch, its output collapsed to the same vector for every prompt before the
    UNet learnt to read it); returns both, the UNet with EMA weights, or None if stopped early."""
    torch = _torch()
    path = work / "unet.pt"
    torch.manual_seed(seed + 1)
    unet, text_encoder = shapes_model.build_unet(), shapes_model.build_text_encoder(tokenizer)
    text_encoder.requires_grad_(False).eval()
    params = list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    ema = [p.detach().clone() for p in params]
    state = torch.load(path, weights_only=False) if path.exists() else {"step": 0}
    if "unet" in state:
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["opt"])
        ema = state["ema"]
    scheduler = shapes_model.noise_scheduler()
    ids_all = _token_ids(tokenizer, [str(c) for c in data["captions"]])
    empty = _token_ids(tokenizer, [""])[0]
    mean, std = torch.from_numpy(data["mean"]), torch.from_numpy(data["std"])
    started, losses = time.perf_counter(), []
    for step in range(state["step"], steps):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr)
        index = torch.randint(0, len(mean), (batch,), generator=generator)
        sample = mean[index] + std[index] * torch.randn(mean[index].shape, generator=generator)
        ids = ids_all[index].clone()
        ids[torch.rand(batch, generator=generator) < CAPTION_DROPOUT] = empty
        loss = _diffusion_loss(unet, text_encoder, scheduler, sample * data["scaling_factor"], ids, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        opt.step()
        _ema_update(ema, [p.detach() for p in params], step)
        losses.append(loss.item())
        if (step + 1) % LOG_EVERY == 0:
            elapsed = time.perf_counter() - started
            _log(work, {"stage": "unet", "step": step + 1, "loss": float(np.mean(losses)), "lr": group["lr"], "s": elapsed})
            losses = []
        done = step + 1 == steps
        out_of_time = time.perf_counter() - started > time_limit or step + 1 == stop_after
        if (step + 1) % CHECKPOINT_EVERY == 0 or done or out_of_time:
            _save_atomic({"step": step + 1, "unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                          "opt": opt.state_dict(), "ema": ema}, path)
        if out_of_time and not done:
            print(f"stopped at step {step + 1}; run again to resume", flush=True)
            return None
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    return unet.eval(), text_encoder.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/shapes"), help="checkpoints, latents, loss log")
    parser.add_argument("--out", type=Path, default=Path("models/shapes/diffusers"))
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--decoder-steps", type=int, default=2000, help="decoder fine-tuning on whole images, encoder frozen")
    parser.add_argument("--decoder-only", action="store_true", help="run only the VAE stages (e.g. beside a UNet run on the other core)")
    parser.add_argument("--unet-steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=float("inf"), help="seconds of UNet training before stopping to resume later")
    parser.add_argument("--stop-after", type=int, default=None, help="stop the UNet stage after this step (resume later, e.g. with more --unet-steps)")
    args = parser.parse_args()

    torch = _torch()
    torch.manual_seed(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"rendering {args.images} images (seed {args.seed})", flush=True)
    images, captions = make_dataset(args.images, args.seed)
    vae = train_vae(args.work, args.vae_steps, 32, args.seed, images)
    data = encode_dataset(args.work, vae, images, captions)
    if args.decoder_only:
        train_decoder(args.work, vae, data, images, args.decoder_steps, 16, args.seed)
        return
    tokenizer = shapes_model.build_tokenizer(args.work / "tokenizer")
    trained = train_denoiser(args.work, data, tokenizer, args.unet_steps, args.batch, args.lr, args.seed,
                             args.time_limit, args.stop_after)
    if trained is None:
        return
    vae = train_decoder(args.work, vae, data, images, args.decoder_steps, 16, args.seed)
    vae.register_to_config(scaling_factor=data["scaling_factor"])
    shapes_model.save_pipeline(args.out, vae, trained[1], tokenizer, trained[0])
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
