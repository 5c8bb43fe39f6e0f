"""Our Trio gRPC server transport: a thin Trio shell around purerpc's sans-IO pieces.

purerpc 0.8.0's own server leaks handlers on client resets, swallows Cancelled, leaks exception text,
has no graceful shutdown and unbounded sizes (RISKS.md 1-8). This package keeps purerpc's HTTP/2 + gRPC
parsing (subclassed in `protocol.py`) and replaces everything that does I/O (`server.py`).

    routes = {"/giggityflix.edge.v1.PeerEdgeService/Connect": handler}
    port = await nursery.start(serve_grpc, GrpcServerConfig(host, 0, ssl_context), routes)

A handler is `async def handler(stream: ServerStream) -> Status | None`.
"""

from purerpc.grpclib.status import Status, StatusCode

from edge.grpc.config import GrpcServerConfig
from edge.grpc.errors import (
    ConnectionLost,
    MessageTooLarge,
    ProtocolViolation,
    RateLimited,
    StreamError,
    StreamReset,
    UnsupportedEncoding,
)
from edge.grpc.limits import InboundMeter
from edge.grpc.server import Handler, serve_grpc, serve_grpc_connection
from edge.grpc.stats import GrpcServerStats
from edge.grpc.stream import ServerStream

__all__ = [
    "ConnectionLost",
    "GrpcServerConfig",
    "GrpcServerStats",
    "Handler",
    "InboundMeter",
    "MessageTooLarge",
    "ProtocolViolation",
    "RateLimited",
    "ServerStream",
    "Status",
    "StatusCode",
    "StreamError",
    "StreamReset",
    "UnsupportedEncoding",
    "serve_grpc",
    "serve_grpc_connection",
]
