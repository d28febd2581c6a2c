"""Model export: TensorRT-ready ONNX, TensorRT engines, parity checks."""
