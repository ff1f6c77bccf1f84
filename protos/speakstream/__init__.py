"""speakstream API: generated protobuf and gRPC stubs (built from the .proto files)."""
