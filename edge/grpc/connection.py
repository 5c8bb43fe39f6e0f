"""`serve_grpc_connection`: one HTTP/2 connection's Trio shell, from handshake to closed socket.

Task tree (nesting order is shutdown order):

    serve_grpc_connection / ServerConnection.serve   TLS handshake, then:
      ServerConnection._run   owns the connection's nursery; its body is the reader
        _reader_loop            socket -> GrpcServerProtocol -> wake streams / start stream tasks
        _writer_loop            GrpcServerProtocol -> socket, one chunk at a time under the send lock
        StreamTasks._run        one per stream, see `stream_tasks.py`
      ServerConnection._close GOAWAY, flush, close; shielded, under a deadline (over TCP the close
                              first waits for the client's EOF: `sockets.LingeringSocketStream`)

Who owns what: the reader is the only task that reads the transport and feeds the protocol; the writer
and `_close` are the only ones that write it, one at a time under `_send_lock`; streams queue frames in
the protocol (synchronously) and wake the writer.

Endings:
* the client closes, resets or breaks the connection, or sends GOAWAY: the reader returns why; every
  stream is terminated (ConnectionLost) and the socket is closed at once, while the handlers finish on
  their own or are cancelled after `shutdown_grace`.
* a write fails or stalls for `write_stall_timeout`: the writer cancels the reader; as above.
* no stream open for `idle_timeout`: the reader's wait for bytes has that deadline (moved by
  `idle_changed` whenever the first stream starts or the last one ends, so no task of its own);
  GOAWAY (NO_ERROR) and close.
* the inbound budget is full and this connection is behind: the reader waits its turn (`inbound_budget.py`).
* every stream over its message rate: the reader stops reading at once, lets the handlers send their
  statuses (within `shutdown_grace`), then as above.
* cancelled (server shutdown): the same cancellation reaches the handlers, each of which queues
  UNAVAILABLE; the write in flight and `_close` get `shutdown_grace` between them, then the socket is
  closed whatever happened.

Boundaries: `except Exception` once per connection (`serve`), once per stream (`stream_tasks.py`);
Cancelled is never caught.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import h2.exceptions
import structlog
import trio

from edge.grpc.config import GrpcServerConfig
from edge.grpc.frame_guard import ConnectionAbuse
from edge.grpc.inbound_budget import READ_STEP, ReadTurn
from edge.grpc.events import PeerSettingsReceived
from edge.grpc.metrics import ServerMetrics
from edge.grpc.protocol import GrpcServerProtocol
from edge.grpc.refusals import IDLE_TIMEOUT
from edge.grpc.sockets import find_remote_address, release_tls_stream
from edge.grpc.stats import GrpcServerStats
from edge.grpc.stream_tasks import Handler, StreamTasks
from edge.grpc.tls import HANDSHAKE_ALPN, HANDSHAKE_TIMEOUT, handshake_failure_cause

log = structlog.get_logger(__name__)

#: Bytes asked of the socket per read (also one woken connection's step under the inbound budget).
RECEIVE_CHUNK: Final = READ_STEP
#: Bytes handed to the socket per write; each write has its own stall deadline.
WRITE_CHUNK: Final = 64 * 1024
#: Outbound bytes a connection may hold before `send_message` waits for the socket to drain.
OUTBOUND_HIGH_WATER: Final = 256 * 1024
#: Seconds a connection refused for abuse (`ConnectionAbuse`) gets to take its GOAWAY before it is closed.
ABUSE_CLOSE_TIMEOUT: Final = 1.0


async def serve_grpc_connection(
    stream: trio.abc.Stream,
    routes: Mapping[str, Handler],
    config: GrpcServerConfig,
    *,
    metrics: ServerMetrics,
    stats: GrpcServerStats | None = None,
    remote_address: tuple[str, int] | None = None,
) -> None:
    """Serve one HTTP/2 connection over any Trio stream until it ends or is cancelled; close `stream`.

    A `trio.SSLStream` gets its handshake here (under `config.tls_handshake_timeout`); anything else is
    spoken to in plaintext (h2c, prior knowledge). `config.host/port/ssl_context` are not used. Tests
    pass one end of `trio.testing.memory_stream_pair()` and drive an h2 client on the other.
    `metrics` hears of every routed call and of a failed handshake (`metrics.py`).
    Never raises Exception (a bug ends this connection only, logged); Cancelled propagates after the
    graceful close.
    """
    if stats is None:
        stats = GrpcServerStats()
    if remote_address is None:
        remote_address = find_remote_address(stream)
    connection = ServerConnection(stream, routes, config, stats, metrics, remote_address)
    await connection.serve()


class ServerConnection:
    """State of one connection's shell. Implements `stream_tasks.StreamsHost` for its streams."""

    def __init__(
        self,
        transport: trio.abc.Stream,
        routes: Mapping[str, Handler],
        config: GrpcServerConfig,
        stats: GrpcServerStats,
        metrics: ServerMetrics,
        remote_address: tuple[str, int] | None,
    ) -> None:
        self._transport = transport
        self._routes = routes
        self._config = config
        self._stats = stats
        self._metrics = metrics
        self.remote_address = remote_address
        self.peer_certificate_der: bytes | None = None
        self.peer_certificate: dict[str, Any] | None = None
        self.protocol = GrpcServerProtocol(config.protocol_limits())
        self._turn = ReadTurn(config.inbound_budget, lambda: self.protocol.holds_complete_messages, self.report_buffered)
        self.max_message_bytes = config.max_message_bytes
        self._streams: StreamTasks | None = None  # from the start of `_run`
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
        self._preface_deadline = math.inf  # set when reading starts; math.inf once the preface is in
        self._read_scope: trio.CancelScope | None = None  # the reader's wait for bytes, while it waits
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
            except* Exception as group:  # noqa: BLE001 - see below
                # The one boundary per connection: a bug here ends this connection, no other.
                self._log.error("grpc_connection_failed", exc_info=group)
        finally:
            try:
                # When we are being cancelled, its last step (aclose_forcefully, not shielded) raises
                # Cancelled; the socket is closed by then, and the bookkeeping below must still run.
                await self._close()
            finally:
                self.protocol.release_inbound()
                self._turn.close()
                self.report_buffered(final=True)
                stats.connections_open -= 1
                stats.notify()
                self._log.debug("grpc_connection_closed")
                # No cycles left (docs/design.md#no-cycles-per-connection): freed now, not at a full collection.
                self._streams = None
                self.protocol.release()
                release_tls_stream(self._transport)

    async def _handshake(self) -> bool:
        transport = self._transport
        if not isinstance(transport, trio.SSLStream):
            return True
        with trio.move_on_after(self._config.tls_handshake_timeout) as scope:
            try:
                await transport.do_handshake()
            except trio.BrokenResourceError as exc:
                self._transport_broken = True
                self._metrics.handshake_failed(handshake_failure_cause(exc))
                self._log.info("grpc_tls_handshake_failed", error=str(exc.__cause__ or exc))
                return False
        if scope.cancelled_caught:
            self._metrics.handshake_failed(HANDSHAKE_TIMEOUT)
            self._log.info("grpc_tls_handshake_timeout", timeout=self._config.tls_handshake_timeout)
            return False
        alpn = transport.selected_alpn_protocol()
        if alpn not in (None, "h2"):
            self._metrics.handshake_failed(HANDSHAKE_ALPN)
            self._log.info("grpc_tls_wrong_alpn", alpn=alpn)
            return False
        self.peer_certificate_der = transport.getpeercert(binary_form=True)
        self.peer_certificate = transport.getpeercert() or None  # {} unless the certificate was verified
        return True

    async def _run(self) -> None:
        self.protocol.initiate_connection()
        self._initiated = True
        async with trio.open_nursery() as nursery:
            streams = self._streams = StreamTasks(
                self,
                nursery,
                self._routes,
                shutdown_grace=self._config.shutdown_grace,
                stats=self._stats,
                metrics=self._metrics,
                log=self._log,
                remote_address=self.remote_address,
                peer_certificate_der=self.peer_certificate_der,
                peer_certificate=self.peer_certificate,
            )
            nursery.start_soon(self._writer_loop)
            ending: tuple[str, bool] | None = None
            try:
                with self._reader_scope:
                    ending = await self._reader_loop(streams)
                if ending is None:  # the writer stopped the reader
                    ending = (self._failure_reason or "transport failed", False)
            finally:
                if ending is None:
                    self._begin_shutdown(streams)
                else:
                    self._connection_over(streams, ending[0], normal=ending[1])
            # Over (not cancelled): close the socket now rather than after the handlers, which are
            # finishing on their own or are cancelled after the grace period.
            await self._close()

    def _begin_shutdown(self, streams: StreamTasks) -> None:
        """We are being cancelled (server shutdown): handlers are cancelled by the same cancellation and
        each writes UNAVAILABLE as it ends; bound the write in flight, then `_close` sends GOAWAY."""
        self._close_deadline = trio.current_time() + self._config.shutdown_grace
        if self._send_scope is not None:
            self._send_scope.deadline = min(self._send_scope.deadline, self._close_deadline)
        self._log.debug("grpc_connection_shutting_down", streams=len(streams))

    def _connection_over(self, streams: StreamTasks, reason: str, *, normal: bool) -> None:
        """The client went away (or broke the protocol): every stream learns it now."""
        # A client hanging up is everyday life at the edge: debug. Broken protocol or stalls: info.
        (self._log.debug if normal else self._log.info)("grpc_connection_ended", reason=reason, streams=len(streams))
        streams.terminate_all(reason)
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
        if self._send_scope is not None:  # a write in flight: it must end by our deadline too
            self._send_scope.deadline = min(self._send_scope.deadline, deadline)
        if self._initiated and not self._transport_broken:
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

    def idle_changed(self) -> None:
        """A first stream started or the last one ended: move the reader's wait deadline."""
        if self._read_scope is not None:
            self._read_scope.deadline = self._read_deadline()

    def _read_deadline(self) -> float:
        """Until the preface is in: the handshake deadline. Then: `idle_timeout` after the last stream
        ended, or none while a stream is open."""
        if self._preface_deadline != math.inf:
            return self._preface_deadline
        idle_since = self._streams.idle_since if self._streams is not None else None
        return math.inf if idle_since is None else idle_since + self._config.idle_timeout

    # ---- reading

    async def _reader_loop(self, streams: StreamTasks) -> tuple[str, bool]:
        """Read until the connection ends; return why, and whether that is an everyday ending."""
        self._preface_deadline = trio.current_time() + self._config.tls_handshake_timeout
        while True:
            await self._turn.wait()  # the inbound budget is full and this connection is behind
            with trio.CancelScope(deadline=self._read_deadline()) as scope:
                self._read_scope = scope
                try:
                    data = await self._transport.receive_some(RECEIVE_CHUNK)
                except trio.BrokenResourceError as exc:
                    self._transport_broken = True
                    return f"reset ({exc.__cause__ or exc})", True
                except trio.ClosedResourceError:
                    return "closed", True
                finally:
                    self._read_scope = None
                    self._turn.read_done()
            if scope.cancelled_caught:
                if self._preface_deadline != math.inf:
                    return "preface timeout", False
                self._stats.refusals.count(IDLE_TIMEOUT)
                return "idle", True
            if not data:
                return "closed by client", True
            try:
                events = self.protocol.receive_data(data, now=trio.current_time())
            except h2.exceptions.ProtocolError as exc:
                self._log.info("grpc_protocol_error", error=str(exc))
                return "protocol error", False
            except ConnectionAbuse as abuse:
                self._stats.connections_refused[abuse.reason] += 1
                self._stats.refusals.count(abuse.reason)  # the metric, and the summary line (refusals.py)
                self._log.debug("grpc_connection_refused", reason=abuse.reason, code=abuse.error_code.name)
                self._close_deadline = trio.current_time() + ABUSE_CLOSE_TIMEOUT
                self._transport_broken = not abuse.flush  # a client that does not read: close, write nothing
                return f"refused ({abuse.reason})", False
            went_away = False
            for event in events:
                if isinstance(event, PeerSettingsReceived):
                    self._preface_deadline = math.inf
                went_away = streams.apply(event, self._log) or went_away
            self.report_buffered()
            if self.protocol.pending_outbound_bytes:
                self.wake_writer()  # h2's answers to this input (ACKs, WINDOW_UPDATEs); else no wake-up
            if went_away:
                return "client sent GOAWAY", True
            if self.protocol.every_stream_over_its_rate:
                # Without reading: the handlers need no more bytes to end their streams.
                await streams.wait_all_finished(self._config.shutdown_grace)
                return "every stream over its message rate", False

    # ---- writing

    async def _writer_loop(self) -> None:
        with self._writer_scope:
            while True:
                # Taking bytes and writing them is one step under the send lock, so `_close` (which
                # takes the lock for the final flush) never overtakes bytes the writer already took.
                await trio.lowlevel.checkpoint_if_cancelled()  # _send is shielded: be cancellable here
                try:
                    self._send_lock.acquire_nowait()  # the usual case: no schedule point for an idle lock
                except trio.WouldBlock:
                    await self._send_lock.acquire()
                try:
                    data = self.protocol.data_to_send(WRITE_CHUNK)
                    event = self._writer_wakeup
                    if data and not await self._send(data):
                        return
                finally:
                    self._send_lock.release()
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

    def _wake_drain_waiters(self) -> None:
        if self._drain_waiting and self._streams is not None:
            self._drain_waiting = False
            self._streams.wake_all_senders()

    # ---- StreamsHost

    def wake_writer(self) -> None:
        self._writer_wakeup.set()

    def inbound_consumed(self) -> None:
        self.report_buffered()
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

    def report_buffered(self, *, final: bool = False) -> None:
        stats = self._stats
        # Once closed, the connection holds nothing any more, whatever the protocol object says.
        now = 0 if final else self.protocol.inbound_buffered_bytes
        stats.report_held(self._config.held_budget)
        inbound_changed = stats.report_inbound(self._config.inbound_budget)
        self._turn.consumed()
        if now == self._buffered_reported:
            if inbound_changed:
                stats.notify()
            return
        stats.inbound_buffered_bytes += now - self._buffered_reported
        self._buffered_reported = now
        if self.protocol.max_stream_buffered_bytes > stats.max_stream_buffered_bytes:
            stats.max_stream_buffered_bytes = self.protocol.max_stream_buffered_bytes
        stats.notify()
