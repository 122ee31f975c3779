"""sdcpu exporter: diffusers/torch -> ONNX / OpenVINO IR model folders (needs the [export] extra)."""
