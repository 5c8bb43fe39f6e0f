"""gRPC server reflection (`grpc.reflection.v1alpha` and `v1`), so `grpcurl list/describe` work.

`ReflectionIndex` is built once from the FileDescriptorProtos of what the edge serves (the peer
service, health, reflection) and answers requests with a pure function (`answer`); the handler only
moves messages. v1alpha and v1 share their message layout, so one implementation serves both with
each version's own message classes.

Only the edge's own files (and their imports) are ever described: a symbol from elsewhere in the
process, e.g. a library's protos in protobuf's default pool, is NOT_FOUND.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
import trio
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import DecodeError

from edge.grpc import ServerStream, Status, StatusCode
from edge.proto import SERVICE_NAME, pb
from edge.proto import ops as ops_pb

#: grpc status codes used inside ErrorResponse (the stream itself stays OK).
_NOT_FOUND = StatusCode.NOT_FOUND.value
_UNIMPLEMENTED = StatusCode.UNIMPLEMENTED.value
_INVALID_ARGUMENT = StatusCode.INVALID_ARGUMENT.value

#: Reflection streams open at once, edge-wide (they are not behind peer admission).
MAX_REFLECTION_STREAMS = 32

SERVED_SERVICES = (
    SERVICE_NAME,
    ops_pb.HEALTH_SERVICE,
    ops_pb.REFLECTION_V1ALPHA_SERVICE,
    ops_pb.REFLECTION_V1_SERVICE,
)


@attrs.frozen
class ReflectionIndex:
    """File name -> serialized FileDescriptorProto and its imports; symbol -> file name."""

    services: tuple[str, ...]
    files: dict[str, bytes]
    imports: dict[str, tuple[str, ...]]
    symbols: dict[str, str]

    @classmethod
    def build(cls, file_protos: Iterable[descriptor_pb2.FileDescriptorProto], services: tuple[str, ...]) -> ReflectionIndex:
        files: dict[str, bytes] = {}
        imports: dict[str, tuple[str, ...]] = {}
        symbols: dict[str, str] = {}
        pending = list(file_protos)
        while pending:
            proto = pending.pop()
            if proto.name in files:
                continue
            files[proto.name] = proto.SerializeToString()
            imports[proto.name] = tuple(proto.dependency)
            for name in _symbols_of(proto):
                symbols.setdefault(name, proto.name)
            for dependency in proto.dependency:
                if dependency not in files:
                    pending.append(_well_known_file(dependency))
        return cls(services=services, files=files, imports=imports, symbols=symbols)

    def closure(self, name: str) -> list[bytes]:
        """The file `name` first, then every file it imports, transitively, each once."""
        order: list[str] = []
        stack = [name]
        while stack:
            current = stack.pop()
            if current in order:
                continue
            order.append(current)
            stack.extend(reversed(self.imports.get(current, ())))
        return [self.files[f] for f in order if f in self.files]

    def answer(self, request: Any, messages: Any) -> Any:
        """The ServerReflectionResponse (of `messages`' version) for one request."""
        response = messages.ServerReflectionResponse(valid_host=request.host, original_request=request)
        kind = request.WhichOneof("message_request")
        if kind == "list_services":
            for service in self.services:
                response.list_services_response.service.add(name=service)
        elif kind == "file_by_filename":
            if request.file_by_filename in self.files:
                response.file_descriptor_response.file_descriptor_proto.extend(self.closure(request.file_by_filename))
            else:
                _error(response, _NOT_FOUND, "file not found")
        elif kind == "file_containing_symbol":
            file_name = self.symbols.get(request.file_containing_symbol)
            if file_name is not None:
                response.file_descriptor_response.file_descriptor_proto.extend(self.closure(file_name))
            else:
                _error(response, _NOT_FOUND, "symbol not found")
        elif kind in ("file_containing_extension", "all_extension_numbers_of_type"):
            # The edge's protos (proto3) declare no extensions.
            _error(response, _NOT_FOUND, "no extensions")
        else:
            _error(response, _UNIMPLEMENTED, "unknown reflection request")
        return response


def _error(response: Any, code: int, message: str) -> None:
    response.error_response.error_code = code
    response.error_response.error_message = message


def _symbols_of(proto: descriptor_pb2.FileDescriptorProto) -> Iterable[str]:
    prefix = f"{proto.package}." if proto.package else ""

    def messages(types: Iterable[descriptor_pb2.DescriptorProto], scope: str) -> Iterable[str]:
        for message in types:
            name = scope + message.name
            yield name
            for field in message.field:
                yield f"{name}.{field.name}"
            for enum in message.enum_type:
                yield f"{name}.{enum.name}"
            yield from messages(message.nested_type, name + ".")

    yield from messages(proto.message_type, prefix)
    for enum in proto.enum_type:
        yield prefix + enum.name
    for service in proto.service:
        yield prefix + service.name
        for method in service.method:
            yield f"{prefix}{service.name}.{method.name}"


def _well_known_file(name: str) -> descriptor_pb2.FileDescriptorProto:
    """An imported file the edge does not define itself (e.g. google/protobuf/*.proto)."""
    proto = descriptor_pb2.FileDescriptorProto()
    descriptor_pool.Default().FindFileByName(name).CopyToProto(proto)
    return proto


def edge_reflection_index() -> ReflectionIndex:
    peer_edge = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    return ReflectionIndex.build([peer_edge, *ops_pb.FILE_PROTOS.values()], SERVED_SERVICES)


@attrs.frozen
class ReflectionService:
    """The `ServerReflectionInfo` handlers (bidirectional: one response per request, in order)."""

    index: ReflectionIndex = attrs.field(factory=edge_reflection_index)
    streams: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(MAX_REFLECTION_STREAMS))

    async def v1alpha(self, stream: ServerStream) -> Status:
        return await self._serve(stream, ops_pb.reflection_v1alpha)

    async def v1(self, stream: ServerStream) -> Status:
        return await self._serve(stream, ops_pb.reflection_v1)

    async def _serve(self, stream: ServerStream, messages: Any) -> Status:
        try:
            self.streams.acquire_nowait()
        except trio.WouldBlock:
            return Status(StatusCode.RESOURCE_EXHAUSTED, f"more than {MAX_REFLECTION_STREAMS} reflection streams")
        try:
            return await self._answer_all(stream, messages)
        finally:
            self.streams.release()

    async def _answer_all(self, stream: ServerStream, messages: Any) -> Status:
        while (data := await stream.receive_message()) is not None:
            try:
                request = messages.ServerReflectionRequest.FromString(data)
            except DecodeError:
                return Status(StatusCode.INVALID_ARGUMENT, "request is not a valid ServerReflectionRequest")
            await stream.send_message(self.index.answer(request, messages).SerializeToString())
        return Status(StatusCode.OK)
