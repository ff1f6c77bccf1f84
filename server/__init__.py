"""speakstream server: streaming text-to-speech over gRPC on ONNX Runtime."""
