"""Server reflection resolves every symbol tools ask for, over v1alpha and v1."""

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as pb

from server.reflection import V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME

_TIMEOUT = 30
_SYNTHESIZER_FILE = "speakstream/v1/synthesizer.proto"


async def _ask(channel, request: pb.ServerReflectionRequest, service: str = V1ALPHA_SERVICE_NAME):
    """One request on a reflection stream of `service`; its one response."""
    call = channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=pb.ServerReflectionRequest.SerializeToString,
        response_deserializer=pb.ServerReflectionResponse.FromString)
    responses = [r async for r in call(iter([request]), timeout=_TIMEOUT)]
    assert len(responses) == 1
    return responses[0]


def _file_names(response) -> list[str]:
    assert response.HasField("file_descriptor_response"), response.error_response
    names = []
    for blob in response.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto()
        proto.ParseFromString(blob)
        names.append(proto.name)
    return names


@pytest.mark.parametrize("service", [V1ALPHA_SERVICE_NAME, V1_SERVICE_NAME])
@pytest.mark.parametrize("symbol", [
    "speakstream.v1.Synthesizer.SynthesizeStream",   # a method: what ghz and grpcurl ask for
    "speakstream.v1.Synthesizer.Synthesize",
    "speakstream.v1.Synthesizer.ListVoices",
    "speakstream.v1.Synthesizer",
    "speakstream.v1.SynthesizeRequest.noise_w",      # a field
    "speakstream.v1.AudioChunk.text_span",
    "speakstream.v1.AudioEncoding",
    "speakstream.v1.AudioEncoding.AUDIO_ENCODING_WAV",  # enum value, as grpcurl names it
    "speakstream.v1.AUDIO_ENCODING_WAV",                # enum value, as protobuf scopes it
    ".speakstream.v1.TextSpan",                         # a leading dot is tolerated
])
async def test_every_kind_of_symbol_resolves_to_the_synthesizer_file(channel, service, symbol):
    response = await _ask(channel, pb.ServerReflectionRequest(file_containing_symbol=symbol), service)
    assert _file_names(response)[0] == _SYNTHESIZER_FILE


@pytest.mark.parametrize("symbol, package", [
    ("grpc.health.v1.Health.Watch", "grpc.health.v1"),
    ("grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING", "grpc.health.v1"),  # nested enum value
    ("grpc.reflection.v1alpha.ServerReflection.ServerReflectionInfo", "grpc.reflection.v1alpha"),
    ("grpc.reflection.v1.ServerReflection.ServerReflectionInfo", "grpc.reflection.v1"),
    ("grpc.reflection.v1.ServerReflectionRequest.file_containing_symbol", "grpc.reflection.v1"),
])
async def test_health_and_reflection_symbols_resolve(channel, symbol, package):
    response = await _ask(channel, pb.ServerReflectionRequest(file_containing_symbol=symbol))
    assert response.HasField("file_descriptor_response"), response.error_response
    proto = descriptor_pb2.FileDescriptorProto()
    proto.ParseFromString(response.file_descriptor_response.file_descriptor_proto[0])
    assert proto.package == package


async def test_the_v1_reflection_file_names_only_v1_types(channel):
    response = await _ask(channel, pb.ServerReflectionRequest(file_by_filename="grpc/reflection/v1/reflection.proto"))
    proto = descriptor_pb2.FileDescriptorProto()
    proto.ParseFromString(response.file_descriptor_response.file_descriptor_proto[0])
    assert proto.package == "grpc.reflection.v1"
    method = proto.service[0].method[0]
    assert (method.input_type, method.output_type) == (
        ".grpc.reflection.v1.ServerReflectionRequest", ".grpc.reflection.v1.ServerReflectionResponse")
    type_names = [f.type_name for m in proto.message_type for f in m.field if f.type_name]
    assert type_names and all(t.startswith(".grpc.reflection.v1.") for t in type_names)


@pytest.mark.parametrize("service", [V1ALPHA_SERVICE_NAME, V1_SERVICE_NAME])
async def test_both_reflection_services_list_the_same_services(channel, service):
    response = await _ask(channel, pb.ServerReflectionRequest(list_services=""), service)
    names = [s.name for s in response.list_services_response.service]
    assert names == sorted(names)
    assert {"speakstream.v1.Synthesizer", "grpc.health.v1.Health", V1ALPHA_SERVICE_NAME, V1_SERVICE_NAME} <= set(names)


async def test_file_by_name_comes_with_its_imports(channel):
    response = await _ask(channel, pb.ServerReflectionRequest(file_by_filename=_SYNTHESIZER_FILE))
    assert _file_names(response) == [_SYNTHESIZER_FILE]  # it imports nothing


@pytest.mark.parametrize("request_fields", [
    {"file_containing_symbol": "speakstream.v1.Synthesizer.Nothing"},
    {"file_containing_symbol": "speakstream.v1"},
    {"file_by_filename": "speakstream/v1/nothing.proto"},
    {"all_extension_numbers_of_type": "speakstream.v1.Nothing"},
])
async def test_unknown_symbols_and_files_are_not_found(channel, request_fields):
    response = await _ask(channel, pb.ServerReflectionRequest(**request_fields))
    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert response.original_request == pb.ServerReflectionRequest(**request_fields)


async def test_a_request_of_no_kind_is_an_invalid_argument(channel):
    response = await _ask(channel, pb.ServerReflectionRequest(host="x"))
    assert response.error_response.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


async def test_message_types_have_no_extension_numbers(channel):
    request = pb.ServerReflectionRequest(all_extension_numbers_of_type="speakstream.v1.AudioChunk")
    response = await _ask(channel, request)
    assert response.all_extension_numbers_response.base_type_name == "speakstream.v1.AudioChunk"
    assert list(response.all_extension_numbers_response.extension_number) == []


async def test_files_carry_json_names_as_protoc_writes_them(channel):
    response = await _ask(channel, pb.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health"))
    for blob in response.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto()
        proto.ParseFromString(blob)
        assert all(f.HasField("json_name") for m in proto.message_type for f in m.field)
    response = await _ask(channel, pb.ServerReflectionRequest(file_by_filename=_SYNTHESIZER_FILE))
    proto = descriptor_pb2.FileDescriptorProto()
    proto.ParseFromString(response.file_descriptor_response.file_descriptor_proto[0])
    fields = {f.name: f.json_name for m in proto.message_type for f in m.field}
    assert fields["sample_rate_hz"] == "sampleRateHz"
    assert fields["sentence_silence_s"] == "sentenceSilenceS"
