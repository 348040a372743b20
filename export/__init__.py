"""The export step: torch -> ONNX -> TensorRT, parity validation, manifest, Triton repository."""
__all__: list[str] = []
