"""ONNX -> HEF builds with the Hailo Dataflow Compiler, and the quantization fidelity gate."""
