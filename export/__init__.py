"""Export explanations to TorchScript and ONNX (see the export issue; work in progress)."""
