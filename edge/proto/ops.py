"""Message classes of the standard health and reflection services, from a descriptor pool of our own.

`proto/grpc/` holds the service definitions; `proto/regen.py` compiles them to the serialized
FileDescriptorSet in `ops_descriptors.py`. They are loaded here into a private `DescriptorPool`, not
protobuf's default one, so a process that also imports grpcio's `grpc_health`/`grpc_reflection`
packages (which register the same full names in the default pool) works.

    from edge.proto import ops
    ops.health.HealthCheckResponse(status=ops.health.HealthCheckResponse.SERVING)
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from edge.proto.ops_descriptors import FILE_DESCRIPTOR_SET

HEALTH_SERVICE: Final = "grpc.health.v1.Health"
REFLECTION_V1ALPHA_SERVICE: Final = "grpc.reflection.v1alpha.ServerReflection"
REFLECTION_V1_SERVICE: Final = "grpc.reflection.v1.ServerReflection"

HEALTH_CHECK_PATH: Final = f"/{HEALTH_SERVICE}/Check"
HEALTH_LIST_PATH: Final = f"/{HEALTH_SERVICE}/List"
HEALTH_WATCH_PATH: Final = f"/{HEALTH_SERVICE}/Watch"
REFLECTION_V1ALPHA_PATH: Final = f"/{REFLECTION_V1ALPHA_SERVICE}/ServerReflectionInfo"
REFLECTION_V1_PATH: Final = f"/{REFLECTION_V1_SERVICE}/ServerReflectionInfo"


def _load() -> tuple[descriptor_pool.DescriptorPool, dict[str, descriptor_pb2.FileDescriptorProto]]:
    pool = descriptor_pool.DescriptorPool()
    files = descriptor_pb2.FileDescriptorSet.FromString(FILE_DESCRIPTOR_SET)
    protos = {}
    for file_proto in files.file:
        pool.Add(file_proto)
        protos[file_proto.name] = file_proto
    return pool, protos


POOL, FILE_PROTOS = _load()


def _classes(package: str, names: tuple[str, ...]) -> Any:
    return SimpleNamespace(
        **{
            name: message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{package}.{name}"))
            for name in names
        }
    )


health: Any = _classes(
    "grpc.health.v1", ("HealthCheckRequest", "HealthCheckResponse", "HealthListRequest", "HealthListResponse")
)
_REFLECTION_MESSAGES = (
    "ServerReflectionRequest",
    "ServerReflectionResponse",
    "FileDescriptorResponse",
    "ListServiceResponse",
    "ServiceResponse",
    "ErrorResponse",
    "ExtensionNumberResponse",
)
reflection_v1alpha: Any = _classes("grpc.reflection.v1alpha", _REFLECTION_MESSAGES)
reflection_v1: Any = _classes("grpc.reflection.v1", _REFLECTION_MESSAGES)
