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

from sdcpu.engine.a1111_loop import Plan, make_plan, run_plan, steps_reported
from sdcpu.engine.a1111_samplers import A1111_SAMPLERS, is_a1111_sampler
from sdcpu.engine.backends import Graph, default_cache_dir, load_graph
from sdcpu.engine.deepcache import DEEP, FEATURE, SHALLOW, DeepCacheUNet, check_interval, require_graphs
from sdcpu.engine.denoisers import denoiser_from_eps, denoiser_from_v
from sdcpu.engine.errors import UserError
from sdcpu.engine.graph_shapes import complete, fit_request_shapes, request_shapes, static_shapes
from sdcpu.engine.image_noise import request_noise
from sdcpu.engine.img2img import ImageEncoder, pixels_to_sample, posterior_mean, starting_point
from sdcpu.engine.manifest import TINY_VAE_DECODER, VAE_ENCODER, Manifest, load_manifest
from sdcpu.engine.prompt_syntax import prompt_schedule
from sdcpu.engine.request import Request, validate_request
from sdcpu.engine.samplers import default_sampler_for, sample_from
from sdcpu.engine.schedules import image_to_image_schedule, make_schedule
from sdcpu.engine.text_conditioning import TextConditioning, TextEncoders
from sdcpu.engine.tokenizer import ClipTokenizer
from sdcpu.engine.unet_inputs import guidance_scale_embedding, guided_prediction, per_row_inputs
from sdcpu.models.registry import model_guidance

StepCallback = Callable[[int, int], None]
DenoisedCallback = Callable[[int, int, np.ndarray], None]


@dataclass
class Result:
    """Decoded images (H, W, 3 uint8), their seeds, and where the time went."""

    images: list[np.ndarray]
    seeds: list[int]
    timings: dict[str, float] = field(default_factory=dict)
    subseeds: list[int] = field(default_factory=list)


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
        self.unet = graphs["unet"]
        self.vae_decoder = graphs["vae_decoder"]
        self.tokenizers = tokenizers
        encoders = [graphs[n] for n in ("text_encoder", "text_encoder_2") if n in graphs]
        self.text = TextEncoders(tokenizers, encoders, manifest.force_zeros_for_empty_prompt, manifest.source)
        self.scheduler_config = scheduler_config
        self.image_encoder = ImageEncoder(load_encoder, f"{folder} has no VAE encoder (exported before sdcpu had "
                                          f"image-to-image); re-export it to use --init-image: "
                                          f"sdcpu export {manifest.source} DIR")

    @classmethod
    def load(cls, folder: Path, compile_cache: bool = True, inference_precision: str | None = None,
             deepcache: int | None = None, tiny_vae: bool = False,
             log: Callable[[str], None] | None = None, size: tuple[int, int] | None = None,
             cfg: bool | None = None, threads: int | None = None) -> "Pipeline":
        """Check the folder against its manifest, then compile its graphs (OpenVINO: through the compile cache).

        `log` receives one-line notes (a compile-cache folder found corrupt and rebuilt, say).

        `size=(width, height)`: OpenVINO compiles every graph for static shapes at that size, the UNet for
        both CFG halves when `cfg` (default: the model's default guidance uses CFG; engine/graph_shapes.py);
        a request that needs other shapes recompiles (cached). Without `size` shapes stay dynamic.

        `deepcache=N` runs the full UNet every N-th call and its shallow branch in between (engine/deepcache.py).
        `tiny_vae` decodes with the export's `vae_decoder_tiny` (TAESD) and does not compile `vae_decoder`.
        `threads` caps the cores each graph runs on (worker processes sharing a machine); default: all.
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
                                      inference_precision, log, wanted, threads)
        if deepcache is not None:
            graphs["unet"] = DeepCacheUNet(graphs.pop(DEEP), graphs.pop(SHALLOW), deepcache)
        if tiny_vae:
            graphs["vae_decoder"] = graphs.pop(TINY_VAE_DECODER)

        def load_encoder() -> Graph:
            entry = manifest.components[VAE_ENCODER]
            wanted = shapes.get(VAE_ENCODER) or None
            return load_graph(folder, VAE_ENCODER, entry, manifest.format, cache_dir, inference_precision, log, wanted,
                              threads)

        return cls(folder, manifest, graphs, tokenizers, config, load_encoder if VAE_ENCODER in manifest.components else None)

    @property
    def text_encoders(self) -> list[Graph]:
        """The text encoder graph(s), as `self.text` runs them."""
        return self.text.encoders

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
        """The input shapes each graph sees for `request` (engine/graph_shapes.py)."""
        return request_shapes(self, request, cfg)

    def fit_static_shapes(self, request: Request, log: Callable[[str], None] | None = None) -> None:
        """Static graphs recompiled for `request` where it needs other shapes (engine/graph_shapes.py)."""
        fit_request_shapes(self, request, log)

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
        self.text.check_clip_skip(request.clip_skip)

    @property
    def lcm_pipeline(self) -> bool:
        """Whether diffusers runs this model with LatentConsistencyModel*Pipeline (its own img2img strength rule)."""
        return self.manifest.family == "lcm"

    def steps_run(self, request: Request) -> int:
        """The steps the sampler loop runs: all of them, or image-to-image's share of them (as diffusers, or A1111)."""
        if is_a1111_sampler(request.sampler):
            return steps_reported(self.a1111_plan(request))
        if request.init_image is None:
            return make_schedule(request.sampler, self.scheduler_config, request.steps).steps
        return image_to_image_schedule(request.sampler, self.scheduler_config, request.steps, request.strength,
                                       self.lcm_pipeline).steps

    def schedule_steps(self, request: Request) -> int:
        """The steps prompt editing counts in: A1111's total_steps (twice the steps for second-order samplers)."""
        second_order = is_a1111_sampler(request.sampler) and A1111_SAMPLERS[request.sampler].second_order
        return request.steps * (2 if second_order else 1)

    def conditioning(self, request: Request, cfg: bool) -> TextConditioning:
        """The text encoders' inputs to the UNet for every call (prompt embeddings; SDXL: pooled too)."""
        return self.text.conditioning(request.prompt, request.negative_prompt, request.prompt_syntax,
                                      request.clip_skip, self.schedule_steps(request), cfg, request.emphasis)

    def token_lengths(self, request: Request, cfg: bool) -> set[int]:
        """The UNet context lengths `request` feeds it (77 per 75-token chunk), from the tokenizer alone."""
        zero_negative = cfg and not request.negative_prompt and self.manifest.force_zeros_for_empty_prompt
        texts = [request.prompt] + ([request.negative_prompt] if cfg and not zero_negative else [])
        lengths = self.text.token_lengths(texts, request.prompt_syntax, self.schedule_steps(request))
        return lengths | ({self.tokenizers[0].max_length} if zero_negative else set())  # zeros: one chunk

    def guidance_inputs(self, request: Request) -> dict[str, np.ndarray]:
        """LCM: the guidance scale embedding the UNet takes instead of CFG; nothing for other models."""
        if not self.has_guidance_embedding:
            return {}
        w = np.full(request.batch, request.guidance - 1.0, np.float32)
        return {"timestep_cond": guidance_scale_embedding(w, self.manifest.time_cond_proj_dim)}

    def _unet_prediction(self, request: Request, conditioning: TextConditioning, cfg: bool,
                         extra: np.ndarray | None = None):
        """The UNet as f(x_vp, t) -> its prediction (engine/unet_inputs.py)."""
        per_row = per_row_inputs(self.guidance_inputs(request), (request.width, request.height) if self.text.sdxl else None)
        train_timesteps = float(self.scheduler_config.get("num_train_timesteps", 1000))
        return guided_prediction(self.unet, request, conditioning, cfg, per_row, train_timesteps, extra)

    def _denoiser(self, unet_prediction):
        if self.scheduler_config.get("prediction_type", "epsilon") == "v_prediction":
            return denoiser_from_v(unet_prediction)
        return denoiser_from_eps(unet_prediction)

    def decode(self, latents: np.ndarray) -> list[np.ndarray]:
        """VAE-decode one image at a time (lower peak memory than the whole batch)."""
        scaled = latents / np.float32(self.manifest.vae_scaling_factor)
        return [img for x in scaled for img in to_uint8_images(self.vae_decoder(latent_sample=x[None]))]

    def encode(self, request: Request) -> TextConditioning:
        """The text encoders' part of `request`, reusable for any request with the same prompts, text settings,
        CFG and (when the prompt edits per step) steps: see conditioning_key."""
        return self.conditioning(request, self.uses_cfg(request.guidance))

    def conditioning_key(self, request: Request) -> tuple:
        """Requests with equal keys share encode()'s result."""
        edits = len(prompt_schedule(request.prompt, 1000)) > 1 or len(prompt_schedule(request.negative_prompt, 1000)) > 1
        steps = self.schedule_steps(request) if edits and request.prompt_syntax != "plain" else None
        return (self.uses_cfg(request.guidance), request.prompt, request.negative_prompt, request.prompt_syntax,
                request.clip_skip, request.emphasis, steps)

    def generate(self, request: Request, on_step: StepCallback | None = None,
                 conditioning: TextConditioning | None = None,
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
        timings["text_encoder"] = time.perf_counter() - started

        generator = request_noise(request, self.manifest)
        callback = self._step_callback(on_step, on_denoised)
        if is_a1111_sampler(request.sampler):
            latents = self._sample_a1111(request, conditioning, cfg, generator, callback, timings)
        else:
            latents = self._sample_diffusers(request, conditioning, cfg, generator, callback, timings)

        t0 = time.perf_counter()
        images = self.decode(latents)
        timings["vae_decoder"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - started
        seeds, subseeds = request.image_seeds()
        return Result(images=images, seeds=seeds, timings=timings, subseeds=subseeds)

    def _sample_diffusers(self, request: Request, conditioning, cfg: bool, generator, callback, timings) -> np.ndarray:
        """sdcpu's own samplers: diffusers' pipelines step for step (engine/samplers.py, engine/img2img.py)."""
        t0 = time.perf_counter()
        encoder = self.image_encoder.moments if request.init_image is not None else None
        start = starting_point(request, self.manifest, self.scheduler_config, encoder, generator, self.lcm_pipeline)
        if encoder is not None:
            timings["vae_encoder"] = time.perf_counter() - t0
        model = self._denoiser(self._unet_prediction(request, conditioning, cfg, start.unet_extra))
        t0 = time.perf_counter()
        latents = sample_from(request.sampler, model, start.x, start.schedule, generator, callback, start.blend)
        timings["denoise"] = time.perf_counter() - t0
        return latents

    def _sample_a1111(self, request: Request, conditioning, cfg: bool, generator, callback, timings) -> np.ndarray:
        """Automatic1111's samplers, as A1111 runs them (engine/a1111_loop.py); img2img from the posterior mean."""
        init_latent = None
        if request.init_image is not None:
            t0 = time.perf_counter()
            moments = self.image_encoder.moments(pixels_to_sample(request.init_image))
            init_latent = np.repeat(posterior_mean(moments), request.batch, axis=0) * np.float32(self.manifest.vae_scaling_factor)
            timings["vae_encoder"] = time.perf_counter() - t0
        plan = self.a1111_plan(request)
        eps_model = self._unet_prediction(request, conditioning, cfg)
        t0 = time.perf_counter()
        v_prediction = self.scheduler_config.get("prediction_type") == "v_prediction"
        latents = run_plan(plan, eps_model, generator.first(), init_latent,
                           lambda: generator.randn((request.batch, *generator.shape)), callback, v_prediction)
        timings["denoise"] = time.perf_counter() - t0
        return latents

    def a1111_plan(self, request: Request) -> Plan:
        """The sigmas or timesteps an A1111 sampler steps through for `request`."""
        strength = request.strength if request.init_image is not None else None
        return make_plan(request.sampler, request.schedule_type, request.steps, self.scheduler_config, strength)

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
