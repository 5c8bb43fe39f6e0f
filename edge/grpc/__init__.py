"""Our Trio gRPC server transport: a thin Trio shell around purerpc's sans-IO pieces.

purerpc 0.8.0's own server leaks handlers on client resets, swallows Cancelled, leaks exception text,
has no graceful shutdown and unbounded sizes. This package keeps purerpc's HTTP/2 + gRPC parsing and
replaces everything that does I/O.

    routes = {"/giggityflix.edge.v1.PeerEdgeService/Connect": handler}
    serve = partial(serve_grpc, metrics=metrics)      # a ServerMetrics, e.g. edge.ops.grpc_metrics's
    port = await nursery.start(serve, GrpcServerConfig(host, 0, ssl_context), routes)

A handler is `async def handler(stream: ServerStream) -> Status | None`.

Rooms, outermost first (each module's docstring draws its tasks and what cancelling them does):

    listeners.py     serve_grpc: listening sockets, the accept loop, one task per accepted socket
    sockets.py       an accepted socket's peer address and TCP keepalive
    connection.py    serve_grpc_connection: one connection's handshake, reader, writer and close
    stream_tasks.py  one task per stream: runs the handler, decides and queues the final status
    stream.py        ServerStream: the handler's API, and the small API its connection drives it by
    protocol.py      GrpcServerProtocol: purerpc's sans-IO connection, fixed (no I/O, no Trio)
    inbound.py       one stream's bounded inbound queue and message meter state (no I/O)
    outbound.py      OutboundQueue: a connection's queued output, and its replies to a client that does not read (no I/O)
    late_frames.py   LateFrameSplitter: isolates late RST_STREAM/WINDOW_UPDATE frames (no I/O)
    frame_guard.py   FrameGuard: frame size and per-connection frame budgets, judged at each frame
                     header before h2 buffers the frame (no I/O)
    events.py, limits.py, framing.py, errors.py, config.py, stats.py, tls.py: values and pure helpers
    metrics.py       what the transport reports calls and failed handshakes to (a Protocol)
"""

from purerpc.grpclib.status import Status, StatusCode

from edge.grpc.config import GrpcServerConfig
from edge.grpc.connection import serve_grpc_connection
from edge.grpc.errors import (
    ConnectionLost,
    MessageTooLarge,
    OverBudget,
    ProtocolViolation,
    RateLimited,
    StreamError,
    StreamReset,
    UnsupportedEncoding,
)
from edge.grpc.frame_guard import ConnectionAbuse, FrameBudgets
from edge.grpc.inbound_budget import InboundBudget
from edge.grpc.limits import HeldBytesBudget, InboundMeter
from edge.grpc.metrics import CallMetrics, ServerMetrics
from edge.grpc.listeners import serve_grpc
from edge.grpc.stats import GrpcServerStats
from edge.grpc.stream import ServerStream
from edge.grpc.stream_tasks import Handler

__all__ = [
    "CallMetrics",
    "ConnectionAbuse",
    "ConnectionLost",
    "GrpcServerConfig",
    "GrpcServerStats",
    "FrameBudgets",
    "Handler",
    "HeldBytesBudget",
    "InboundBudget",
    "InboundMeter",
    "MessageTooLarge",
    "OverBudget",
    "ProtocolViolation",
    "RateLimited",
    "ServerMetrics",
    "ServerStream",
    "Status",
    "StatusCode",
    "StreamError",
    "StreamReset",
    "UnsupportedEncoding",
    "serve_grpc",
    "serve_grpc_connection",
]
