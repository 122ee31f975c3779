"""What `sdcpu export` was asked to do, checked up front so a bad flag fails before any heavy work."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from sdcpu.engine.errors import UserError
from sdcpu.engine.manifest import FORMATS, staging_pid
from sdcpu.export.precision import PRECISIONS, QUANT_MODES

SINGLE_FILE_FAMILIES = ("sd15", "lcm", "sdxl", "sdxl-turbo")
DEFAULT_CALIBRATION_SAMPLES = 32
# OpenVINO: fp16 weights, computed in bf16 on CPUs that have it (the default inference precision) at the
# speed and image of fp32 weights, with half the folder and 1.6 GB less peak memory for an SD1.5 UNet
# (README "Precision"). ONNX Runtime computes fp16 graphs in fp16 on the CPU (slower), so it stays fp32.
DEFAULT_PRECISION = {"openvino": "fp16", "onnx": "fp32"}


@dataclass
class ExportOptions:
    """Format, precision and quantization, static shapes, source details, calibration and checks."""

    fmt: str = "openvino"
    precision: str | None = None  # None: DEFAULT_PRECISION of the format
    quant: str = "weights"
    width: int | None = None
    height: int | None = None
    batch: int | None = None
    random_weights: str | None = None
    family: str | None = None
    config: str | None = None
    lora: Path | None = None
    lora_scale: float = 1.0
    lcm_lora: bool | None = None
    calibration_prompts: Path | None = None
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES
    quality_check: bool = True
    overwrite: bool = False
    deepcache: bool = False
    tiny_vae: str | None = None

    @property
    def static(self) -> bool:
        return any(v is not None for v in (self.width, self.height, self.batch))

    def check(self, out_dir: Path) -> None:
        """One clear error per bad combination."""
        if self.fmt not in FORMATS:
            raise UserError(f"unknown format {self.fmt!r}; choose one of {', '.join(FORMATS)}")
        if self.precision is None:
            self.precision = DEFAULT_PRECISION[self.fmt]
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.quant not in QUANT_MODES:
            raise UserError(f"unknown --quant {self.quant!r}; choose one of {', '.join(QUANT_MODES)}")
        if self.quant == "hybrid" and (self.fmt != "openvino" or self.precision != "int8"):
            raise UserError("--quant hybrid needs --format openvino --precision int8 "
                            "(ONNX int8 already quantizes the UNet's convolution activations)")
        if self.family is not None and self.family not in SINGLE_FILE_FAMILIES:
            raise UserError(f"unknown --family {self.family!r}; choose one of {', '.join(SINGLE_FILE_FAMILIES)}")
        if self.deepcache and self.static:
            raise UserError("--deepcache does not combine with static shapes (--width/--height/--batch) yet")
        if self.calibration_samples < 1:
            raise UserError(f"--calibration-samples must be at least 1 (got {self.calibration_samples})")
        if self.calibration_prompts is not None and not Path(self.calibration_prompts).is_file():
            raise UserError(f"calibration prompt file not found: {self.calibration_prompts}")
        if self.lora is not None and not Path(self.lora).is_file():
            raise UserError(f"LoRA file not found: {self.lora}")
        if not math.isfinite(self.lora_scale):
            raise UserError(f"--lora-scale must be a finite number (got {self.lora_scale})")
        if self.batch is not None and self.batch < 1:
            raise UserError(f"--batch must be at least 1 (got {self.batch})")
        self.check_out_dir(out_dir)

    def check_out_dir(self, out_dir: Path) -> None:
        """OUT_DIR must be a folder (or not exist yet), not named like a staging folder, empty unless --overwrite."""
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"OUT_DIR {out_dir} is a file, not a folder; give a folder to export into")
        blocking = next((p for p in out_dir.parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise UserError(f"cannot export into {out_dir}: {blocking} is a file, not a folder")
        if staging_pid(out_dir) is not None:
            raise UserError(f"OUT_DIR {out_dir.name} is named like sdcpu's staging folders (.NAME.partial-PID); "
                            "choose another name")
        if out_dir.exists() and any(out_dir.iterdir()) and not self.overwrite:
            raise UserError(f"{out_dir} exists and is not empty; pass --overwrite to replace it")

    def static_size(self, default_size: tuple[int, int], multiple: int) -> tuple[int, int, int]:
        """(width, height, batch) for a static export; the model's native size fills a missing side."""
        width = self.width or default_size[0]
        height = self.height or default_size[1]
        for side, value in (("width", width), ("height", height)):
            if value < multiple or value % multiple:
                raise UserError(f"--{side} must be a positive multiple of {multiple} (got {value})")
        return width, height, self.batch or 1
