"""`serve_grpc`: the listening sockets and the accept loop; each accepted socket becomes a connection.

Task tree (nesting order is shutdown order):

    serve_grpc                  owns the listeners and the connections nursery
      _accept_loop              one per listener, in the acceptors nursery (inside the connections one)
      _serve_accepted           one per accepted socket, in the connections nursery: keepalive, a
                                lingering close, TLS, then `serve_grpc_connection` (`connection.py`)

Limits at the door (docs/security.md, "Transport threat model"): a socket over `max_connections`, or over
`max_connections_per_address` for its source address (IPv6: its /64), is reset the moment it is accepted,
before it has a task or a TLS state; accept() failing for lack of file descriptors or memory (EMFILE,
ENFILE, ENOMEM, ENOBUFS) backs the loop off, from ACCEPT_BACKOFF_FIRST doubling up to ACCEPT_BACKOFF_MAX,
instead of spinning. Each is counted by cause in `stats.refusals` (one summary line per interval, never
one line each: `refusals.py`).

Cancelled (server shutdown): every listener socket is closed first, synchronously, in the step that
delivers the cancellation, so no connection is accepted while the open ones drain; then each connection
sends its final statuses and GOAWAY and closes under `shutdown_grace` (see `connection.py`).
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from typing import Final

import structlog
import trio

from edge.grpc.config import GrpcServerConfig
from edge.grpc.connection import serve_grpc_connection
from edge.grpc.connection_limits import ConnectionCounts, address_key
from edge.grpc.metrics import ServerMetrics
from edge.grpc.refusals import ACCEPT_FAILED
from edge.grpc.sockets import LingeringSocketStream, reset_and_close, set_keepalive, socket_peer_address
from edge.grpc.stats import GrpcServerStats
from edge.grpc.stream_tasks import Handler

log = structlog.get_logger(__name__)

#: Pauses after accept() fails for lack of file descriptors or memory: the first, doubled after each
#: failure in a row up to the last; an accept that succeeds starts again from the first.
ACCEPT_BACKOFF_FIRST: Final = 0.01
ACCEPT_BACKOFF_MAX: Final = 1.0
_ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


async def serve_grpc(
    config: GrpcServerConfig,
    routes: Mapping[str, Handler],
    *,
    metrics: ServerMetrics,
    stats: GrpcServerStats | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen, accept, serve streams until cancelled.

    `task_status.started(port)` once the listener is bound and accepting (port 0: the real port).
    A port already in use fails with OSError(EADDRINUSE) naming the address. `metrics` hears of every
    routed call and every failed TLS handshake (`metrics.py`).
    """
    routes = dict(routes)
    stats = stats if stats is not None else GrpcServerStats()
    listeners = await _open_listeners(config)
    counts = ConnectionCounts(config.max_connections, config.max_connections_per_address)
    try:
        port: int = listeners[0].socket.getsockname()[1]
        log.info("grpc_listening", host=config.host, port=port, tls=config.ssl_context is not None)
        async with trio.open_nursery() as connections:
            try:
                async with trio.open_nursery() as acceptors:
                    for listener in listeners:
                        acceptors.start_soon(_accept_loop, listener, connections, routes, config, stats, metrics, counts)
                    task_status.started(port)
            finally:
                # First step of shutdown: no new connections while the open ones drain (one line for
                # them all here; each connection's own line is at debug level).
                _close_listeners(listeners)
                log.info("grpc_listener_closed", port=port, connections=stats.connections_open)
    finally:
        _close_listeners(listeners)


async def _open_listeners(config: GrpcServerConfig) -> list[trio.SocketListener]:
    try:
        # trio sets SO_REUSEADDR (a restarted edge can rebind at once) and never SO_REUSEPORT, so a
        # second process on the same port fails here instead of silently sharing it.
        listeners = await trio.open_tcp_listeners(config.port, host=config.host)
    except OSError as exc:
        raise OSError(
            exc.errno, f"gRPC server cannot listen on {config.host}:{config.port}: {exc.strerror or exc}"
        ) from exc
    if config.port == 0 and len(listeners) > 1:
        # Several addresses for one host name each got their own random port; keep one port only.
        _close_listeners(listeners[1:])
        listeners = listeners[:1]
    return listeners


def _close_listeners(listeners: list[trio.SocketListener]) -> None:
    for listener in listeners:
        listener.socket.close()


async def _accept_loop(
    listener: trio.SocketListener,
    connections: trio.Nursery,
    routes: Mapping[str, Handler],
    config: GrpcServerConfig,
    stats: GrpcServerStats,
    metrics: ServerMetrics,
    counts: ConnectionCounts,
) -> None:
    delay = ACCEPT_BACKOFF_FIRST
    try:
        while True:
            try:
                sock_stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                stats.refusals.count(ACCEPT_FAILED)
                await trio.sleep(delay)
                delay = min(2 * delay, ACCEPT_BACKOFF_MAX)
                continue
            delay = ACCEPT_BACKOFF_FIRST
            remote_address = socket_peer_address(sock_stream.socket)
            key = address_key(remote_address[0] if remote_address else None)
            refused = counts.admit(key)
            if refused is not None:
                stats.refusals.count(refused)
                reset_and_close(sock_stream.socket)
                continue
            connections.start_soon(
                _serve_accepted, sock_stream, remote_address, key, routes, config, stats, metrics, counts
            )
    finally:
        # Synchronously, in the same scheduling step that delivers the cancellation: the listener is
        # closed before any connection has written its final statuses or GOAWAY.
        listener.socket.close()


async def _serve_accepted(
    sock_stream: trio.SocketStream,
    remote_address: tuple[str, int] | None,
    key: str | None,
    routes: Mapping[str, Handler],
    config: GrpcServerConfig,
    stats: GrpcServerStats,
    metrics: ServerMetrics,
    counts: ConnectionCounts,
) -> None:
    try:
        set_keepalive(sock_stream.socket)
        # Closing waits (within shutdown_grace) for the client's EOF, so the last statuses are not reset.
        transport: trio.abc.Stream = LingeringSocketStream(sock_stream, linger=config.shutdown_grace)
        if config.ssl_context is not None:
            transport = trio.SSLStream(transport, config.ssl_context, server_side=True)
        await serve_grpc_connection(
            transport, routes, config, metrics=metrics, stats=stats, remote_address=remote_address
        )
    finally:
        counts.release(key)
