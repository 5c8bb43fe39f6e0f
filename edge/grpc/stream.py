"""`ServerStream`: one gRPC call, as its handler sees it, and the small API its connection drives it by.

No task of its own. The handler's task (`stream_tasks.py`) runs inside `handler_scope` and calls
`receive_message`/`send_message`; those wait on events that the connection's reader and writer tasks set
(`wake_inbound`, `wake_output`), and raise StreamReset/ConnectionLost once the connection calls
`terminate`. A handler cancelled while sending leaves `message_cut_off` set, so the transport resets the
stream instead of sending trailers after half a message.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import h2.exceptions
import trio

from edge.grpc.errors import MessageTooLarge, StreamReset
from edge.grpc.events import NOT_READY, Request
from edge.grpc.framing import frame_message
from edge.grpc.metrics import CallMetrics
from edge.grpc.protocol import GrpcServerProtocol

if TYPE_CHECKING:
    from collections.abc import Mapping


class StreamHost(Protocol):
    """What a stream needs from its connection (implemented by `connection.ServerConnection`)."""

    protocol: GrpcServerProtocol
    max_message_bytes: int

    def wake_writer(self) -> None: ...

    def inbound_consumed(self) -> None: ...

    def output_blocked(self) -> bool: ...


class ServerStream:
    """One gRPC call (one HTTP/2 stream). Created by the transport; handlers only use it.

    `receive_message` and `send_message` may be used from different tasks at the same time (one reader,
    any number of senders: sends are serialised so messages never interleave).
    """

    def __init__(
        self,
        host: StreamHost,
        request: Request,
        *,
        remote_address: tuple[str, int] | None,
        peer_certificate_der: bytes | None,
        peer_certificate: Mapping[str, Any] | None,
        metrics: CallMetrics,
        deadline: float = math.inf,
    ) -> None:
        self._host = host
        self.stream_id: int = request.stream_id
        self.path: str = request.path
        #: Custom request metadata, lower-case keys (values of `-bin` keys are bytes).
        self.metadata: tuple[tuple[str, str | bytes], ...] = request.metadata
        self.authority: str | None = request.authority
        self.message_encoding: str | None = request.message_encoding
        self.remote_address = remote_address
        self.peer_certificate_der = peer_certificate_der
        self.peer_certificate = dict(peer_certificate) if peer_certificate else None
        #: Trio time the client's grpc-timeout runs out (inf without one); the handler is cancelled then.
        self.deadline = deadline
        #: This call's counters (messages each way, its final code); the transport reports to them.
        self.metrics = metrics
        # The handler runs inside this scope: its deadline is the grpc-timeout, and it is moved in to
        # now + shutdown_grace when the stream is reset or its connection lost.
        self._scope = trio.CancelScope(deadline=deadline)
        self._inbound_event = trio.Event()
        self._output_event = trio.Event()
        self._terminated_event = trio.Event()
        self._termination: StreamReset | None = None
        self._on_terminated: list[Callable[[], None]] = []
        self._send_lock = trio.Lock()
        self._response_started = False
        self._message_cut_off = False  # a message's DATA was cut off by cancellation: trailers would corrupt
        self._finished = False

    def __repr__(self) -> str:
        return f"<ServerStream {self.stream_id} {self.path} from {self.remote_address}>"

    # ---- the handler's API

    async def receive_message(self) -> bytes | None:
        """The next message body (un-framed, decompressed), or None once the client half-closed.

        Raises StreamReset (client cancelled) / ConnectionLost (connection gone) as soon as the reader
        sees it, MessageTooLarge and ProtocolViolation (after the messages that arrived before the bad one).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            self._raise_if_unusable()
            item = self._host.protocol.next_message(self.stream_id, now=trio.current_time())
            if item is not NOT_READY:
                self._host.inbound_consumed()
                if item is not None:
                    self.metrics.received()
                # Schedule point that cannot be cancelled: the message is ours now, never drop it.
                await trio.lowlevel.cancel_shielded_checkpoint()
                return item
            event = self._inbound_event
            await event.wait()

    async def send_message(self, data: bytes) -> None:
        """Frame and send one message, sending the response headers first if needed.

        Waits (without buffering more than one HTTP/2 frame beyond the connection's bounded output)
        while the client's flow-control window is closed. Raises MessageTooLarge for a message over
        max_message_bytes, StreamReset/ConnectionLost once the stream or its connection is gone.
        """
        await self.send_messages([data])

    async def send_messages(self, messages: Sequence[bytes], sent: Callable[[int], None] | None = None) -> None:
        """Send several messages back to back, framed into as few HTTP/2 DATA frames (and socket writes)
        as the flow-control windows allow. `sent(i)` is called once message i is wholly handed to the
        connection, in order, so a caller interrupted by StreamReset/ConnectionLost knows which were.

        Raises MessageTooLarge, before sending anything, if any message is over max_message_bytes.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        limit = self._host.max_message_bytes
        for data in messages:
            if len(data) > limit:
                raise MessageTooLarge(len(data), limit, "sent")
        async with self._send_lock:
            self._raise_if_unusable()
            protocol = self._host.protocol
            framed = [frame_message(bytes(data)) for data in messages]
            ends = list(itertools.accumulate(map(len, framed)))  # where each message's last byte is
            wire = memoryview(b"".join(framed))
            done = 0  # messages wholly handed over
            try:
                if not self._response_started:
                    protocol.start_response(self.stream_id)
                    self._response_started = True
                position = 0
                while position < len(wire):
                    self._raise_if_unusable()
                    window = protocol.send_window(self.stream_id)
                    if window <= 0:
                        await self._wait_output()
                        continue
                    chunk = wire[position : position + window]
                    protocol.send_data(self.stream_id, bytes(chunk))
                    position += len(chunk)
                    while done < len(ends) and ends[done] <= position:
                        self.metrics.sent()
                        if sent is not None:
                            sent(done)
                        done += 1
                    self._message_cut_off = position != (ends[done - 1] if done else 0)
                    self._host.wake_writer()
                    while self._host.output_blocked():
                        self._raise_if_unusable()
                        await self._wait_output()
                self._message_cut_off = False
            except h2.exceptions.ProtocolError:
                # h2 already knows the stream closed; our reader will report why in a moment.
                raise self._gone() from None
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_terminated(self) -> StreamReset:
        """Return (the StreamReset/ConnectionLost) once the client reset the stream or the connection
        was lost. For handlers that want to notice a departed client while not reading."""
        await self._terminated_event.wait()
        assert self._termination is not None
        return self._termination.clone()

    def on_terminated(self, callback: Callable[[], None]) -> None:
        """Call `callback()` the moment the client resets the stream or the connection is lost (at once
        if it already is): like `wait_terminated`, for handlers that keep no task waiting for it. Runs
        synchronously in the connection's reader task: it must be quick and must not raise."""
        if self._termination is not None:
            callback()
        else:
            self._on_terminated.append(callback)

    def open_window(self) -> None:
        """Let the client send at full speed on this stream (for a stream on the server's `held_paths`,
        which until then may hold no more than the initial window). Call once the client proved who
        it is; other streams are opened when they start."""
        if self._termination is None and not self._finished and self._host.protocol.open_window(self.stream_id):
            self._host.wake_writer()

    def admit(self) -> None:
        """This stream's bytes stop counting against the server's budget for not-yet-admitted streams."""
        self._host.protocol.admit(self.stream_id)

    @property
    def buffered_bytes(self) -> int:
        """Inbound bytes held for this handler right now (queued messages and a partial one)."""
        return self._host.protocol.stream_buffered_bytes(self.stream_id)

    @property
    def receive_window(self) -> int:
        """Bytes the client may still send on this stream before it must wait for us (0: it is
        stopped by flow control, e.g. because the handler is not reading)."""
        try:
            window: int = self._host.protocol.h2_connection.remote_flow_control_window(self.stream_id)
            return window
        except h2.exceptions.ProtocolError:  # the stream is closed
            return 0

    @property
    def terminated(self) -> bool:
        """True once the client reset the stream or the connection was lost."""
        return self._termination is not None

    # ---- the transport's API (the connection and the stream's task call these; handlers do not)

    @property
    def handler_scope(self) -> trio.CancelScope:
        """The scope the handler runs in: its deadline is the client's grpc-timeout, moved in by
        `terminate`."""
        return self._scope

    @property
    def termination(self) -> StreamReset | None:
        """Why the stream is gone (StreamReset or ConnectionLost), or None while it is alive."""
        return self._termination

    @property
    def response_started(self) -> bool:
        """True once the response headers were queued (the final status then goes in trailers)."""
        return self._response_started

    @property
    def message_cut_off(self) -> bool:
        """True when a send was cancelled half-way through a message: the stream must be reset, since
        trailers after half a message would be read as a corrupt one."""
        return self._message_cut_off

    def terminate(self, error: StreamReset, *, cancel_handler_at: float) -> None:
        """The client reset the stream or the connection is gone: every wait in `receive_message`,
        `send_message` and `wait_terminated` ends now with `error`, and the handler is cancelled at
        `cancel_handler_at` unless it returns first. Once only; nothing after `mark_finished`."""
        if self._termination is not None or self._finished:
            return
        self._termination = error
        self._terminated_event.set()
        self.wake_inbound()
        self.wake_output()
        self._scope.deadline = min(self._scope.deadline, cancel_handler_at)
        callbacks, self._on_terminated = self._on_terminated, []
        for callback in callbacks:
            callback()

    def wake_inbound(self) -> None:
        """Something arrived for `receive_message` (a message, the end, or an error)."""
        self._inbound_event.set()
        self._inbound_event = trio.Event()

    def wake_output(self) -> None:
        """Send window opened, or the connection's output drained: `send_message` may go on."""
        self._output_event.set()
        self._output_event = trio.Event()

    def mark_finished(self) -> None:
        """The handler returned and the final status is queued: the stream cannot be used any more."""
        self._finished = True
        self._on_terminated = []
        self.wake_inbound()
        self.wake_output()

    # ---- helpers

    async def _wait_output(self) -> None:
        event = self._output_event
        await event.wait()

    def _gone(self) -> StreamReset:
        if self._termination is not None:
            return self._termination.clone()
        return StreamReset(0, "stream already finished")

    def _raise_if_unusable(self) -> None:
        if self._termination is not None or self._finished:
            raise self._gone()
