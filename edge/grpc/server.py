"""The Trio shell: accept loop, one task per connection, one task per stream.

Task tree (nesting order is shutdown order):

    serve_grpc                    owns the listeners and the connections nursery
      _accept_loop (per listener)   accepts; each connection runs in the connections nursery
      serve_grpc_connection       one per connection: TLS handshake, then its own nursery with
        _reader_loop  (the nursery body) socket -> GrpcServerProtocol -> wake streams / start handlers
        _writer_loop                    GrpcServerProtocol -> socket
        _run_stream (per stream)        calls the handler, then sends its final status

Endings:
* client resets a stream (RST_STREAM): the reader marks it at once; `receive_message`/`send_message`
  raise StreamReset; the handler has `shutdown_grace` seconds to return before it is cancelled.
* connection closed/reset/broken, or the client sends GOAWAY: same, with ConnectionLost, for every
  stream of the connection; the socket is closed when the last handler has returned.
* `serve_grpc` cancelled: listeners close first; handlers are cancelled and each open stream gets
  UNAVAILABLE "edge shutting down"; then GOAWAY and close, under `shutdown_grace`.
* every stream of a connection over its message rate (`GrpcServerConfig.message_meter`): the reader
  stops reading the socket at once (whatever else the client pushes is never parsed), the handlers
  take the messages that arrived within the limit and then `RateLimited`, their statuses are sent
  (within `shutdown_grace`), then GOAWAY and close.

Boundaries: `except Exception` once per connection (`serve_grpc_connection`) and once per stream
(`_call_handler`); Cancelled is never caught. A failing handler is logged with its traceback and its
client gets INTERNAL "internal error", never the exception text.
"""

from __future__ import annotations

import errno
import math
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import h2.exceptions
import structlog
import trio
from purerpc.grpclib.status import Status, StatusCode

from edge.grpc.config import GrpcServerConfig
from edge.grpc.errors import ConnectionLost, StreamError, StreamReset
from edge.grpc.events import (
    PeerGoingAway,
    PeerSettingsReceived,
    Request,
    RequestRejected,
    RequestStarted,
    SendWindowOpened,
    StreamReadable,
    StreamResetByPeer,
)
from edge.grpc.protocol import GrpcServerProtocol
from edge.grpc.stats import GrpcServerStats
from edge.grpc.stream import ServerStream

log = structlog.get_logger(__name__)

Handler = Callable[[ServerStream], Awaitable[Status | None]]

#: Bytes asked of the socket per read.
RECEIVE_CHUNK: Final = 64 * 1024
#: Bytes handed to the socket per write; each write has its own stall deadline.
WRITE_CHUNK: Final = 64 * 1024
#: Outbound bytes a connection may hold before `send_message` waits for the socket to drain.
OUTBOUND_HIGH_WATER: Final = 256 * 1024
#: Pause after accept() fails for lack of file descriptors or memory (as trio.serve_listeners does).
ACCEPT_RETRY_DELAY: Final = 0.1
_ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})

#: TCP keepalive on accepted sockets: a backstop for dead peers (the application heartbeat is primary).
_TCP_KEEPALIVE: Final = (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4))

SHUTDOWN_STATUS: Final = Status(StatusCode.UNAVAILABLE, "edge shutting down")
INTERNAL_STATUS: Final = Status(StatusCode.INTERNAL, "internal error")
DEADLINE_STATUS: Final = Status(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
UNIMPLEMENTED_STATUS: Final = Status(StatusCode.UNIMPLEMENTED, "unknown method")
CANCELLED_STATUS: Final = Status(StatusCode.CANCELLED, "stream cancelled")
OK_STATUS: Final = Status(StatusCode.OK)


# ---------------------------------------------------------------------------------------------- server


async def serve_grpc(
    config: GrpcServerConfig,
    routes: Mapping[str, Handler],
    *,
    stats: GrpcServerStats | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen, accept, serve streams until cancelled.

    `task_status.started(port)` once the listener is bound and accepting (port 0: the real port).
    A port already in use fails with OSError(EADDRINUSE) naming the address.
    """
    routes = dict(routes)
    stats = stats if stats is not None else GrpcServerStats()
    listeners = await _open_listeners(config)
    try:
        port: int = listeners[0].socket.getsockname()[1]
        log.info("grpc_listening", host=config.host, port=port, tls=config.ssl_context is not None)
        async with trio.open_nursery() as connections:
            try:
                async with trio.open_nursery() as acceptors:
                    for listener in listeners:
                        acceptors.start_soon(_accept_loop, listener, connections, routes, config, stats)
                    task_status.started(port)
            finally:
                # First step of shutdown: no new connections while the open ones drain.
                _close_listeners(listeners)
                log.info("grpc_listener_closed", port=port)
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
) -> None:
    try:
        while True:
            try:
                sock_stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                log.error("grpc_accept_failed", error=os.strerror(exc.errno), retry_in=ACCEPT_RETRY_DELAY)
                await trio.sleep(ACCEPT_RETRY_DELAY)
                continue
            connections.start_soon(_serve_accepted, sock_stream, routes, config, stats)
    finally:
        # Synchronously, in the same scheduling step that delivers the cancellation: the listener is
        # closed before any connection has written its final statuses or GOAWAY.
        listener.socket.close()


async def _serve_accepted(
    sock_stream: trio.SocketStream,
    routes: Mapping[str, Handler],
    config: GrpcServerConfig,
    stats: GrpcServerStats,
) -> None:
    remote_address = _socket_peer_address(sock_stream.socket)
    _set_keepalive(sock_stream.socket)
    transport: trio.abc.Stream = sock_stream
    if config.ssl_context is not None:
        transport = trio.SSLStream(sock_stream, config.ssl_context, server_side=True)
    await serve_grpc_connection(transport, routes, config, stats=stats, remote_address=remote_address)


def _socket_peer_address(sock: trio.socket.SocketType) -> tuple[str, int] | None:
    try:
        address = sock.getpeername()
    except OSError:  # the client is already gone
        return None
    if isinstance(address, tuple) and len(address) >= 2:
        return (str(address[0]), int(address[1]))
    return None


def _set_keepalive(sock: trio.socket.SocketType) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in _TCP_KEEPALIVE:
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:
        pass  # best effort; a dead socket shows up on first use


def _find_remote_address(stream: trio.abc.Stream) -> tuple[str, int] | None:
    """The TCP peer under `stream` (through any SSLStream/StapledStream layers), if there is one."""
    seen = 0
    current: Any = stream
    while current is not None and seen < 8:
        sock = getattr(current, "socket", None)
        if sock is not None:
            return _socket_peer_address(sock)
        current = getattr(current, "transport_stream", None)
        seen += 1
    return None


# ------------------------------------------------------------------------------------------ connection


async def serve_grpc_connection(
    stream: trio.abc.Stream,
    routes: Mapping[str, Handler],
    config: GrpcServerConfig,
    *,
    stats: GrpcServerStats | None = None,
    remote_address: tuple[str, int] | None = None,
) -> None:
    """Serve one HTTP/2 connection over any Trio stream until it ends or is cancelled; close `stream`.

    A `trio.SSLStream` gets its handshake here (under `config.tls_handshake_timeout`); anything else is
    spoken to in plaintext (h2c, prior knowledge). `config.host/port/ssl_context` are not used. Tests
    pass one end of `trio.testing.memory_stream_pair()` and drive an h2 client on the other.
    Never raises Exception (a bug ends this connection only, logged); Cancelled propagates after the
    graceful close.
    """
    if stats is None:
        stats = GrpcServerStats()
    if remote_address is None:
        remote_address = _find_remote_address(stream)
    connection = _Connection(stream, routes, config, stats, remote_address)
    await connection.serve()


class _Connection:
    """State of one connection's shell. Implements `stream._StreamHost`."""

    def __init__(
        self,
        transport: trio.abc.Stream,
        routes: Mapping[str, Handler],
        config: GrpcServerConfig,
        stats: GrpcServerStats,
        remote_address: tuple[str, int] | None,
    ) -> None:
        self._transport = transport
        self._routes = routes
        self._config = config
        self._stats = stats
        self.remote_address = remote_address
        self.peer_certificate_der: bytes | None = None
        self.peer_certificate: dict[str, Any] | None = None
        self.protocol = GrpcServerProtocol(config.protocol_limits())
        self.max_message_bytes = config.max_message_bytes
        self._streams: dict[int, ServerStream] = {}
        self._streams_changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._initiated = False
        self._writer_wakeup = trio.Event()
        self._reader_scope = trio.CancelScope()
        self._writer_scope = trio.CancelScope()
        self._send_scope: trio.CancelScope | None = None
        self._send_lock = trio.Lock()  # held by the writer from taking bytes to sending them, and by _close
        self._close_deadline = math.inf
        self._transport_broken = False
        self._closed = False
        self._failure_reason: str | None = None
        self._drain_waiting = False
        self._buffered_reported = 0
        address = f"{remote_address[0]}:{remote_address[1]}" if remote_address else None
        self._log = log.bind(remote_address=address)

    # ---- lifecycle

    async def serve(self) -> None:
        stats = self._stats
        stats.connections_accepted += 1
        stats.connections_open += 1
        stats.notify()
        self._log.debug("grpc_connection_opened")
        try:
            try:
                if await self._handshake():
                    await self._run()
            except* Exception as group:
                # The one boundary per connection: a bug here ends this connection, no other.
                self._log.error("grpc_connection_failed", exc_info=group)
        finally:
            try:
                # When we are being cancelled, its last step (aclose_forcefully, not shielded) raises
                # Cancelled; the socket is closed by then, and the bookkeeping below must still run.
                await self._close()
            finally:
                self._report_buffered(final=True)
                stats.connections_open -= 1
                stats.notify()
                self._log.debug("grpc_connection_closed")

    async def _handshake(self) -> bool:
        transport = self._transport
        if not isinstance(transport, trio.SSLStream):
            return True
        with trio.move_on_after(self._config.tls_handshake_timeout) as scope:
            try:
                await transport.do_handshake()
            except trio.BrokenResourceError as exc:
                self._transport_broken = True
                self._log.info("grpc_tls_handshake_failed", error=str(exc.__cause__ or exc))
                return False
        if scope.cancelled_caught:
            self._log.info("grpc_tls_handshake_timeout", timeout=self._config.tls_handshake_timeout)
            return False
        alpn = transport.selected_alpn_protocol()
        if alpn not in (None, "h2"):
            self._log.info("grpc_tls_wrong_alpn", alpn=alpn)
            return False
        self.peer_certificate_der = transport.getpeercert(binary_form=True)
        self.peer_certificate = transport.getpeercert() or None  # {} unless the certificate was verified
        return True

    async def _run(self) -> None:
        self.protocol.initiate_connection()
        self._initiated = True
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._writer_loop)
            ending: tuple[str, bool] | None = None
            try:
                with self._reader_scope:
                    ending = await self._reader_loop()
                if ending is None:  # the writer stopped the reader
                    ending = (self._failure_reason or "transport failed", False)
            finally:
                if ending is None:
                    self._begin_shutdown()
                else:
                    self._connection_over(ending[0], normal=ending[1])
            # Over (not cancelled): close the socket now rather than after the handlers, which are
            # finishing on their own or are cancelled after the grace period.
            await self._close()

    def _begin_shutdown(self) -> None:
        """We are being cancelled (server shutdown): handlers are cancelled by the same cancellation and
        each writes UNAVAILABLE as it ends; bound the write in flight, then `_close` sends GOAWAY."""
        self._close_deadline = trio.current_time() + self._config.shutdown_grace
        if self._send_scope is not None:
            self._send_scope.deadline = min(self._send_scope.deadline, self._close_deadline)
        self._log.info("grpc_connection_shutting_down", streams=len(self._streams))

    def _connection_over(self, reason: str, *, normal: bool) -> None:
        """The client went away (or broke the protocol): every stream learns it now."""
        # A client hanging up is everyday life at the edge: debug. Broken protocol or stalls: info.
        (self._log.debug if normal else self._log.info)(
            "grpc_connection_ended", reason=reason, streams=len(self._streams)
        )
        for stream in list(self._streams.values()):
            self._terminate(stream, ConnectionLost(0, f"connection {reason}"))
        self._writer_scope.cancel()

    async def _close(self) -> None:
        """GOAWAY (unless the connection already failed), flush, close. Shielded, under a deadline.
        Runs once; later calls return at once."""
        if self._closed:
            return
        deadline = self._close_deadline
        if deadline == math.inf:
            deadline = trio.current_time() + self._config.shutdown_grace
        # Only an established HTTP/2 connection gets a graceful close; a half-done TLS handshake would
        # otherwise be resumed by SSLStream.aclose.
        if self._initiated and not self._transport_broken:
            if self._send_scope is not None:  # a write in flight: it must end by our deadline too
                self._send_scope.deadline = min(self._send_scope.deadline, deadline)
            with trio.move_on_at(deadline, shield=True):
                async with self._send_lock:
                    self.protocol.goaway()
                    data = self.protocol.data_to_send()
                    try:
                        if data and not self._transport_broken:
                            await self._transport.send_all(data)
                        await self._transport.aclose()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
        # Whatever happened above, the socket is closed when this returns.
        self._closed = True
        await trio.aclose_forcefully(self._transport)

    # ---- reading

    async def _reader_loop(self) -> tuple[str, bool]:
        """Read until the connection ends; return why, and whether that is an everyday ending."""
        preface_deadline = trio.current_time() + self._config.tls_handshake_timeout
        preface_done = False
        while True:
            with trio.move_on_at(math.inf if preface_done else preface_deadline) as scope:
                try:
                    data = await self._transport.receive_some(RECEIVE_CHUNK)
                except trio.BrokenResourceError as exc:
                    self._transport_broken = True
                    return f"reset ({exc.__cause__ or exc})", True
                except trio.ClosedResourceError:
                    return "closed", True
            if scope.cancelled_caught:
                return "preface timeout", False
            if not data:
                return "closed by client", True
            try:
                events = self.protocol.receive_data(data, now=trio.current_time())
            except h2.exceptions.ProtocolError as exc:
                self._log.info("grpc_protocol_error", error=str(exc))
                return "protocol error", False
            went_away = False
            for event in events:
                if isinstance(event, StreamReadable):
                    stream = self._streams.get(event.stream_id)
                    if stream is not None:
                        stream._wake_inbound()
                elif isinstance(event, SendWindowOpened):
                    if event.stream_id == 0:
                        self._wake_all_senders()
                    else:
                        stream = self._streams.get(event.stream_id)
                        if stream is not None:
                            stream._wake_output()
                elif isinstance(event, RequestStarted):
                    self._start_stream(event.request)
                elif isinstance(event, StreamResetByPeer):
                    stream = self._streams.get(event.stream_id)
                    if stream is not None:
                        self._log.debug("grpc_stream_reset_by_client", stream_id=event.stream_id, code=event.error_code)
                        self._terminate(stream, StreamReset(event.error_code))
                elif isinstance(event, PeerSettingsReceived):
                    preface_done = True
                    self._wake_all_senders()  # INITIAL_WINDOW_SIZE may have grown
                elif isinstance(event, RequestRejected):
                    self._log.info("grpc_request_rejected", stream_id=event.stream_id, reason=event.reason)
                    self._count_status(event.status)
                elif isinstance(event, PeerGoingAway):
                    self._log.debug("grpc_client_goaway", code=event.error_code)
                    went_away = True
            self._report_buffered()
            self.wake_writer()
            if went_away:
                return "client sent GOAWAY", True
            if self.protocol.every_stream_over_its_rate:
                await self._wait_streams_finished(self._config.shutdown_grace)
                return "every stream over its message rate", False

    async def _wait_streams_finished(self, timeout: float) -> None:
        """Without reading: let the handlers end their streams (they need no more bytes), bounded."""
        with trio.move_on_after(timeout):
            while self._streams:
                event = self._streams_changed
                await event.wait()

    def _start_stream(self, request: Request) -> None:
        handler = self._routes.get(request.path)
        if handler is None:
            self.protocol.finish(request.stream_id, UNIMPLEMENTED_STATUS, response_started=False)
            self._count_status(UNIMPLEMENTED_STATUS)
            self._log.info("grpc_unknown_method", stream_id=request.stream_id, path=request.path[:200])
            return
        deadline = math.inf
        if request.timeout is not None:
            deadline = trio.current_time() + request.timeout
        stream = ServerStream(
            self,
            request,
            remote_address=self.remote_address,
            peer_certificate_der=self.peer_certificate_der,
            peer_certificate=self.peer_certificate,
            deadline=deadline,
        )
        self._streams[request.stream_id] = stream
        self._stats.streams_started += 1
        self._stats.streams_open += 1
        self._stats.notify()
        assert self._nursery is not None
        self._nursery.start_soon(self._run_stream, stream, handler, name=f"grpc stream {request.stream_id}")

    def _terminate(self, stream: ServerStream, error: StreamReset) -> None:
        stream._terminate(error)
        # The handler hears it at once if it is reading or writing; if it is busy elsewhere and does
        # not return by itself, it is cancelled after the grace period so nothing leaks.
        stream._scope.deadline = min(stream._scope.deadline, trio.current_time() + self._config.shutdown_grace)

    # ---- streams

    async def _run_stream(self, stream: ServerStream, handler: Handler) -> None:
        stream_log = self._log.bind(stream_id=stream.stream_id, path=stream.path)
        status: Status | None = None
        decided = False
        try:
            with stream._scope:
                status = await self._call_handler(stream, handler, stream_log)
                decided = True
            if not decided:
                # Our own scope was cancelled: the grace after a reset, or the client's grpc-timeout.
                decided = True
                if not stream.terminated:
                    stream_log.info("grpc_stream_deadline_exceeded")
                    status = DEADLINE_STATUS
        finally:
            if not decided:
                # Cancelled from outside: the server is shutting down.
                status = SHUTDOWN_STATUS
            self._finish_stream(stream, status, stream_log)

    async def _call_handler(self, stream: ServerStream, handler: Handler, stream_log: Any) -> Status | None:
        """Run the handler; return the status to send (None: nothing, the stream is gone)."""
        result: object = None
        reset = False
        stream_error: StreamError | None = None
        failure: BaseException | None = None
        try:
            result = await handler(stream)
        except* StreamReset:
            reset = True
        except* StreamError as group:
            stream_error = _first_leaf(group)
        except* Exception as group:
            # The per-stream boundary. Cancelled is not an Exception and goes on up.
            failure = group
        if failure is not None:
            self._stats.handler_errors += 1
            stream_log.error("grpc_handler_failed", exc_info=_single(failure))
            return None if stream.terminated else INTERNAL_STATUS
        if stream.terminated:
            return None
        if reset:
            # The handler raised StreamReset while the stream is alive (misuse): cancel the call.
            return CANCELLED_STATUS
        if stream_error is not None:
            stream_log.info("grpc_stream_error", error=str(stream_error), status=stream_error.status_code.name if stream_error.status_code else None)
            return stream_error.status()
        if result is None:
            return OK_STATUS
        if isinstance(result, Status):
            return result
        stream_log.error("grpc_handler_bad_return", returned=type(result).__name__)
        return INTERNAL_STATUS

    def _finish_stream(self, stream: ServerStream, status: Status | None, stream_log: Any) -> None:
        """Queue the stream's ending (synchronous: safe in a cancelled task's `finally`)."""
        stream_id = stream.stream_id
        self._streams.pop(stream_id, None)
        termination = stream._termination
        if termination is None:
            if status is None:
                status = CANCELLED_STATUS
            self.protocol.finish(
                stream_id, status, response_started=stream._response_started, abort=stream._partial_send
            )
            self._count_status(status)
            stream_log.debug("grpc_stream_finished", status=status.status_code.name)
        else:
            self.protocol.finish(stream_id, None, response_started=stream._response_started)
            if isinstance(termination, ConnectionLost):
                self._stats.streams_lost += 1
            else:
                self._stats.streams_reset += 1
            stream_log.debug("grpc_stream_gone", reason=str(termination))
        stream._mark_finished()
        self._streams_changed.set()
        self._streams_changed = trio.Event()
        self._stats.streams_open -= 1
        self._report_buffered()
        self._stats.notify()
        self.wake_writer()

    def _count_status(self, status: Status) -> None:
        self._stats.statuses[status.status_code.name] += 1

    # ---- writing

    async def _writer_loop(self) -> None:
        with self._writer_scope:
            while True:
                # Taking bytes and writing them is one step under the send lock, so `_close` (which
                # takes the lock for the final flush) never overtakes bytes the writer already took.
                async with self._send_lock:
                    data = self.protocol.data_to_send(WRITE_CHUNK)
                    event = self._writer_wakeup
                    if data and not await self._send(data):
                        return
                if not data:
                    self._wake_drain_waiters()
                    await event.wait()
                    self._writer_wakeup = trio.Event()
                    continue
                if self.protocol.pending_outbound_bytes <= OUTBOUND_HIGH_WATER:
                    self._wake_drain_waiters()

    async def _send(self, data: bytes) -> bool:
        """Write one chunk. Shielded, because a cancelled write leaves half a frame on the wire; the
        stall deadline (moved in to the close deadline at shutdown) bounds the shield."""
        deadline = min(trio.current_time() + self._config.write_stall_timeout, self._close_deadline)
        failed: str | None = None
        with trio.CancelScope(deadline=deadline, shield=True) as scope:
            self._send_scope = scope
            try:
                await self._transport.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                failed = f"write failed ({exc.__cause__ or exc})"
        self._send_scope = None
        if scope.cancelled_caught:
            failed = "write stalled"
        if failed is not None:
            self._transport_broken = True
            self._failure_reason = failed
            self._reader_scope.cancel()
            return False
        return True

    # ---- _StreamHost

    def wake_writer(self) -> None:
        self._writer_wakeup.set()

    def inbound_consumed(self) -> None:
        self._report_buffered()
        # Taking a message off a full queue may give back withheld window (a WINDOW_UPDATE to send).
        # Most messages give back nothing: the writer is woken only when there is something to write,
        # not once per message (a task switch and the send lock per inbound message otherwise).
        if self.protocol.pending_outbound_bytes:
            self.wake_writer()

    def output_blocked(self) -> bool:
        if self.protocol.pending_outbound_bytes > OUTBOUND_HIGH_WATER:
            self._drain_waiting = True
            return True
        return False

    def _wake_drain_waiters(self) -> None:
        if self._drain_waiting:
            self._drain_waiting = False
            self._wake_all_senders()

    def _wake_all_senders(self) -> None:
        for stream in self._streams.values():
            stream._wake_output()

    def _report_buffered(self, *, final: bool = False) -> None:
        stats = self._stats
        # Once closed, the connection holds nothing any more, whatever the protocol object says.
        now = 0 if final else self.protocol.inbound_buffered_bytes
        if now == self._buffered_reported:
            return
        stats.inbound_buffered_bytes += now - self._buffered_reported
        self._buffered_reported = now
        if self.protocol.max_stream_buffered_bytes > stats.max_stream_buffered_bytes:
            stats.max_stream_buffered_bytes = self.protocol.max_stream_buffered_bytes
        stats.notify()


def _first_leaf(group: BaseException) -> Any:
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group


def _single(group: BaseExceptionGroup[Exception]) -> BaseException:
    """The one exception in a group of one (as `except*` wraps a bare raise), else the group."""
    if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
        return group.exceptions[0]
    return group
