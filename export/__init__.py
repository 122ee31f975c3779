"""sdcpu exporter: diffusers/torch -> ONNX / OpenVINO IR model folders (needs the [export] extra)."""

import engine  # noqa: F401  (engine's import keeps OpenVINO's telemetry off before openvino loads)
