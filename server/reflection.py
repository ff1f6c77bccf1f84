"""Server reflection that resolves every symbol grpcurl, ghz and other tools ask for.

grpcio-reflection looks symbols up with `DescriptorPool.FindFileContainingSymbol`.
With the upb protobuf runtime (protobuf 4.21 and later, 7.x included) that finds
messages, fields, enums and services but not methods
(`speakstream.v1.Synthesizer.SynthesizeStream`) nor enum values, and ghz and
`grpcurl describe` ask reflection for exactly those. This servicer indexes every
symbol of the served files itself and falls back to the pool for the rest.

It is served under both reflection service names: `grpc.reflection.v1alpha`
(grpcurl up to 1.8.7, older grpc-java and grpc-go tools) and `grpc.reflection.v1`
(tried first by newer tools). The two protocols are the same messages under
another package, so one servicer with the v1alpha message classes answers both;
grpcio-reflection ships only v1alpha, so the v1 file descriptor is derived from it.
"""

from __future__ import annotations

import functools
import logging
from typing import AsyncIterable, AsyncIterator, Iterable, Mapping, Optional

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FileDescriptor
from grpc_reflection.v1alpha import reflection_pb2 as pb
from grpc_reflection.v1alpha import reflection_pb2_grpc

_LOGGER = logging.getLogger(__name__)

V1ALPHA_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ServerReflection"].full_name
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_V1_FILE_NAME = "grpc/reflection/v1/reflection.proto"
_METHOD = "ServerReflectionInfo"


def enable_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> ReflectionServicer:
    """Serve reflection (v1alpha and v1) for `service_names` and both reflection services.

    :param service_names: fully-qualified names of the services the server runs;
        their .proto files must be in the default descriptor pool (import the _pb2).
    """
    names = tuple(dict.fromkeys((*service_names, V1ALPHA_SERVICE_NAME, V1_SERVICE_NAME)))
    servicer = ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    # Same wire messages under the v1 name; a generic handler needs no generated v1 stubs.
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=pb.ServerReflectionRequest.FromString,
        response_serializer=pb.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {_METHOD: handler}),))
    return servicer


class ReflectionServicer(reflection_pb2_grpc.ServerReflectionServicer):
    """grpc.reflection ServerReflectionInfo over an index of every symbol of the served files."""

    def __init__(self, service_names: Iterable[str], pool: Optional[descriptor_pool.DescriptorPool] = None):
        self._service_names = tuple(sorted(service_names))
        self._pool = pool or descriptor_pool.Default()
        self._files: dict[str, FileDescriptor] = {}
        self._symbols: dict[str, FileDescriptor] = {}
        for name in self._service_names:
            file = _v1_reflection_file() if name == V1_SERVICE_NAME else self._service_file(name)
            if file is not None:
                self._index_file(file)

    def file_containing(self, symbol: str) -> Optional[FileDescriptor]:
        """The file that defines `symbol` (any kind, methods and enum values included), or None."""
        file = self._symbols.get(symbol.lstrip("."))
        if file is not None:
            return file
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            return None

    async def ServerReflectionInfo(
        self, request_iterator: AsyncIterable[pb.ServerReflectionRequest], context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ServerReflectionResponse]:
        """Answer each request of the stream in order."""
        async for request in request_iterator:
            yield self._answer(request)

    def _answer(self, request: pb.ServerReflectionRequest) -> pb.ServerReflectionResponse:
        kind = request.WhichOneof("message_request")
        if kind == "list_services":
            services = [pb.ServiceResponse(name=name) for name in self._service_names]
            return pb.ServerReflectionResponse(
                original_request=request, list_services_response=pb.ListServiceResponse(service=services))
        if kind == "file_by_filename":
            return self._file_response(request, self._file_by_name(request.file_by_filename))
        if kind == "file_containing_symbol":
            return self._file_response(request, self.file_containing(request.file_containing_symbol))
        if kind == "file_containing_extension":
            ext = request.file_containing_extension
            return self._file_response(request, self._extension_file(ext.containing_type, ext.extension_number))
        if kind == "all_extension_numbers_of_type":
            return self._extension_numbers(request, request.all_extension_numbers_of_type)
        return _error(request, grpc.StatusCode.INVALID_ARGUMENT, "no request kind set")

    def _file_response(self, request, file: Optional[FileDescriptor]) -> pb.ServerReflectionResponse:
        if file is None:
            return _error(request, grpc.StatusCode.NOT_FOUND, "symbol or file not found")
        protos = [_serialize(f) for f in _with_dependencies(file)]
        return pb.ServerReflectionResponse(
            original_request=request, file_descriptor_response=pb.FileDescriptorResponse(file_descriptor_proto=protos))

    def _file_by_name(self, name: str) -> Optional[FileDescriptor]:
        if name in self._files:
            return self._files[name]
        try:
            return self._pool.FindFileByName(name)
        except KeyError:
            return None

    def _extension_file(self, containing_type: str, number: int) -> Optional[FileDescriptor]:
        try:
            message = self._pool.FindMessageTypeByName(containing_type)
            return self._pool.FindExtensionByNumber(message, number).file
        except KeyError:
            return None

    def _extension_numbers(self, request, containing_type: str) -> pb.ServerReflectionResponse:
        try:
            message = self._pool.FindMessageTypeByName(containing_type)
            numbers = sorted(ext.number for ext in self._pool.FindAllExtensions(message))
        except KeyError:
            return _error(request, grpc.StatusCode.NOT_FOUND, f"message type {containing_type} not found")
        numbers_response = pb.ExtensionNumberResponse(base_type_name=message.full_name, extension_number=numbers)
        return pb.ServerReflectionResponse(original_request=request, all_extension_numbers_response=numbers_response)

    def _service_file(self, service_name: str) -> Optional[FileDescriptor]:
        try:
            return self._pool.FindServiceByName(service_name).file
        except KeyError:
            _LOGGER.warning("reflection: service %s is not in the descriptor pool; "
                            "it is listed but cannot be described", service_name)
            return None

    def _index_file(self, file: FileDescriptor) -> None:
        for each in _with_dependencies(file):
            if each.name in self._files:
                continue
            self._files[each.name] = each
            for symbol in _symbols_of(each):
                self._symbols.setdefault(symbol, each)


def _symbols_of(file: FileDescriptor) -> Iterable[str]:
    """Every fully-qualified name `file` defines."""
    scope = file.package
    for message in file.message_types_by_name.values():
        yield from _message_symbols(message)
    for enum in file.enum_types_by_name.values():
        yield from _enum_symbols(enum, scope)
    for extension in file.extensions_by_name.values():
        yield extension.full_name
    for service in file.services_by_name.values():
        yield service.full_name
        for method in service.methods:
            yield method.full_name


def _message_symbols(message: Descriptor) -> Iterable[str]:
    yield message.full_name
    for field in (*message.fields, *message.extensions):
        yield field.full_name
    for oneof in message.oneofs:
        yield oneof.full_name
    for enum in message.enum_types:
        yield from _enum_symbols(enum, message.full_name)
    for nested in message.nested_types:
        yield from _message_symbols(nested)


def _enum_symbols(enum: EnumDescriptor, scope: str) -> Iterable[str]:
    yield enum.full_name
    for value in enum.values:
        # protobuf scopes an enum value beside its enum (C++ rules, protoc, Go's
        # protoreflect); grpcurl's descriptor library names it inside the enum.
        yield f"{scope}.{value.name}" if scope else value.name
        yield f"{enum.full_name}.{value.name}"


def _with_dependencies(file: FileDescriptor) -> list[FileDescriptor]:
    """`file` first, then every file it imports, transitively, each once."""
    seen: dict[str, FileDescriptor] = {}
    stack = [file]
    while stack:
        current = stack.pop()
        if current.name not in seen:
            seen[current.name] = current
            stack.extend(reversed(current.dependencies))
    return list(seen.values())


def _serialize(file: FileDescriptor) -> bytes:
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    _add_json_names(proto.message_type, file.message_types_by_name)
    return proto.SerializeToString()


def _add_json_names(messages, descriptors: Mapping[str, Descriptor]) -> None:
    """Fill in each field's json_name, which CopyToProto leaves out.

    protoc sets it; without it, tools that print JSON (grpcurl, grpcui) fall
    back to the .proto names (`sample_rate_hz`) through reflection but use
    lowerCamelCase (`sampleRateHz`, the proto3 JSON mapping) with the .proto
    file, and the two outputs would differ.
    """
    for message in messages:
        descriptor = descriptors[message.name]
        for field in message.field:
            field.json_name = descriptor.fields_by_name[field.name].json_name
        _add_json_names(message.nested_type, descriptor.nested_types_by_name)


def _error(request, code: grpc.StatusCode, message: str) -> pb.ServerReflectionResponse:
    return pb.ServerReflectionResponse(
        original_request=request, error_response=pb.ErrorResponse(error_code=code.value[0], error_message=message))


@functools.cache
def _v1_reflection_file() -> FileDescriptor:
    """grpc/reflection/v1/reflection.proto: the v1alpha file under the v1 package, in a pool of its own."""
    proto = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{proto.package}.", ".grpc.reflection.v1."
    proto.name, proto.package = _V1_FILE_NAME, "grpc.reflection.v1"
    proto.options.Clear()  # v1alpha's are deprecated=true and name v1alpha packages
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    _rename_types(proto.message_type, old, new)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new, 1)
            method.output_type = method.output_type.replace(old, new, 1)
    # A private pool: the default one stays free for a grpcio-reflection that ships v1 itself.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return pool.FindFileByName(_V1_FILE_NAME)


def _rename_types(messages, old: str, new: str) -> None:
    for message in messages:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(old, new, 1)
        _rename_types(message.nested_type, old, new)
