"""sdcpu: CPU-only Stable Diffusion. One import name over the project's parts.

`sdcpu.engine` is the runtime (generation core; `sdcpu.engine.cli` its command line, `sdcpu.engine.measure`
its measuring code), `sdcpu.export` the exporter (torch/diffusers, the `[export]` extra) and `sdcpu.models`
the family registry and the bundled shapes model. In a checkout they are the top-level folders `engine/`,
`export/` and `models/`; pyproject.toml maps them under this package.
"""

import os
import sys

__version__ = "0.1.0"


def keep_openvino_telemetry_off() -> None:
    """`import openvino` starts its usage telemetry (files in ~/intel, events sent without asking).

    sdcpu never needs it: unless SDCPU_OPENVINO_TELEMETRY=1, the telemetry package is made unimportable
    before openvino loads, so OpenVINO falls back to its own no-op stub. Nothing else changes.
    """
    if os.environ.get("SDCPU_OPENVINO_TELEMETRY") != "1" and "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)


keep_openvino_telemetry_off()
