"""DeepCache at run time: the full UNet every N-th call, the shallow branch on its cached features between.

Ma, Fang & Wang, "DeepCache: Accelerating Diffusion Models for Free" (CVPR 2024), uniform 1:N
schedule at the shallowest skip branch (the paper's branch 0, export/deepcache.py). Needs an export made with `sdcpu export --deepcache`.
"""

from __future__ import annotations

import numpy as np

from sdcpu.engine.backends import Graph
from sdcpu.engine.errors import UserError

DEEP, SHALLOW, FEATURE = "unet_deep", "unet_shallow", "deep_feature"


def check_interval(interval: int | None) -> None:
    if interval is not None and interval < 1:
        raise UserError(f"--deepcache must be at least 1 (got {interval}); leave it out to run the full UNet every step")


def require_graphs(components, folder) -> None:
    """A one-line error when the export has no DeepCache graphs."""
    if DEEP not in components or SHALLOW not in components:
        raise UserError(f"{folder} has no DeepCache graphs; re-export it with `sdcpu export --deepcache`")


class DeepCacheUNet:
    """Stands in for the UNet graph: call i runs the full UNet when i % interval == 0, else the shallow one.

    `reset()` starts a new image (the pipeline calls it before each generate), so no feature
    crosses from one image to the next.
    """

    def __init__(self, deep: Graph, shallow: Graph, interval: int):
        self.deep, self.shallow, self.interval = deep, shallow, interval
        self.name = "unet"
        self.entry = deep.entry
        self.properties = deep.properties
        self._calls = 0
        self._feature: np.ndarray | None = None

    @property
    def calls(self) -> int:
        return self.deep.calls + self.shallow.calls

    def reset(self) -> None:
        self._calls, self._feature = 0, None

    def __call__(self, **feeds: np.ndarray) -> np.ndarray:
        fresh = self._calls % self.interval == 0 or self._feature is None
        if not fresh and self._feature.shape[0] != feeds["sample"].shape[0]:
            fresh = True
        self._calls += 1
        if fresh:
            outputs = self.deep.run(**feeds)
            self._feature = outputs[FEATURE]
            return outputs["out_sample"]
        declared = self.shallow.entry.inputs  # SDXL's outer blocks do not cross-attend: no text input there
        return self.shallow(**{k: v for k, v in feeds.items() if k in declared}, **{FEATURE: self._feature})

    def static_mismatches(self, shapes: dict[str, tuple]) -> dict[str, tuple]:
        return self.deep.static_mismatches(shapes)

    def reshape(self, shapes: dict[str, tuple]) -> None:
        raise UserError("DeepCache graphs cannot be recompiled for static shapes")
