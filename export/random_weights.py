"""Real-size SD1.5 / LCM-Dreamshaper-v7 / SDXL-Turbo architectures with random weights.

The configs in models/configs are the published ones; latency and memory do not depend on weight
values, so these stand in for the real checkpoints (which cannot be downloaded here) in
benchmarks and memory checks. The exported manifest is marked `random_weights`.
"""

from __future__ import annotations

import importlib
import json
import tempfile
from pathlib import Path

import sdcpu.models as models
from sdcpu.engine.errors import UserError
from sdcpu.export.source import quiet_libraries

CONFIG_ROOT = Path(models.__file__).parent / "configs"
RANDOM_FAMILIES = ("sd15", "lcm", "sdxl-turbo")
_CONFIG_FILES = {"scheduler": "scheduler_config.json"}


def config_folder(family: str) -> Path:
    """The shipped diffusers-layout config folder of `family` (no weights, no tokenizer)."""
    folder = CONFIG_ROOT / family
    if not (folder / "model_index.json").is_file():
        raise UserError(f"no shipped config for family {family!r}; known: {', '.join(sorted(known_config_families()))}")
    return folder


def known_config_families() -> list[str]:
    return [p.name for p in CONFIG_ROOT.iterdir() if (p / "model_index.json").is_file()]


class RandomWeightsSource:
    """A PipelineSource look-alike that builds each component from its real config with seeded random weights."""

    def __init__(self, family: str, seed: int = 0):
        if family not in RANDOM_FAMILIES:
            raise UserError(f"--random-weights takes one of {', '.join(RANDOM_FAMILIES)} (got {family!r})")
        quiet_libraries()
        self.family = family
        self.seed = seed
        self.folder = config_folder(family)
        self.source = f"random-weights:{family}"
        self.index = json.loads((self.folder / "model_index.json").read_text())
        self._tokenizer_dir = tempfile.TemporaryDirectory(prefix="sdcpu-tokenizer-")

    def has(self, name: str) -> bool:
        entry = self.index.get(name)
        return isinstance(entry, list) and entry[0] is not None

    def config(self, name: str) -> dict:
        return json.loads((self.folder / name / _CONFIG_FILES.get(name, "config.json")).read_text())

    def load(self, name: str):
        """Instantiate `name` from its config; each component gets its own seed so order does not matter."""
        import torch

        library, class_name = self.index[name]
        cls = getattr(importlib.import_module(library), class_name)
        if name.startswith("tokenizer"):
            return self._tokenizer(cls)
        if name == "scheduler":
            return cls.from_config(self.config(name))
        torch.manual_seed(self.seed + sorted(self.index).index(name))
        if library == "transformers":
            config = cls.config_class.from_pretrained(self.folder / name)
            module = cls(config)
        else:
            module = cls.from_config(self.config(name))
        return module.to(torch.float32).eval()

    def _tokenizer(self, cls):
        """Our generated CLIP-style BPE tokenizer: token ids are valid, meaning is not (weights are random)."""
        from sdcpu.export.tiny_tokenizer import write_tiny_clip_tokenizer

        folder = Path(self._tokenizer_dir.name)
        if not (folder / "vocab.json").is_file():
            write_tiny_clip_tokenizer(folder)
        return cls.from_pretrained(folder)
