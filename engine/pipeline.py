"""Text-to-image and image-to-image on an exported folder: encode prompt, numpy sampler loop, VAE decode.

Reproduces diffusers' StableDiffusion(XL)Pipeline / LatentConsistencyModelPipeline, their Img2Img
pipelines and StableDiffusionInpaintPipeline step for step (classifier-free guidance as one batch-2
UNet call; LCM's guidance embedding instead of CFG; where the loop starts: engine/img2img.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from sdcpu.engine.backends import Graph, default_cache_dir, load_graph
from sdcpu.engine.conditioning import guidance_scale_embedding, sd_conditioning, sdxl_conditioning
from sdcpu.engine.deepcache import DEEP, FEATURE, SHALLOW, DeepCacheUNet, check_interval, require_graphs
from sdcpu.engine.denoisers import denoiser_from_eps, denoiser_from_v
from sdcpu.engine.errors import UserError
from sdcpu.engine.graph_shapes import complete, static_shapes
from sdcpu.engine.img2img import ImageEncoder, starting_point, unet_channels
from sdcpu.engine.manifest import TINY_VAE_DECODER, VAE_ENCODER, Manifest, load_manifest
from sdcpu.engine.noise import TorchCompatibleNoise
from sdcpu.engine.request import FULL_INTERVAL, Request, validate_request
from sdcpu.engine.samplers import default_sampler_for, sample_from
from sdcpu.engine.schedules import image_to_image_schedule, make_schedule
from sdcpu.engine.tokenizer import ClipTokenizer
from sdcpu.models.registry import model_guidance

StepCallback = Callable[[int, int], None]
DenoisedCallback = Callable[[int, int, np.ndarray], None]


@dataclass
class Result:
    """Decoded images (H, W, 3 uint8), their seeds, and where the time went."""

    images: list[np.ndarray]
    seeds: list[int]
    timings: dict[str, float] = field(default_factory=dict)


def to_uint8_images(decoded: np.ndarray) -> list[np.ndarray]:
    """[-1, 1] NCHW -> uint8 HWC, rounded as diffusers' VaeImageProcessor does."""
    unit = np.clip(decoded / 2 + 0.5, 0.0, 1.0)
    return [np.round(img.transpose(1, 2, 0) * 255).astype(np.uint8) for img in unit]


def cfg_applies(manifest: Manifest, guidance: float) -> bool:
    """CFG only when guidance > 1 and the UNet has no guidance embedding (as diffusers)."""
    return guidance > 1.0 and manifest.time_cond_proj_dim is None


def _skipped_graphs(deepcache: bool, tiny_vae: bool) -> set[str]:
    """The graphs Pipeline.load leaves uncompiled: the UNet variant and the VAE decoder it will not run, and
    the VAE encoder (compiled on the first image-to-image request)."""
    unets = {"unet"} if deepcache else {DEEP, SHALLOW}
    return unets | {VAE_ENCODER} | ({"vae_decoder"} if tiny_vae else {TINY_VAE_DECODER})


class Pipeline:
    """An exported model folder loaded on its backend, ready to generate."""

    def __init__(self, folder: Path, manifest: Manifest, graphs: dict[str, Graph],
                 tokenizers: list[ClipTokenizer], scheduler_config: dict,
                 load_encoder: Callable[[], Graph] | None = None):
        self.folder = folder
        self.manifest = manifest
        self.text_encoders = [graphs[n] for n in ("text_encoder", "text_encoder_2") if n in graphs]
        self.unet = graphs["unet"]
        self.vae_decoder = graphs["vae_decoder"]
        self.tokenizers = tokenizers
        self.scheduler_config = scheduler_config
        self.image_encoder = ImageEncoder(load_encoder, f"{folder} has no VAE encoder (exported before sdcpu had "
                                          f"image-to-image); re-export it to use --init-image: "
                                          f"sdcpu export {manifest.source} DIR")

    @classmethod
    def load(cls, folder: Path, compile_cache: bool = True, inference_precision: str | None = None,
             deepcache: int | None = None, tiny_vae: bool = False,
             log: Callable[[str], None] | None = None, size: tuple[int, int] | None = None,
             cfg: bool | None = None) -> "Pipeline":
        """Check the folder against its manifest, then compile its graphs (OpenVINO: through the compile cache).

        `log` receives one-line notes (a compile-cache folder found corrupt and rebuilt, say).

        `size=(width, height)`: OpenVINO compiles every graph for static shapes at that size, the UNet for
        both CFG halves when `cfg` (default: the model's default guidance uses CFG; engine/graph_shapes.py);
        a request that needs other shapes recompiles (cached). Without `size` shapes stay dynamic.

        `deepcache=N` runs the full UNet every N-th call and its shallow branch in between (engine/deepcache.py).
        `tiny_vae` decodes with the export's `vae_decoder_tiny` (TAESD) and does not compile `vae_decoder`.
        """
        folder = Path(folder).expanduser()
        cache_dir = default_cache_dir() if compile_cache else None
        manifest = load_manifest(folder)
        check_interval(deepcache)
        if deepcache is not None:
            require_graphs(manifest, folder)
        if tiny_vae and TINY_VAE_DECODER not in manifest.components:
            raise UserError(f"{folder} has no tiny VAE decoder; re-export it with `sdcpu export --tiny-vae TINY`")
        try:
            config = json.loads((folder / manifest.scheduler_config).read_text())
        except ValueError as exc:
            raise UserError(f"corrupt scheduler config in {folder}: {exc}") from None
        names = [manifest.tokenizer] + ([manifest.tokenizer_2] if manifest.tokenizer_2 else [])
        tokenizers = [ClipTokenizer.from_folder(folder / name) for name in names]
        graphs = {}
        skipped = _skipped_graphs(deepcache is not None, tiny_vae)
        static = size is not None and manifest.format == "openvino" and not manifest.static_shape
        if cfg is None:
            cfg = cfg_applies(manifest, model_guidance(manifest))
        shapes = static_shapes(manifest, *size, cfg) if static else {}
        for name in sorted(manifest.components, key=lambda n: n == SHALLOW):  # the shallow graph needs the deep one
            if name in skipped:
                continue
            entry = manifest.components[name]
            wanted = dict(shapes.get(name, {}))
            if name == SHALLOW and wanted:
                wanted[FEATURE] = graphs[DEEP].output_shape(FEATURE)
            wanted = wanted if wanted and complete(wanted, entry.inputs) and None not in wanted.values() else None
            graphs[name] = load_graph(folder, name, entry, manifest.format, cache_dir,
                                      inference_precision, log, wanted)
        if deepcache is not None:
            graphs["unet"] = DeepCacheUNet(graphs.pop(DEEP), graphs.pop(SHALLOW), deepcache)
        if tiny_vae:
            graphs["vae_decoder"] = graphs.pop(TINY_VAE_DECODER)

        def load_encoder() -> Graph:
            entry = manifest.components[VAE_ENCODER]
            wanted = shapes.get(VAE_ENCODER) or None
            return load_graph(folder, VAE_ENCODER, entry, manifest.format, cache_dir, inference_precision, log, wanted)

        return cls(folder, manifest, graphs, tokenizers, config, load_encoder if VAE_ENCODER in manifest.components else None)

    @property
    def deepcache(self) -> int | None:
        """The DeepCache interval the UNet runs with; None for the plain UNet."""
        return getattr(self.unet, "interval", None)

    @property
    def tiny_vae(self) -> bool:
        """Whether the decoder it runs is the export's tiny VAE (TAESD) rather than the pipeline's VAE."""
        return getattr(self.vae_decoder, "name", "vae_decoder") == TINY_VAE_DECODER

    @property
    def inference_precision(self) -> str:
        """The precision OpenVINO computes the UNet in (f32, bf16); empty for ONNX Runtime."""
        value = self.unet.properties.get("inference_precision", "")
        return value if self.manifest.format == "openvino" else ""

    def runtime_properties(self) -> dict[str, dict]:
        """Each graph's compiled settings (precision, threads, streams, performance hint)."""
        return {name: dict(graph.properties) for name, graph in self.graphs().items()}

    def graphs(self) -> dict[str, Graph]:
        encoders = dict(zip(("text_encoder", "text_encoder_2"), self.text_encoders))
        return {**encoders, "unet": self.unet, "vae_decoder": self.vae_decoder}

    def shapes_for(self, request: Request, cfg: bool) -> dict[str, dict[str, tuple]]:
        """The input shapes each graph sees for `request` (text encoders and VAE run one image at a time)."""
        factor = self.manifest.vae_scale_factor
        latent = (request.height // factor, request.width // factor)
        rows = request.batch * (2 if cfg else 1)
        unet = {k: (rows, *v["shape"][1:]) for k, v in self.unet.entry.inputs.items()}
        unet["sample"] = (rows, unet_channels(self.manifest), *latent)
        shapes = {"unet": unet, "vae_decoder": {"latent_sample": (1, self.manifest.latent_channels, *latent)}}
        if request.init_image is not None:
            shapes[VAE_ENCODER] = {"sample": (1, 3, request.height, request.width)}
        for name, encoder in zip(("text_encoder", "text_encoder_2"), self.text_encoders):
            shapes[name] = {"input_ids": (1, encoder.entry.inputs["input_ids"]["shape"][1])}
        return shapes

    def fit_static_shapes(self, request: Request, log: Callable[[str], None] | None = None) -> None:
        """Static graphs: OpenVINO recompiles for another size/batch (a note says so for static exports); ONNX cannot.

        A CFG request with a limited guidance interval calls the UNet with both halves and with one: its UNet
        gets a dynamic batch (static size)."""
        cfg = self.uses_cfg(request.guidance)
        for name, shapes in self.shapes_for(request, cfg).items():
            graph = self.image_encoder.graph if name == VAE_ENCODER else self.graphs()[name]
            if name == "unet" and cfg and request.guidance_interval != FULL_INTERVAL and graph.static_batch:
                shapes = {k: (-1, *v[1:]) for k, v in shapes.items()}
            elif not graph.static_mismatches(shapes):
                continue
            static = self.manifest.static_shape or {}
            if self.manifest.format != "openvino":
                raise UserError(
                    f"this ONNX model was exported with static shapes ({static.get('width')}x{static.get('height')}, "
                    f"batch {static.get('batch')}); generate at that size or re-export without --width/--height/--batch"
                )
            if log and static:
                log(f"note: {name} was exported static; recompiling for {request.width}x{request.height} batch {request.batch}")
            graph.reshape({k: tuple(v) for k, v in graph.per_call(shapes).items()})

    @property
    def has_guidance_embedding(self) -> bool:
        return self.manifest.time_cond_proj_dim is not None

    def default_sampler(self) -> str:
        """The sampler that reproduces the scheduler the model's config names (as diffusers)."""
        try:
            return default_sampler_for(self.scheduler_config)
        except ValueError as exc:
            raise UserError(f"{self.folder}: {exc}; pick one with --scheduler") from None

    def uses_cfg(self, guidance: float) -> bool:
        """CFG only when guidance > 1 and the UNet has no guidance embedding (as diffusers)."""
        return cfg_applies(self.manifest, guidance)

    def validate(self, request: Request) -> None:
        """Reject requests the model cannot run, with one line each (engine/request.py)."""
        validate_request(request, self.manifest, self.scheduler_config, self.lcm_pipeline)

    @property
    def lcm_pipeline(self) -> bool:
        """Whether diffusers runs this model with LatentConsistencyModel*Pipeline (its own img2img strength rule)."""
        return self.manifest.family == "lcm"

    def steps_run(self, request: Request) -> int:
        """The steps the sampler loop runs: all of them, or image-to-image's share of them (as diffusers)."""
        if request.init_image is None:
            return make_schedule(request.sampler, self.scheduler_config, request.steps).steps
        return image_to_image_schedule(request.sampler, self.scheduler_config, request.steps, request.strength,
                                       self.lcm_pipeline).steps

    def overlong_prompts(self, request: Request) -> dict[str, tuple[int, int]]:
        """The prompts longer than the text encoder reads, as {label: (tokens, tokens used)}."""
        tokenizer = self.tokenizers[0]
        limit = tokenizer.max_length - 2
        prompts = {"prompt": request.prompt, "negative prompt": request.negative_prompt}
        counts = {label: tokenizer.count(text) for label, text in prompts.items() if text}
        return {label: (count, limit) for label, count in counts.items() if count > limit}

    def conditioning(self, request: Request, cfg: bool) -> dict[str, np.ndarray]:
        """The text encoders' inputs to the UNet (prompt embeddings; SDXL: pooled and time ids too)."""
        r = request
        if len(self.text_encoders) == 2:
            return sdxl_conditioning(
                self.tokenizers, self.text_encoders, r.prompt, r.negative_prompt, r.batch, cfg,
                self.manifest.force_zeros_for_empty_prompt, r.width, r.height,
            )
        return sd_conditioning(self.tokenizers[0], self.text_encoders[0], r.prompt, r.negative_prompt, r.batch, cfg)

    def guidance_inputs(self, request: Request) -> dict[str, np.ndarray]:
        """LCM: the guidance scale embedding the UNet takes instead of CFG; nothing for other models."""
        if not self.has_guidance_embedding:
            return {}
        w = np.full(request.batch, request.guidance - 1.0, np.float32)
        return {"timestep_cond": guidance_scale_embedding(w, self.manifest.time_cond_proj_dim)}

    def _unet_prediction(self, request: Request, conditioning: dict, cfg: bool, extra: np.ndarray | None = None):
        """The UNet as f(x_vp, t) -> its prediction (eps or v), guided by CFG or LCM's embedding.

        Outside the request's guidance interval a CFG step runs the conditional half alone (one batch-1 call).
        `extra`: channels appended to every sample (an inpainting UNet's mask and masked-image latents).
        """
        conditional = {k: v[request.batch:] if cfg and len(v) == 2 * request.batch else v
                       for k, v in conditioning.items()}
        train_timesteps = float(self.scheduler_config.get("num_train_timesteps", 1000))

        def with_extra(x: np.ndarray) -> np.ndarray:
            return x if extra is None else np.concatenate([x, np.tile(extra, (len(x) // len(extra), 1, 1, 1))], axis=1)

        def predict(x: np.ndarray, t: float) -> np.ndarray:
            if not (cfg and request.guides_at(t / train_timesteps)):
                return self.unet(sample=with_extra(x), timestep=np.full(len(x), t, np.float32), **conditional)
            sample = with_extra(np.concatenate([x, x]))
            out = self.unet(sample=sample, timestep=np.full(len(sample), t, np.float32), **conditioning)
            uncond, cond = np.split(out, 2)
            return uncond + np.float32(request.guidance) * (cond - uncond)

        return predict

    def _denoiser(self, unet_prediction):
        if self.scheduler_config.get("prediction_type", "epsilon") == "v_prediction":
            return denoiser_from_v(unet_prediction)
        return denoiser_from_eps(unet_prediction)

    def decode(self, latents: np.ndarray) -> list[np.ndarray]:
        """VAE-decode one image at a time (lower peak memory than the whole batch)."""
        scaled = latents / np.float32(self.manifest.vae_scaling_factor)
        return [img for x in scaled for img in to_uint8_images(self.vae_decoder(latent_sample=x[None]))]

    def encode(self, request: Request) -> dict[str, np.ndarray]:
        """The text encoders' part of `request`, reusable for any request with the same prompts, size, batch and CFG."""
        return self.conditioning(request, self.uses_cfg(request.guidance))

    def generate(self, request: Request, on_step: StepCallback | None = None,
                 conditioning: dict[str, np.ndarray] | None = None,
                 on_denoised: DenoisedCallback | None = None) -> Result:
        """Run one request; `on_step(i, n)` after each step, `on_denoised(i, n, x0)` with the step's x0 estimate.

        `conditioning` from `encode()` of an equivalent request skips the text encoders.
        """
        self.validate(request)
        self.fit_static_shapes(request)
        if hasattr(self.unet, "reset"):
            self.unet.reset()
        timings = {}
        started = time.perf_counter()
        cfg = self.uses_cfg(request.guidance)
        if conditioning is None:
            conditioning = self.conditioning(request, cfg)
        conditioning = {**conditioning, **self.guidance_inputs(request)}
        timings["text_encoder"] = time.perf_counter() - started

        seeds = [request.seed + i for i in range(request.batch)]
        generator = TorchCompatibleNoise(seeds)
        t0 = time.perf_counter()
        encoder = self.image_encoder.moments if request.init_image is not None else None
        start = starting_point(request, self.manifest, self.scheduler_config, encoder, generator, self.lcm_pipeline)
        if encoder is not None:
            timings["vae_encoder"] = time.perf_counter() - t0
        model = self._denoiser(self._unet_prediction(request, conditioning, cfg, start.unet_extra))
        t0 = time.perf_counter()
        latents = sample_from(request.sampler, model, start.x, start.schedule, generator,
                              self._step_callback(on_step, on_denoised), start.blend)
        timings["denoise"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        images = self.decode(latents)
        timings["vae_decoder"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - started
        return Result(images=images, seeds=seeds, timings=timings)

    @staticmethod
    def _step_callback(on_step: StepCallback | None, on_denoised: DenoisedCallback | None):
        if not on_step and not on_denoised:
            return None

        def callback(i: int, n: int, x: np.ndarray, denoised: np.ndarray) -> None:
            if on_denoised:
                on_denoised(i, n, denoised)
            if on_step:
                on_step(i, n)

        return callback
