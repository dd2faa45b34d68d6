"""Calibration stage: calibration sets, FP16 conversion, INT8 Q/DQ quantization, TensorRT calibrators."""
