"""sdcpu.export: diffusers/torch -> ONNX / OpenVINO IR model folders, quantization and parity (needs the [export] extra)."""

if __name__ != "sdcpu.export":
    raise ImportError("this folder installs as sdcpu.export: import sdcpu.export (pip install -e . in the checkout)")
