"""speakstream.v1 stubs: synthesizer_pb2, synthesizer_pb2_grpc (generated at build time)."""
