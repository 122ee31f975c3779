"""The models a server offers, by the names it lists (clients never send paths), and the one it has loaded.

Titles follow A1111's sd-models list: the name, with the A1111 hash in brackets when the export knows its
source file's hash. A request may name a model by title, name or hash. One pipeline is loaded at a time (a
real SDXL UNet fills a laptop's memory): asking for another unloads it first. Only the queue's worker thread
touches pipelines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sdcpu.engine.errors import UserError
from sdcpu.engine.img2img import is_inpainting_model
from sdcpu.engine.local_models import find_models, resolve_model
from sdcpu.engine.manifest import Manifest, load_manifest
from sdcpu.engine.pipeline import Pipeline
from sdcpu.engine.request_defaults import load_size
from sdcpu.engine.samplers import default_sampler_for
from sdcpu.models.registry import FAMILIES, model_guidance, model_size, model_steps


@dataclass(frozen=True)
class ServedModel:
    name: str
    folder: Path
    manifest: Manifest

    @property
    def title(self) -> str:
        return f"{self.name} [{self.manifest.a1111_hash}]" if self.manifest.a1111_hash else self.name

    def answers_to(self, text: str) -> bool:
        return text in (self.title, self.name, self.manifest.a1111_hash, self.manifest.source_sha256)

    def a1111_entry(self) -> dict:
        return {"title": self.title, "model_name": self.name, "hash": self.manifest.a1111_hash,
                "sha256": self.manifest.source_sha256, "filename": self.name, "config": None}


def served_models(given: list[str]) -> list[ServedModel]:
    """The folders given with --model (names or paths), else every exported model `sdcpu models` finds."""
    if given:
        folders = [resolve_model(model) for model in given]
        found = [ServedModel(folder.resolve().name, folder.resolve(), load_manifest(folder)) for folder in folders]
    else:
        found = [ServedModel(m.name, m.path.resolve(), m.manifest) for m in find_models()]
    if not found:
        raise UserError("no exported models found; pass --model DIR (see `sdcpu models`)")
    return _unique_names(found)


def _unique_names(models: list[ServedModel]) -> list[ServedModel]:
    """Two folders of the same name are listed as NAME and NAME-2 (same folder twice: once)."""
    unique, names, folders = [], set(), set()
    for model in models:
        if model.folder in folders:
            continue
        name, n = model.name, 2
        while name in names:
            name, n = f"{model.name}-{n}", n + 1
        names.add(name)
        folders.add(model.folder)
        unique.append(ServedModel(name, model.folder, model.manifest))
    return unique


class ModelSlot:
    """The served models and the one pipeline loaded now (loaded on first use)."""

    def __init__(self, models: list[ServedModel], log: Callable[[str], None], compile_cache: bool = True,
                 inference_precision: str | None = None, given: list[str] | None = None):
        self.models = models
        self.given = given or []
        self.log = log
        self.compile_cache = compile_cache
        self.inference_precision = inference_precision
        self._loaded: tuple[ServedModel, Pipeline] | None = None

    def find(self, text: str) -> ServedModel:
        for model in self.models:
            if model.answers_to(text):
                return model
        raise UserError(f"model {text!r} is not served here; GET /sdapi/v1/sd-models lists "
                        f"{', '.join(m.title for m in self.models)}")

    def pipeline(self, model: ServedModel) -> Pipeline:
        if self._loaded is not None and self._loaded[0] == model:
            return self._loaded[1]
        self._loaded = None
        self.log(f"loading {model.name} ({model.folder})")
        pipe = Pipeline.load(model.folder, compile_cache=self.compile_cache,
                             inference_precision=self.inference_precision, log=self.log,
                             size=load_size(model.manifest, None, None))
        self._loaded = (model, pipe)
        return pipe

    def refresh(self) -> None:
        """Look for the models again (new exports appear when serving every model found); the loaded one stays
        listed while it is loaded."""
        found = served_models(self.given)
        loaded = self.loaded
        if loaded is not None and all(m.folder != loaded.folder for m in found):
            found.append(loaded)
        self.models = found

    @property
    def loaded(self) -> ServedModel | None:
        return self._loaded[0] if self._loaded else None


def default_sampler(model: ServedModel) -> str:
    """The sampler `generate` picks for the model: the one reproducing its scheduler config (engine/samplers.py)."""
    try:
        return default_sampler_for(json.loads((model.folder / model.manifest.scheduler_config).read_text()))
    except (OSError, ValueError):
        return "euler"


def model_defaults(model: ServedModel) -> dict:
    """What `sdcpu generate` would use with this model when nothing is given (for the page's form)."""
    m = model.manifest
    width, height = model_size(m)
    family = FAMILIES.get(m.family)
    return {"title": model.title, "model_name": model.name, "family": m.family, "steps": model_steps(m),
            "cfg_scale": model_guidance(m), "width": width, "height": height, "sampler_name": default_sampler(model),
            "scheduler": "Automatic", "size_multiple": m.size_multiple, "inpaint": is_inpainting_model(m),
            "denoising_strength": family.default_strength if family else 0.75}
