"""One batch worker: a loaded pipeline that turns jobs into PNG bytes. The same class runs in a local worker
process and as a Ray actor, so a job gives the same pixels whichever runs it (same CPU kind and precision)."""

from __future__ import annotations

import io
import os
import socket
import time
from dataclasses import dataclass

from sdcpu.engine.batch.batch_job import BatchJob, LoadOptions, job_request
from sdcpu.engine.errors import UserError
from sdcpu.engine.manifest import load_manifest
from sdcpu.engine.pipeline import Pipeline
from sdcpu.engine.pngmeta import format_parameters, write_png
from sdcpu.engine.request_defaults import load_size, params_for


@dataclass(frozen=True)
class Outcome:
    """What a worker sends back for one job: the PNG's bytes, or the one-line reason it could not be made."""

    job_id: str
    worker: str
    png: bytes | None = None
    infotext: str = ""
    seconds: dict | None = None
    error: str = ""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class BatchWorker:
    def __init__(self, options: LoadOptions, expected_manifest: dict | None = None):
        """Load the model; `expected_manifest` (the driver's identity of it) must match this node's copy."""
        folder = options.folder
        if not (folder / "manifest.json").is_file():
            raise UserError(f"the model folder {folder} is not on {socket.gethostname()}: put it on a path every "
                            "node shares (the same path everywhere)")
        manifest = load_manifest(folder)
        if expected_manifest is not None and options.identity(manifest) != expected_manifest:
            raise UserError(f"{folder} on {socket.gethostname()} is another model than the driver's")
        self.name = worker_name()
        self.pipe = Pipeline.load(folder, compile_cache=options.compile_cache,
                                  inference_precision=options.inference_precision, deepcache=options.deepcache,
                                  tiny_vae=options.tiny_vae, size=load_size(manifest, None, None),
                                  threads=options.threads)

    def run(self, job: BatchJob) -> Outcome:
        """One image; a job the model cannot run is an Outcome with its error, never an exception."""
        started = time.perf_counter()
        try:
            request, images = job_request(self.pipe, job)
            result = self.pipe.generate(request)
            params = params_for(self.pipe, request, result.seeds[0], images, result.subseeds[0])
            buffer = io.BytesIO()
            write_png(buffer, result.images[0], params)
        except UserError as exc:
            return Outcome(job.id, self.name, error=str(exc))
        seconds = {key: round(value, 4) for key, value in result.timings.items()}
        seconds["worker_total"] = round(time.perf_counter() - started, 4)
        return Outcome(job.id, self.name, buffer.getvalue(), format_parameters(params), seconds)
