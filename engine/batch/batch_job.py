"""A batch job: one image, its full parameters, and the id they hash to; the `Request` a worker builds from it.

The id is the SHA-256 of the model's identity and every field of the job (the batch's defaults merged under
the job's own, the seed resolved, init images by their content's SHA-256), so the same job always gets the
same file name, whichever run, worker or node makes it, and a changed parameter makes a new job. A job with
no seed takes each of --seeds; with neither, a seed derived from its other fields (stable across runs).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from sdcpu.engine.batch.job_file import JobLine, LineError
from sdcpu.engine.errors import UserError
from sdcpu.engine.infotext_values import parse_size
from sdcpu.engine.init_image import ImageFile, read_image_file
from sdcpu.engine.manifest import Manifest
from sdcpu.engine.pipeline import Pipeline, Request
from sdcpu.engine.request_defaults import ImageInputs, build_request, parse_guidance_interval

ID_LENGTH = 16
REQUEST_SETTINGS = ("schedule_type", "prompt_syntax", "clip_skip", "noise", "subseed", "subseed_strength", "ensd",
                    "emphasis")


@dataclass(frozen=True)
class LoadOptions:
    """What every worker loads the model with: fixed for the whole batch (one pipeline per worker)."""

    folder: Path
    inference_precision: str | None = None
    deepcache: int | None = None
    tiny_vae: bool = False
    compile_cache: bool = True
    threads: int | None = None

    def identity(self, manifest: Manifest) -> dict:
        """What of the model and its loading changes pixels (the threads do not)."""
        return {"model": self.folder.name, "source": manifest.source, "format": manifest.format,
                "precision": manifest.precision, "a1111_hash": manifest.a1111_hash,
                "inference_precision": self.inference_precision, "deepcache": self.deepcache,
                "tiny_vae": self.tiny_vae}


@dataclass(frozen=True)
class BatchJob:
    id: str
    line: int
    fields: dict
    """generate's per-image options (job_file.JOB_FIELDS), the seed resolved."""
    init: ImageFile | None = None
    mask: ImageFile | None = None

    @property
    def file_name(self) -> str:
        return f"{self.id}.png"

    @property
    def recorded_fields(self) -> dict:
        """The fields as the ledger records them: the init image's and mask's SHA-256 beside their paths."""
        return self.fields | image_hashes(self.init, self.mask)


def image_hashes(init: ImageFile | None, mask: ImageFile | None) -> dict:
    return {f"{key}_sha256": image.sha256 for key, image in (("init_image", init), ("mask", mask)) if image is not None}


def _digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def derived_seed(identity: dict, fields: dict) -> int:
    """The seed of a job that names none and gets no --seeds: from its other fields, below 2**32."""
    return int(_digest({"identity": identity, "fields": fields})[:8], 16)


def expand_jobs(lines: list[JobLine], defaults: dict, seeds: list[int] | None,
                identity: dict) -> tuple[list[BatchJob], list[LineError]]:
    """Each job line (over the batch's defaults) once per seed; init images read once per distinct file.
    A line whose init image or mask cannot be read is an error of that line; the others run."""
    images: dict[tuple[str, bool], ImageFile] = {}
    jobs, errors, seen = [], [], set()
    for line in lines:
        fields = {**defaults, **line.fields}
        if fields.get("seed") == -1:
            del fields["seed"]  # "pick one": here, the seed derived from the job, so a re-run finds it done
        try:
            init, mask = _image(fields, "init_image", images), _image(fields, "mask", images, grayscale=True)
        except UserError as exc:
            errors.append(LineError(line.line, str(exc)))
            continue
        hashed = {k: v for k, v in fields.items() if k not in ("init_image", "mask")} | image_hashes(init, mask)
        if "seed" in fields:
            job_seeds = [fields["seed"]]
        else:
            job_seeds = seeds if seeds is not None else [derived_seed(identity, hashed)]
        for seed in job_seeds:
            job_id = _digest({"identity": identity, "fields": hashed | {"seed": seed}})[:ID_LENGTH]
            if job_id in seen:
                continue
            seen.add(job_id)
            jobs.append(BatchJob(job_id, line.line, fields | {"seed": seed}, init, mask))
    return jobs, errors


def _image(fields: dict, key: str, cache: dict[tuple[str, bool], ImageFile], grayscale: bool = False) -> ImageFile | None:
    path = fields.get(key)
    if path is None:
        return None
    if (path, grayscale) not in cache:
        cache[path, grayscale] = read_image_file(path, f"--{key.replace('_', '-')}", grayscale)
    return cache[path, grayscale]


def job_request(pipe: Pipeline, job: BatchJob) -> tuple[Request, ImageInputs | None]:
    """The Request `sdcpu generate` would build from these options (request_defaults.build_request)."""
    f = job.fields
    images = None
    if job.init is not None:
        images = ImageInputs(job.init, job.mask, f.get("strength"), f.get("resize"), f.get("mask_blur"))
    elif job.mask is not None:
        raise UserError("a mask needs an init_image")
    resize = f.get("seed_resize_from")
    settings = {key: f[key] for key in REQUEST_SETTINGS if key in f}
    request = build_request(pipe, f["prompt"], f.get("negative_prompt", ""), f.get("steps"), f.get("guidance"),
                            f["seed"], f.get("width"), f.get("height"), f.get("scheduler"), 1,
                            parse_guidance_interval(f.get("guidance_interval")), images, None,
                            seed_resize_from=parse_size(resize) if resize else None, **settings)
    pipe.validate(request)
    return request, images
