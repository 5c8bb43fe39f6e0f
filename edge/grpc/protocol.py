"""`GrpcServerProtocol`: the server side of one gRPC-over-HTTP/2 connection, sans I/O.

It subclasses purerpc's `GRPCConnection` (which wraps h2's `H2Connection`) and fixes, in this layer, what
purerpc's own server gets wrong: reset streams that never reach their handler, unbounded sizes, and
compressed or oversized messages that kill the whole connection.

* a client's RST_STREAM and GOAWAY become events (`StreamResetByPeer`, `PeerGoingAway`) instead of being
  dropped;
* each stream keeps its own bounded queue of complete messages (`inbound.InboundStream`). Bytes are
  acknowledged to the peer (HTTP/2 WINDOW_UPDATE) as they are buffered, so one message larger than the
  flow-control window still gets through, and acknowledging stops while the queue is full, so a slow
  handler pushes back on its client through HTTP/2 flow control instead of growing memory. Per stream the
  buffer holds at most about `stream_inbound_queue * max_message_bytes + max_message_bytes +
  stream_window_bytes`. Every stream's bytes also count against the server's shared `inbound_budget`:
  while it is full, a stream with messages its handler has not taken is acknowledged nothing (and the
  shell does not read its connection: `inbound_budget.py`);
* a message's declared length is checked before its body is buffered; an oversized, undecodable or
  over-decompressing message fails *that stream only* (`StreamReadable` + the error from `next_message`),
  never the connection;
* windows, concurrent streams and header-list size come from `ProtocolLimits`, not purerpc's constants
  (64 MiB windows, 65,536 streams). A stream's small initial window grows to `stream_window_bytes` when
  it starts or, on `held_paths`, at `open_window`; until `admit` its bytes count against `held_budget`;
* frame headers are judged before h2 buffers the frame (`frame_guard`), and a client that does not read
  is not buffered for: `ConnectionAbuse`, with our GOAWAY queued;
* with `ProtocolLimits.message_meter`, every stream's messages are counted as they *arrive* (not as the
  handler gets round to them) by a meter of the caller's; over its limit the stream fails with
  `RateLimited` after the messages that arrived within it. Time during which the server itself held the
  stream back (its queue full, acknowledgements withheld) is reported to the meter (`held`/`released`),
  so a client is not blamed for the backlog a slow handler made it build;
* late WINDOW_UPDATE/RST_STREAM frames for streams that already closed are dropped before h2 3.2 can
  turn them into a connection error (`late_frames.LateFrameSplitter`), and request headers are decoded
  per request, so non-UTF-8 metadata fails that call, not the connection. Client trailers and
  HEADERS-with-END_STREAM requests (zero messages) are accepted, where purerpc would fail the connection.

Known h2 3.2 limits kept as they are: a client that opens more streams than MAX_CONCURRENT_STREAMS, or
sends a header list over MAX_HEADER_LIST_SIZE, gets a connection error (GOAWAY) rather than a stream
error. Well-behaved clients (grpcio) never do either.

The methods overridden below are private hooks of purerpc 0.8.0's `GRPCConnection`, called from its
`__init__` and `receive_data`; `tests/grpc/test_purerpc_hooks.py` fails if the installed purerpc no
longer calls them as this class assumes.

Nothing here awaits: the Trio shell (`connection.py`) moves bytes in (`receive_data`) and out
(`data_to_send`) and wakes tasks on the returned events. Tests drive it with a plain h2 client.
"""

from __future__ import annotations

import contextlib

import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.connection import GRPCConnection
from purerpc.grpclib.events import RequestReceived
from purerpc.grpclib.exceptions import ProtocolError as GrpcHeaderError
from purerpc.grpclib.headers import HeaderDict
from purerpc.grpclib.status import Status, StatusCode

from edge.grpc.errors import StreamReset
from edge.grpc.events import (
    NOT_READY,
    Event,
    NotReady,
    PeerGoingAway,
    PeerSettingsReceived,
    Request,
    RequestRejected,
    RequestStarted,
    SendWindowOpened,
    StreamReadable,
    StreamResetByPeer,
)
from edge.grpc.frame_guard import ConnectionAbuse, FrameGuard, refuse_empty_header_names
from edge.grpc.framing import ACCEPTED_ENCODINGS, MessageParser, status_trailers
from edge.grpc.inbound import InboundStream
from edge.grpc.late_frames import LateFrameSplitter, closed_client_stream
from edge.grpc.outbound import OutboundQueue
from edge.grpc.limits import H2_DEFAULT_WINDOW, ProtocolLimits


class GrpcServerProtocol(GRPCConnection):  # type: ignore[misc]  # purerpc is untyped: its base is Any
    """purerpc's sans-IO gRPC connection, made safe for long-lived streams from untrusted clients."""

    def __init__(self, limits: ProtocolLimits) -> None:
        self.limits = limits
        self._inbound: dict[int, InboundStream] = {}
        #: Bytes held for handlers right now, over all streams (queued messages + partial ones).
        self.inbound_buffered_bytes = 0
        #: The most any single stream has held at once.
        self.max_stream_buffered_bytes = 0
        self.goaway_sent = False
        self.peer_went_away = False
        self._now = 0.0  # the time given to the receive_data call being processed
        self._splitter = LateFrameSplitter()
        super().__init__(
            GRPCConfiguration(
                client_side=False,
                max_message_length=limits.max_message_bytes,
                message_accept_encoding=list(ACCEPTED_ENCODINGS),
            )
        )
        # Headers arrive as bytes and are decoded per request (_request_received): with h2 decoding
        # them, one non-UTF-8 metadata value would raise out of receive_data and end the connection.
        self.h2_connection.config.header_encoding = None
        self.guard = FrameGuard(limits.frame_budgets, self.h2_connection.max_inbound_frame_size)
        self._outbound = OutboundQueue(self.h2_connection.data_to_send, limits.max_pending_outbound_bytes)
        self.h2_connection.receive_data = refuse_empty_header_names(self.h2_connection.receive_data)

    # ---- settings and windows (purerpc: 64 MiB windows, 65,536 streams, fixed header list size)

    def _set_h2_connection_local_settings(self) -> None:
        limits = self.limits
        self.h2_connection.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                SettingCodes.INITIAL_WINDOW_SIZE: limits.first_window_bytes,
                SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_bytes,
            },
        )
        # Values given as initial_values never go through the "acknowledged" path that would copy this
        # into the HPACK decoder, so set the enforced bound directly.
        self.h2_connection.decoder.max_header_list_size = limits.max_header_list_bytes

    def initiate_connection(self) -> None:
        self.h2_connection.initiate_connection()
        extra = self.limits.connection_window_bytes - H2_DEFAULT_WINDOW
        if extra > 0:
            self.h2_connection.increment_flow_control_window(extra)

    # ---- bytes in

    def receive_data(self, data: bytes | bytearray, now: float = 0.0) -> list[Event]:
        """Feed bytes from the socket that arrived at `now` (for message meters and frame budgets).
        h2's ProtocolError (connection-fatal) propagates; h2 has then already queued its GOAWAY. So does
        ConnectionAbuse (`frame_guard`), with our GOAWAY queued, the bytes unseen by h2."""
        self._now = now
        events: list[Event] = []
        try:
            self.guard.check(data, now)
            pending = len(self._outbound)
            for piece, late_frame_stream in self._splitter.split(data):
                if late_frame_stream is not None and closed_client_stream(self.h2_connection, late_frame_stream):
                    continue  # RFC 9113 5.1: ignore WINDOW_UPDATE/RST_STREAM on a closed stream
                events.extend(super().receive_data(piece))
            self._outbound.count_replies(pending)
        except h2.exceptions.ProtocolError:
            self.goaway_sent = True
            raise
        except ConnectionAbuse as abuse:
            self._abort(abuse)
            raise
        return events

    def _abort(self, abuse: ConnectionAbuse) -> None:
        if not abuse.flush:
            self._outbound.clear()  # nobody reads it
        if not self.goaway_sent and not self.peer_went_away:
            self.goaway_sent = True
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2_connection.close_connection(abuse.error_code)

    def _request_received(self, event: h2.events.RequestReceived) -> list[Event]:
        stream_id = event.stream_id
        try:
            headers = HeaderDict((bytes(name).decode("ascii"), bytes(value).decode("utf-8")) for name, value in event.headers)
            path = headers[":path"]
            parsed = RequestReceived.parse_from_stream_id_and_headers_destructive(stream_id, headers)
        except (GrpcHeaderError, KeyError, ValueError, TypeError, AttributeError) as exc:
            # purerpc's parser reports bad input with several exception types (and undecodable bytes
            # raise UnicodeDecodeError, a ValueError); all mean "not a gRPC request".
            status = Status(StatusCode.INVALID_ARGUMENT, "malformed gRPC request headers")
            self._answer_unaccepted(stream_id, status, remote_ended=event.stream_ended is not None)
            return [RequestRejected(stream_id, status, reason=type(exc).__name__)]
        timeout = parsed.timeout.total_seconds() if parsed.timeout is not None else None
        request = Request(
            stream_id=stream_id,
            path=path,
            metadata=tuple(parsed.custom_metadata),
            authority=parsed.authority,
            message_encoding=parsed.message_encoding,
            timeout=timeout,
        )
        make_meter = self.limits.message_meter
        held = path in self.limits.held_paths
        self._inbound[stream_id] = InboundStream(
            parser=MessageParser(self.limits.max_message_bytes, parsed.message_encoding),
            meter=make_meter(self._now) if make_meter is not None else None,
            window_open=False,
            budget=self.limits.held_budget if held else None,
        )
        if not held:
            self.open_window(stream_id)
        # With END_STREAM on the HEADERS, h2 also emits StreamEnded, handled by _stream_ended.
        return [RequestStarted(request)]

    def _answer_unaccepted(self, stream_id: int, status: Status, *, remote_ended: bool) -> None:
        self.h2_connection.send_headers(stream_id, status_trailers(status, response_started=False), end_stream=True)
        if not remote_ended:
            self.h2_connection.reset_stream(stream_id, ErrorCodes.NO_ERROR)

    def _data_received(self, event: h2.events.DataReceived) -> list[Event]:
        stream_id = event.stream_id
        length = event.flow_controlled_length
        st = self._inbound.get(stream_id)
        if st is None:
            # Frames already in flight for a stream we answered: give the bytes back to the connection.
            if length:
                self.h2_connection.acknowledge_received_data(length, stream_id)
            return []
        if st.failure is not None or st.reset_code is not None or st.cutoff is not None:
            # Discarded. Not acknowledged, so the client stalls on this stream after one window; the
            # connection gets the bytes back when the stream is finished.
            st.withheld += length
            return []
        before = st.buffered
        arrived = st.parser.feed(event.data)
        if arrived and st.meter is not None:
            st.count_arrivals(arrived, self._now)
        st.extract(self.limits.stream_inbound_queue)
        st.charge()
        if st.may_acknowledge(self.limits.stream_inbound_queue) and not self._budget_holds(st):
            if length:
                self.h2_connection.acknowledge_received_data(length, stream_id)
        else:
            st.withheld += length
            if st.window_open and st.meter is not None and not st.held and st.failure is None and st.cutoff is None:
                st.held = True
                st.meter.held(self._now)
        self._account(st, before)
        if st.queue or st.failure is not None:
            return [StreamReadable(stream_id)]
        return []

    def _stream_ended(self, event: h2.events.StreamEnded) -> list[Event]:
        st = self._inbound.get(event.stream_id)
        if st is None:
            return []
        before = st.buffered
        st.remote_ended = True
        st.extract(self.limits.stream_inbound_queue)
        self._account(st, before)
        return [StreamReadable(event.stream_id)]

    def _stream_reset(self, event: h2.events.StreamReset) -> list[Event]:
        st = self._inbound.get(event.stream_id)
        if st is None:
            return []
        before = st.buffered
        st.reset_code = int(event.error_code)
        st.discard()
        self._account(st, before)
        self._credit_withheld(event.stream_id, st)
        return [StreamResetByPeer(event.stream_id, st.reset_code)]

    def _connection_terminated(self, event: h2.events.ConnectionTerminated) -> list[Event]:
        self.peer_went_away = True
        return [PeerGoingAway(int(event.error_code), event.last_stream_id)]

    def _window_updated(self, event: h2.events.WindowUpdated) -> list[Event]:
        return [SendWindowOpened(event.stream_id)]

    def _remote_settings_changed(self, event: h2.events.RemoteSettingsChanged) -> list[Event]:
        return [PeerSettingsReceived()]

    def _trailers_received(self, event: h2.events.TrailersReceived) -> list[Event]:
        # Clients do not send trailers in gRPC; ignore them (StreamEnded follows). purerpc would parse
        # them as a *response* and kill the connection.
        return []

    def _response_received(self, event: h2.events.ResponseReceived) -> list[Event]:
        return []  # client-side only; h2 never emits it on a server connection

    # ---- per-stream inbound state

    @property
    def every_stream_over_its_rate(self) -> bool:
        """True when the connection has streams and every one was cut off by its message meter: nothing
        more the client sends can be used, so the shell stops reading it."""
        for st in self._inbound.values():  # (asked after every read: a loop, not a generator)
            if st.cutoff is None:
                return False
        return bool(self._inbound)

    @property
    def holds_complete_messages(self) -> bool:
        """Some stream has messages its handler has not taken: with the shared inbound budget full, the
        connection is not read until they are taken (`inbound_budget.py`)."""
        return any(st.queue for st in self._inbound.values())

    def _budget_holds(self, st: InboundStream) -> bool:
        """The shared inbound budget is full and the stream is behind: acknowledge nothing for now."""
        budget = self.limits.inbound_budget
        return budget is not None and bool(st.queue) and budget.full

    def _account(self, st: InboundStream, before: int) -> None:
        st.charge()
        after = st.buffered
        self.inbound_buffered_bytes += after - before
        if self.limits.inbound_budget is not None and after != before:
            self.limits.inbound_budget.charge(after - before)
        if after > self.max_stream_buffered_bytes:
            self.max_stream_buffered_bytes = after

    def _credit_withheld(self, stream_id: int, st: InboundStream) -> None:
        if st.withheld:
            # On a closed stream h2 credits only the connection window, which is what we want.
            self.h2_connection.acknowledge_received_data(st.withheld, stream_id)
            st.withheld = 0

    def next_message(self, stream_id: int, now: float | None = None) -> bytes | None | NotReady:
        """The next message body; None once the client half-closed and everything was handed out;
        NOT_READY if there is nothing yet. Raises StreamReset after RST_STREAM, and the stream's
        StreamError (after the messages queued before it). `now` (the caller's clock) tells the
        stream's meter when the server stops holding the stream back."""
        st = self._inbound[stream_id]
        if st.reset_code is not None:
            raise StreamReset(st.reset_code)
        if st.queue:
            before = st.buffered
            message = st.pop()
            st.extract(self.limits.stream_inbound_queue)
            if st.withheld and st.may_acknowledge(self.limits.stream_inbound_queue) and not self._budget_holds(st):
                self.h2_connection.acknowledge_received_data(st.withheld, stream_id)
                st.withheld = 0
                if st.held and st.meter is not None:
                    st.held = False
                    if now is not None:
                        st.meter.released(now)
            self._account(st, before)
            return message
        if st.failure is not None:
            raise st.failure.clone()
        if st.remote_ended:
            return None
        return NOT_READY

    def open_window(self, stream_id: int) -> bool:
        """Let a held stream use its whole window (`stream_window_bytes`) from now on: acknowledge what
        it sent so far and grant the rest. True if a WINDOW_UPDATE was queued."""
        st = self._inbound.get(stream_id)
        if st is None or st.window_open:
            return False
        st.window_open = True
        extra = self.limits.stream_window_bytes - self.limits.first_window_bytes
        with contextlib.suppress(h2.exceptions.ProtocolError):  # the stream closed underneath us
            if st.withheld and st.may_acknowledge(self.limits.stream_inbound_queue) and not self._budget_holds(st):
                self.h2_connection.acknowledge_received_data(st.withheld, stream_id)
                st.withheld = 0
            if extra > 0 and not st.remote_ended:
                self.h2_connection.increment_flow_control_window(extra, stream_id)
        return self.pending_outbound_bytes > 0

    def admit(self, stream_id: int) -> None:
        """A held stream's bytes stop counting against the shared budget (`ProtocolLimits.held_budget`)."""
        st = self._inbound.get(stream_id)
        if st is not None:
            st.uncharge()

    def release_inbound(self) -> None:
        """The connection is over: whatever its streams still hold leaves the shared budgets."""
        for st in self._inbound.values():
            before = st.buffered
            st.discard()
            self._account(st, before)
            st.uncharge()

    def release(self) -> None:
        """The connection is over and its streams are done: drop the references h2 keeps to itself
        (its frame dispatch table of its own bound methods, and our `receive_data` wrapper on the
        instance), so that the connection's objects are freed as soon as it is, by reference counting,
        instead of waiting for a full garbage collection (docs/design.md#no-cycles-per-connection)."""
        h2_connection = self.h2_connection
        h2_connection.__dict__.pop("receive_data", None)
        table = getattr(h2_connection, "_frame_dispatch_table", None)
        if isinstance(table, dict):
            table.clear()

    def stream_buffered_bytes(self, stream_id: int) -> int:
        st = self._inbound.get(stream_id)
        return st.buffered if st is not None else 0

    def stream_withheld_bytes(self, stream_id: int) -> int:
        st = self._inbound.get(stream_id)
        return st.withheld if st is not None else 0

    @property
    def open_streams(self) -> int:
        return len(self._inbound)

    # ---- bytes out

    def send_window(self, stream_id: int) -> int:
        """How many bytes may go in the next DATA frame (flow control and frame size).
        Raises h2's StreamClosedError/NoSuchStreamError once the stream is closed."""
        window: int = self.flow_control_window(stream_id)
        return window

    def finish(self, stream_id: int, status: Status | None, *, response_started: bool, abort: bool = False) -> bool:
        """End a stream and forget it. `status` None: send nothing (the stream is already gone).
        `abort`: RST_STREAM(CANCEL) instead of trailers (a message was cut off mid-way).
        Returns True if something was queued for sending."""
        st = self._inbound.pop(stream_id, None)
        if st is None:
            return False
        before = st.buffered
        st.discard()
        self._account(st, before)
        try:
            if status is None or st.reset_code is not None:
                return False
            if abort:
                self.h2_connection.reset_stream(stream_id, ErrorCodes.CANCEL)
                return True
            self.h2_connection.send_headers(
                stream_id, status_trailers(status, response_started=response_started), end_stream=True
            )
            if not st.remote_ended:
                # RFC 9113 8.1: the response is complete, so ask the client to stop sending without error.
                self.h2_connection.reset_stream(stream_id, ErrorCodes.NO_ERROR)
            return True
        except h2.exceptions.ProtocolError:
            # The stream (or connection) closed underneath us, e.g. a RST_STREAM still in our read buffer.
            return False
        finally:
            self._credit_withheld(stream_id, st)

    def goaway(self) -> bool:
        """Queue GOAWAY(NO_ERROR) once. False if one was already sent or the client went away."""
        if self.goaway_sent or self.peer_went_away:
            return False
        self.goaway_sent = True
        try:
            self.h2_connection.close_connection(ErrorCodes.NO_ERROR)
        except h2.exceptions.ProtocolError:
            return False
        return True

    @property
    def pending_outbound_bytes(self) -> int:
        return len(self._outbound)

    def data_to_send(self, amount: int | None = None) -> bytes:
        return self._outbound.take(amount)
