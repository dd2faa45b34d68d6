"""Export stage: torch -> ONNX, simplification, metadata, TensorRT engine building."""
