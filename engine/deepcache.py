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


def has_deepcache_graphs(manifest) -> bool:
    """Whether an export carries the DeepCache graphs (`sdcpu export --deepcache`)."""
    return DEEP in manifest.components and SHALLOW in manifest.components


def require_graphs(manifest, folder) -> None:
    """A one-line error when the export has no DeepCache graphs."""
    if not has_deepcache_graphs(manifest):
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
        rows = feeds["sample"].shape[0]
        feature = self._cached_feature(rows)
        fresh = self._calls % self.interval == 0 or feature is None
        self._calls += 1
        if fresh:
            outputs = self.deep.run(**feeds)
            self._feature = outputs[FEATURE]
            return outputs["out_sample"]
        declared = self.shallow.entry.inputs  # SDXL's outer blocks do not cross-attend: no text input there
        return self.shallow(**{k: v for k, v in feeds.items() if k in declared}, **{FEATURE: feature})

    def _cached_feature(self, rows: int) -> np.ndarray | None:
        """The cached feature for a call of `rows` rows; a CFG call's conditional half when guidance has stopped."""
        if self._feature is None:
            return None
        if len(self._feature) == rows:
            return self._feature
        if len(self._feature) == 2 * rows:
            return self._feature[rows:]
        return None

    def static_mismatches(self, shapes: dict[str, tuple]) -> dict[str, tuple]:
        return self.deep.static_mismatches(shapes)

    @property
    def static_batch(self) -> int | None:
        return self.deep.static_batch

    def per_call(self, shapes: dict[str, tuple]) -> dict[str, tuple]:
        return self.deep.per_call(shapes)

    def reshape(self, shapes: dict[str, tuple]) -> None:
        """Recompile both graphs for new static shapes: the shallow one takes the deep one's feature shape."""
        self.deep.reshape(shapes)
        feature = self.deep.output_shape(FEATURE)
        if feature is None:
            raise UserError("DeepCache graphs need fully static shapes to be recompiled")
        declared = self.shallow.entry.inputs
        self.shallow.reshape({**{k: v for k, v in shapes.items() if k in declared}, FEATURE: feature})
        self.entry = self.deep.entry
