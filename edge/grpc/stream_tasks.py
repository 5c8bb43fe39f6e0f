"""`StreamTasks`: the open streams of one connection, one handler task each, and each call's final status.

Task tree (inside the connection's nursery, `connection.py`):

    ServerConnection._run                 the connection's nursery
      StreamTasks._run (per stream)       task "grpc stream <id>": runs the handler inside the stream's
                                          `handler_scope`, then queues the stream's ending

Who ends a stream's task, and what the client gets:
* the handler returns a Status (or None: OK) or raises a StreamError: that status; a StreamReset it
  raises while the stream is alive: CANCELLED; any other exception: logged with its traceback, INTERNAL
  "internal error" (never the exception text). Exception groups are looked at whole (`_status_of`).
* the client's grpc-timeout runs out (the scope's deadline): DEADLINE_EXCEEDED.
* the client reset the stream or the connection is gone (`terminate`): nothing is sent; the handler has
  `shutdown_grace` seconds to return before its scope is cancelled.
* the connection's nursery is cancelled (server shutdown): the handler is cancelled and UNAVAILABLE
  "edge shutting down" is queued from the task's `finally`.

Queuing a stream's ending is synchronous (`_finish`), so it is safe in a cancelled task's `finally`; the
connection's writer sends it. Cancelled is never caught: it goes on up to the connection's nursery.

Metrics (`metrics.py`): a routed call is reported started when its task is started, and handled in
`_finish`, once, with the code queued for the client, or CANCELLED when nothing could be sent.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Protocol

import trio
from purerpc.grpclib.status import Status, StatusCode

from edge.grpc.errors import ConnectionLost, StreamError, StreamReset
from edge.grpc.events import (
    Event,
    PeerGoingAway,
    PeerSettingsReceived,
    Request,
    RequestRejected,
    RequestStarted,
    SendWindowOpened,
    StreamReadable,
    StreamResetByPeer,
)
from edge.grpc.metrics import ServerMetrics
from edge.grpc.stats import GrpcServerStats
from edge.grpc.stream import ServerStream, StreamHost

Handler = Callable[[ServerStream], Awaitable[Status | None]]

SHUTDOWN_STATUS: Final = Status(StatusCode.UNAVAILABLE, "edge shutting down")
INTERNAL_STATUS: Final = Status(StatusCode.INTERNAL, "internal error")
DEADLINE_STATUS: Final = Status(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
UNIMPLEMENTED_STATUS: Final = Status(StatusCode.UNIMPLEMENTED, "unknown method")
CANCELLED_STATUS: Final = Status(StatusCode.CANCELLED, "stream cancelled")
OK_STATUS: Final = Status(StatusCode.OK)


class StreamsHost(StreamHost, Protocol):
    """What the stream tasks need from their connection beyond what each stream needs."""

    def report_buffered(self) -> None:
        """Inbound bytes held for handlers may have changed: update the stats."""

    def idle_changed(self) -> None:
        """`StreamTasks.idle_since` changed (a first stream started, or the last one ended)."""


class StreamTasks:
    """The streams of one connection, keyed by stream id, each with its handler task in `nursery`."""

    def __init__(
        self,
        host: StreamsHost,
        nursery: trio.Nursery,
        routes: Mapping[str, Handler],
        *,
        shutdown_grace: float,
        stats: GrpcServerStats,
        metrics: ServerMetrics,
        log: Any,
        remote_address: tuple[str, int] | None,
        peer_certificate_der: bytes | None,
        peer_certificate: Mapping[str, Any] | None,
    ) -> None:
        self._host = host
        self._nursery = nursery
        self._routes = routes
        self._shutdown_grace = shutdown_grace
        self._stats = stats
        self._metrics = metrics
        self._log = log
        self._remote_address = remote_address
        self._peer_certificate_der = peer_certificate_der
        self._peer_certificate = peer_certificate
        self._streams: dict[int, ServerStream] = {}
        self._changed = trio.Event()
        #: Since when (Trio time) no stream has been open; None while one is.
        self.idle_since: float | None = trio.current_time()

    def __len__(self) -> int:
        return len(self._streams)

    def get(self, stream_id: int) -> ServerStream | None:
        return self._streams.get(stream_id)

    def count_status(self, status: Status) -> None:
        self._stats.statuses[status.status_code.name] += 1

    def start(self, request: Request) -> None:
        """A new request: start its handler's task, or answer UNIMPLEMENTED for an unknown path."""
        handler = self._routes.get(request.path)
        if handler is None:
            self._host.protocol.finish(request.stream_id, UNIMPLEMENTED_STATUS, response_started=False)
            self.count_status(UNIMPLEMENTED_STATUS)
            self._log.info("grpc_unknown_method", stream_id=request.stream_id, path=request.path[:200])
            return
        deadline = math.inf
        if request.timeout is not None:
            deadline = trio.current_time() + request.timeout
        stream = ServerStream(
            self._host,
            request,
            remote_address=self._remote_address,
            peer_certificate_der=self._peer_certificate_der,
            peer_certificate=self._peer_certificate,
            deadline=deadline,
            metrics=self._metrics.call_started(request.path, trio.current_time()),
        )
        self._streams[request.stream_id] = stream
        if self.idle_since is not None:
            self.idle_since = None
            self._host.idle_changed()
        self._wake_watchers()
        self._stats.streams_started += 1
        self._stats.streams_open += 1
        self._stats.notify()
        self._nursery.start_soon(self._run, stream, handler, name=f"grpc stream {request.stream_id}")

    def terminate(self, stream: ServerStream, error: StreamReset) -> None:
        """The handler hears `error` at once if it is reading or writing; if it is busy elsewhere and
        does not return by itself, it is cancelled after the grace period so nothing leaks."""
        stream.terminate(error, cancel_handler_at=trio.current_time() + self._shutdown_grace)

    def terminate_all(self, reason: str) -> None:
        """The connection is over: every stream learns it now."""
        for stream in list(self._streams.values()):
            self.terminate(stream, ConnectionLost(0, f"connection {reason}"))

    def apply(self, event: Event, log: Any) -> bool:
        """Act on one protocol event of the connection (the reader calls it); True if it is the client's GOAWAY."""
        if isinstance(event, StreamReadable):
            stream = self.get(event.stream_id)
            if stream is not None:
                stream.wake_inbound()
        elif isinstance(event, SendWindowOpened):
            if event.stream_id == 0:
                self.wake_all_senders()
            else:
                stream = self.get(event.stream_id)
                if stream is not None:
                    stream.wake_output()
        elif isinstance(event, RequestStarted):
            self.start(event.request)
        elif isinstance(event, StreamResetByPeer):
            stream = self.get(event.stream_id)
            if stream is not None:
                log.debug("grpc_stream_reset_by_client", stream_id=event.stream_id, code=event.error_code)
                self.terminate(stream, StreamReset(event.error_code))
        elif isinstance(event, PeerSettingsReceived):
            self.wake_all_senders()  # INITIAL_WINDOW_SIZE may have grown
        elif isinstance(event, RequestRejected):
            log.info("grpc_request_rejected", stream_id=event.stream_id, reason=event.reason)
            self.count_status(event.status)
        elif isinstance(event, PeerGoingAway):
            log.debug("grpc_client_goaway", code=event.error_code)
            return True
        return False

    def wake_all_senders(self) -> None:
        for stream in self._streams.values():
            stream.wake_output()

    def _wake_watchers(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_all_finished(self, timeout: float) -> None:
        """Let the handlers end their streams by themselves, for at most `timeout` seconds."""
        with trio.move_on_after(timeout):
            while self._streams:
                event = self._changed
                await event.wait()

    # ---- one stream's task

    async def _run(self, stream: ServerStream, handler: Handler) -> None:
        stream_log = self._log.bind(stream_id=stream.stream_id, path=stream.path)
        status: Status | None = None
        decided = False
        try:
            with stream.handler_scope:
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
            self._finish(stream, status, stream_log)

    async def _call_handler(self, stream: ServerStream, handler: Handler, stream_log: Any) -> Status | None:
        """Run the handler; return the status to send (None: nothing, the stream is gone)."""
        result: object = None
        reset = False
        stream_errors: list[StreamError] = []
        failure: BaseExceptionGroup[Exception] | None = None
        try:
            result = await handler(stream)
        except* StreamReset:
            reset = True
        except* StreamError as group:
            stream_errors = _leaves(group)
        except* Exception as group:  # noqa: BLE001 - see below
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
        if stream_errors:
            return self._status_of(stream_errors, stream_log)
        if result is None:
            return OK_STATUS
        if isinstance(result, Status):
            return result
        stream_log.error("grpc_handler_bad_return", returned=type(result).__name__)
        return INTERNAL_STATUS

    def _status_of(self, errors: list[StreamError], stream_log: Any) -> Status | None:
        """The status for the stream errors a handler let out. Usually one; several (from tasks of the
        handler's own nursery) give their status when they all agree, and INTERNAL when they do not,
        since no one of them is the call's outcome; every one is logged either way."""
        statuses = [error.status() for error in errors]
        for error, status in zip(errors, statuses, strict=True):
            stream_log.info(
                "grpc_stream_error", error=str(error), status=status.status_code.name if status is not None else None
            )
        first = statuses[0]
        if all(_same_status(status, first) for status in statuses[1:]):
            return first
        stream_log.error("grpc_handler_stream_errors_disagree", errors=len(errors))
        return INTERNAL_STATUS

    def _finish(self, stream: ServerStream, status: Status | None, stream_log: Any) -> None:
        """Queue the stream's ending (synchronous: safe in a cancelled task's `finally`)."""
        stream_id = stream.stream_id
        protocol = self._host.protocol
        self._streams.pop(stream_id, None)
        termination = stream.termination
        if termination is None:
            if status is None:
                status = CANCELLED_STATUS
            protocol.finish(stream_id, status, response_started=stream.response_started, abort=stream.message_cut_off)
            self.count_status(status)
            stream.metrics.handled(status.status_code, trio.current_time())
            stream_log.debug("grpc_stream_finished", status=status.status_code.name)
        else:
            protocol.finish(stream_id, None, response_started=stream.response_started)
            if isinstance(termination, ConnectionLost):
                self._stats.streams_lost += 1
            else:
                self._stats.streams_reset += 1
            # No status reaches the client; counted as a grpc-go handler would see it.
            stream.metrics.handled(StatusCode.CANCELLED, trio.current_time())
            stream_log.debug("grpc_stream_gone", reason=str(termination))
        stream.mark_finished()
        if not self._streams:
            self.idle_since = trio.current_time()
            self._host.idle_changed()
        self._wake_watchers()
        self._stats.streams_open -= 1
        self._host.report_buffered()
        self._stats.notify()
        self._host.wake_writer()


def _leaves(group: BaseExceptionGroup[StreamError]) -> list[StreamError]:
    """Every exception in `group`, nested groups flattened, in order."""
    leaves: list[StreamError] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            leaves.extend(_leaves(exc))
        else:
            leaves.append(exc)
    return leaves


def _same_status(a: Status | None, b: Status | None) -> bool:
    if a is None or b is None:
        return a is b
    return bool(a.status_code == b.status_code and a.status_message == b.status_message)


def _single(group: BaseExceptionGroup[Exception]) -> BaseException:
    """The one exception in a group of one (as `except*` wraps a bare raise), else the group."""
    if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
        return group.exceptions[0]
    return group
