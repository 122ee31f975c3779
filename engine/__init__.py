"""sdcpu runtime: numpy scheduler loop over OpenVINO / ONNX Runtime models; never imports torch."""

__version__ = "0.1.0"
