"""The server side of one gRPC-over-HTTP/2 connection, sans I/O.

`GrpcServerProtocol` subclasses purerpc's `GRPCConnection` (which wraps h2's `H2Connection`) and fixes,
in this layer, what purerpc's server gets wrong (RISKS.md 1, 4, 5):

* a client's RST_STREAM and GOAWAY become events (`StreamResetByPeer`, `PeerGoingAway`) instead of being
  dropped;
* each stream keeps its own bounded queue of complete messages. Bytes are acknowledged to the peer (HTTP/2
  WINDOW_UPDATE) as they are buffered, so one message larger than the flow-control window still gets
  through, and acknowledging stops while the queue is full, so a slow handler pushes back on its client
  through HTTP/2 flow control instead of growing memory. Per stream the buffer holds at most about
  `stream_inbound_queue * max_message_bytes + max_message_bytes + stream_window_bytes`;
* a message's declared length is checked before its body is buffered; an oversized, undecodable or
  over-decompressing message fails *that stream only* (`StreamReadable` + the error from `next_message`),
  never the connection;
* windows, concurrent streams and header-list size come from `ProtocolLimits`, not purerpc's constants
  (64 MiB windows, 65,536 streams);
* with `ProtocolLimits.message_meter`, every stream's messages are counted as they *arrive* (not as the
  handler gets round to them) by a meter of the caller's; over its limit the stream fails with
  `RateLimited` after the messages that arrived within it. Time during which the server itself held the
  stream back (its queue full, acknowledgements withheld) is reported to the meter (`held`/`released`),
  so a client is not blamed for the backlog a slow handler made it build;
* late WINDOW_UPDATE/RST_STREAM frames for streams that already closed are dropped before h2 3.2 can
  turn them into a connection error (`_LateFrameSplitter`), and request headers are decoded per request,
  so non-UTF-8 metadata fails that call, not the connection. Client trailers and HEADERS-with-END_STREAM
  requests (zero messages) are accepted, where purerpc would fail the connection.

Known h2 3.2 limits kept as they are: a client that opens more streams than MAX_CONCURRENT_STREAMS, or
sends a header list over MAX_HEADER_LIST_SIZE, gets a connection error (GOAWAY) rather than a stream
error. Well-behaved clients (grpcio) never do either.

Nothing here awaits: the Trio shell in `server.py` moves bytes in (`receive_data`) and out
(`data_to_send`) and wakes tasks on the returned events. Tests drive it with a plain h2 client.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable
from typing import Final, Protocol

import attrs
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

from edge.grpc.errors import ProtocolViolation, RateLimited, StreamError, StreamReset
from edge.grpc.framing import ACCEPTED_ENCODINGS, MessageParser, percent_encode_message

#: HTTP/2's initial connection window (RFC 9113 6.9.2); SETTINGS never change it, WINDOW_UPDATE does.
H2_DEFAULT_WINDOW: Final = 65_535
MAX_WINDOW: Final = 2**31 - 1


class InboundMeter(Protocol):
    """Counts one stream's inbound messages (times are the caller's clock, e.g. trio.current_time())."""

    def message(self, now: float) -> bool:
        """One message arrived; False if that is over the limit."""

    def held(self, now: float) -> None:
        """The server started holding the stream back (queue full)."""

    def released(self, now: float) -> None:
        """The server stopped holding it back."""

    def exceeded_message(self) -> str:
        """Text for the client once over the limit (no exception text: numbers and fixed words)."""


@attrs.frozen
class ProtocolLimits:
    """Bounds for one connection. Built from `GrpcServerConfig`."""

    max_message_bytes: int
    max_concurrent_streams: int
    stream_inbound_queue: int
    stream_window_bytes: int
    max_header_list_bytes: int
    #: Makes each stream's inbound meter (given the time the stream started); None: no rate limit.
    message_meter: Callable[[float], InboundMeter] | None = None

    @property
    def connection_window_bytes(self) -> int:
        """Room for every stream to hold back a full window at once and one more to keep moving: a
        stalled stream can never starve its neighbours of connection-level window."""
        return min(MAX_WINDOW, (self.max_concurrent_streams + 1) * self.stream_window_bytes)


# ---------------------------------------------------------------------------------------------- events


@attrs.frozen
class Request:
    """A validated gRPC request's headers."""

    stream_id: int
    path: str
    metadata: tuple[tuple[str, str | bytes], ...]
    authority: str | None
    message_encoding: str | None
    timeout: float | None  # seconds, from grpc-timeout


@attrs.frozen
class RequestStarted:
    request: Request


@attrs.frozen
class RequestRejected:
    """Headers that are not a gRPC request; already answered with `status`, no handler needed."""

    stream_id: int
    status: Status = attrs.field(eq=False)
    reason: str


@attrs.frozen
class StreamReadable:
    """A message, the end of the request stream, or a stream error is ready for `next_message`."""

    stream_id: int


@attrs.frozen
class StreamResetByPeer:
    stream_id: int
    error_code: int


@attrs.frozen
class SendWindowOpened:
    """More may be sent on `stream_id` (0: on every stream)."""

    stream_id: int


@attrs.frozen
class PeerSettingsReceived:
    """The client's SETTINGS arrived (the first one completes its connection preface)."""


@attrs.frozen
class PeerGoingAway:
    """The client sent GOAWAY. h2 cannot send anything after that, so every stream is over."""

    error_code: int
    last_stream_id: int


Event = (
    RequestStarted
    | RequestRejected
    | StreamReadable
    | StreamResetByPeer
    | SendWindowOpened
    | PeerSettingsReceived
    | PeerGoingAway
)


class _Pending(enum.Enum):
    NOT_READY = "not ready"


#: `next_message` result: nothing to hand out yet, wait for `StreamReadable`.
NOT_READY: Final = _Pending.NOT_READY


@attrs.define
class _InboundStream:
    parser: MessageParser
    queue: collections.deque[bytes] = attrs.field(factory=collections.deque)
    queued_bytes: int = 0
    withheld: int = 0  # flow-controlled bytes received but not yet acknowledged to the peer
    remote_ended: bool = False
    reset_code: int | None = None
    failure: StreamError | None = None
    meter: InboundMeter | None = None
    held: bool = False  # acknowledgements withheld because the queue is full (meter told)
    arrived: int = 0  # messages that arrived within the meter's limit
    extracted: int = 0  # messages cut out of the parser into the queue
    #: Once over the rate: deliver the first `cutoff` messages, then fail with `over_limit`.
    cutoff: int | None = None
    over_limit: StreamError | None = None

    @property
    def buffered(self) -> int:
        return self.queued_bytes + self.parser.buffered_bytes


# ---------------------------------------------------------------------------------- late-frame filter

_CLIENT_PREFACE_BYTES: Final = 24  # b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FRAME_HEADER_BYTES: Final = 9
_RST_STREAM: Final = 0x3
_WINDOW_UPDATE: Final = 0x8
_MAX_HELD_PAYLOAD: Final = 16  # both frame types have 4-byte payloads; anything bigger is h2's to reject


class _LateFrameSplitter:
    """Cuts the inbound byte stream so each stream-level RST_STREAM / WINDOW_UPDATE frame is its own piece.

    Why: RFC 9113 5.1 says a peer may still send WINDOW_UPDATE or RST_STREAM for a stream shortly after
    it closed, and those must be ignored. h2 3.2 (pinned by purerpc) instead raises a *connection* error
    for them once it has forgotten the closed stream (which it does whenever a new stream is opened), so a
    late WINDOW_UPDATE from grpcio would kill every other stream on the connection. Feeding these frames
    to h2 one by one lets `GrpcServerProtocol` drop the ones addressed to closed streams, deciding with
    h2's state as it is at that exact frame. Everything else passes through in as few pieces as possible.
    """

    __slots__ = ("_header", "_held", "_held_need", "_held_stream", "_passthrough", "_preface_left")

    def __init__(self) -> None:
        self._preface_left = _CLIENT_PREFACE_BYTES
        self._passthrough = 0  # payload bytes of the current ordinary frame still to pass on
        self._header = bytearray()  # a frame header split across reads
        self._held: bytearray | None = None  # a RST_STREAM/WINDOW_UPDATE frame being collected
        self._held_need = 0
        self._held_stream = 0

    def split(self, data: bytes) -> list[tuple[bytes, int | None]]:
        """Pieces in order: (bytes, None) to pass on, or (one whole frame, its stream id)."""
        pieces: list[tuple[bytes, int | None]] = []
        size = len(data)
        run_start = 0
        i = 0
        while i < size:
            if self._preface_left:
                step = min(self._preface_left, size - i)
                self._preface_left -= step
                i += step
                continue
            if self._passthrough:
                step = min(self._passthrough, size - i)
                self._passthrough -= step
                i += step
                continue
            if self._held is not None:
                step = min(self._held_need - len(self._held), size - i)
                self._held += data[i : i + step]
                i += step
                run_start = i
                if len(self._held) == self._held_need:
                    pieces.append((bytes(self._held), self._held_stream))
                    self._held = None
                continue
            # At a frame boundary.
            if self._header or size - i < _FRAME_HEADER_BYTES:
                if i > run_start:
                    pieces.append((data[run_start:i], None))
                step = min(_FRAME_HEADER_BYTES - len(self._header), size - i)
                self._header += data[i : i + step]
                i += step
                run_start = i
                if len(self._header) < _FRAME_HEADER_BYTES:
                    continue
                header = bytes(self._header)
                self._header.clear()
                in_run = False
            else:
                header = data[i : i + _FRAME_HEADER_BYTES]
                in_run = True
            length = int.from_bytes(header[0:3], "big")
            frame_type = header[3]
            stream_id = int.from_bytes(header[5:9], "big") & 0x7FFF_FFFF
            if frame_type in (_RST_STREAM, _WINDOW_UPDATE) and stream_id and length <= _MAX_HELD_PAYLOAD:
                if in_run:
                    if i > run_start:
                        pieces.append((data[run_start:i], None))
                    i += _FRAME_HEADER_BYTES
                    run_start = i
                self._held = bytearray(header)
                self._held_need = _FRAME_HEADER_BYTES + length
                self._held_stream = stream_id
                if length == 0:
                    pieces.append((bytes(self._held), stream_id))
                    self._held = None
            else:
                if in_run:
                    i += _FRAME_HEADER_BYTES
                else:
                    pieces.append((header, None))
                self._passthrough = length
        if run_start < size:
            pieces.append((data if run_start == 0 else data[run_start:], None))
        return pieces


# -------------------------------------------------------------------------------------------- protocol


class GrpcServerProtocol(GRPCConnection):
    """purerpc's sans-IO gRPC connection, made safe for long-lived streams from untrusted clients."""

    def __init__(self, limits: ProtocolLimits) -> None:
        self.limits = limits
        self._inbound: dict[int, _InboundStream] = {}
        self._outbound = bytearray()
        #: Bytes held for handlers right now, over all streams (queued messages + partial ones).
        self.inbound_buffered_bytes = 0
        #: The most any single stream has held at once.
        self.max_stream_buffered_bytes = 0
        self.goaway_sent = False
        self.peer_went_away = False
        self._now = 0.0  # the time given to the receive_data call being processed
        self._splitter = _LateFrameSplitter()
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

    # ---- settings and windows (purerpc: 64 MiB windows, 65,536 streams, fixed header list size)

    def _set_h2_connection_local_settings(self) -> None:
        limits = self.limits
        self.h2_connection.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                SettingCodes.INITIAL_WINDOW_SIZE: limits.stream_window_bytes,
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

    def receive_data(self, data: bytes, now: float = 0.0) -> list[Event]:
        """Feed bytes from the socket that arrived at `now` (for message meters). h2's ProtocolError
        (connection-fatal) propagates; h2 has then already queued its GOAWAY."""
        self._now = now
        events: list[Event] = []
        try:
            for piece, late_frame_stream in self._splitter.split(data):
                if late_frame_stream is not None and self._stream_is_closed(late_frame_stream):
                    continue  # RFC 9113 5.1: ignore WINDOW_UPDATE/RST_STREAM on a closed stream
                events.extend(super().receive_data(piece))
        except h2.exceptions.ProtocolError:
            self.goaway_sent = True
            raise
        return events

    def _stream_is_closed(self, stream_id: int) -> bool:
        """A client stream h2 has seen open and that is closed now (or was skipped, so implicitly closed)."""
        h2c = self.h2_connection
        if stream_id % 2 == 0 or stream_id > h2c.highest_inbound_stream_id:
            return False
        stream = h2c.streams.get(stream_id)
        return stream is None or stream.closed

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
        self._inbound[stream_id] = _InboundStream(
            parser=MessageParser(self.limits.max_message_bytes, parsed.message_encoding),
            meter=make_meter(self._now) if make_meter is not None else None,
        )
        # With END_STREAM on the HEADERS, h2 also emits StreamEnded, handled by _stream_ended.
        return [RequestStarted(request)]

    def _answer_unaccepted(self, stream_id: int, status: Status, *, remote_ended: bool) -> None:
        self.h2_connection.send_headers(stream_id, self._trailers(status, response_started=False), end_stream=True)
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
            self._meter(st, arrived)
        self._extract(st)
        if len(st.queue) < self.limits.stream_inbound_queue and st.failure is None and st.cutoff is None:
            if length:
                self.h2_connection.acknowledge_received_data(length, stream_id)
        else:
            st.withheld += length
            if st.meter is not None and not st.held and st.failure is None and st.cutoff is None:
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
        self._extract(st)
        self._account(st, before)
        return [StreamReadable(event.stream_id)]

    def _stream_reset(self, event: h2.events.StreamReset) -> list[Event]:
        st = self._inbound.get(event.stream_id)
        if st is None:
            return []
        before = st.buffered
        st.reset_code = int(event.error_code)
        st.queue.clear()
        st.queued_bytes = 0
        st.parser.discard()
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

    def _meter(self, st: _InboundStream, arrived: int) -> None:
        assert st.meter is not None
        for _ in range(arrived):
            if not st.meter.message(self._now):
                st.cutoff = st.arrived
                st.over_limit = RateLimited(st.meter.exceeded_message())
                return
            st.arrived += 1

    @property
    def every_stream_over_its_rate(self) -> bool:
        """True when the connection has streams and every one was cut off by its message meter: nothing
        more the client sends can be used, so the shell stops reading it."""
        return bool(self._inbound) and all(st.cutoff is not None for st in self._inbound.values())

    def _extract(self, st: _InboundStream) -> None:
        """Cut complete messages out of the raw bytes until the queue is full."""
        while st.failure is None and len(st.queue) < self.limits.stream_inbound_queue:
            if st.cutoff is not None and st.extracted >= st.cutoff:
                assert st.over_limit is not None
                self._fail(st, st.over_limit)
                return
            try:
                message = st.parser.next_message()
            except StreamError as exc:
                self._fail(st, exc)
                return
            if message is None:
                if st.remote_ended and st.parser.mid_message:
                    self._fail(st, ProtocolViolation("request stream ended inside a message"))
                return
            st.queue.append(message)
            st.queued_bytes += len(message)
            st.extracted += 1

    def _fail(self, st: _InboundStream, exc: StreamError) -> None:
        # Messages queued before the bad one are still delivered; then the error.
        st.failure = exc
        st.parser.discard()

    def _account(self, st: _InboundStream, before: int) -> None:
        after = st.buffered
        self.inbound_buffered_bytes += after - before
        if after > self.max_stream_buffered_bytes:
            self.max_stream_buffered_bytes = after

    def _credit_withheld(self, stream_id: int, st: _InboundStream) -> None:
        if st.withheld:
            # On a closed stream h2 credits only the connection window, which is what we want.
            self.h2_connection.acknowledge_received_data(st.withheld, stream_id)
            st.withheld = 0

    def next_message(self, stream_id: int, now: float | None = None) -> bytes | None | _Pending:
        """The next message body; None once the client half-closed and everything was handed out;
        NOT_READY if there is nothing yet. Raises StreamReset after RST_STREAM, and the stream's
        StreamError (after the messages queued before it). `now` (the caller's clock) tells the
        stream's meter when the server stops holding the stream back."""
        st = self._inbound[stream_id]
        if st.reset_code is not None:
            raise StreamReset(st.reset_code)
        if st.queue:
            before = st.buffered
            message = st.queue.popleft()
            st.queued_bytes -= len(message)
            self._extract(st)
            if (
                st.withheld
                and st.failure is None
                and st.cutoff is None
                and len(st.queue) < self.limits.stream_inbound_queue
            ):
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
        return self.flow_control_window(stream_id)

    def finish(self, stream_id: int, status: Status | None, *, response_started: bool, abort: bool = False) -> bool:
        """End a stream and forget it. `status` None: send nothing (the stream is already gone).
        `abort`: RST_STREAM(CANCEL) instead of trailers (a message was cut off mid-way).
        Returns True if something was queued for sending."""
        st = self._inbound.pop(stream_id, None)
        if st is None:
            return False
        before = st.buffered
        st.queue.clear()
        st.queued_bytes = 0
        st.parser.discard()
        self._account(st, before)
        try:
            if status is None or st.reset_code is not None:
                return False
            if abort:
                self.h2_connection.reset_stream(stream_id, ErrorCodes.CANCEL)
                return True
            self.h2_connection.send_headers(
                stream_id, self._trailers(status, response_started=response_started), end_stream=True
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

    @staticmethod
    def _trailers(status: Status, *, response_started: bool) -> list[tuple[str, str]]:
        fields: list[tuple[str, str]] = []
        if not response_started:  # "trailers-only" response: one HEADERS frame with everything
            fields += [
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("grpc-accept-encoding", ",".join(ACCEPTED_ENCODINGS)),
            ]
        fields.append(("grpc-status", str(status.int_value)))
        if status.status_message:
            fields.append(("grpc-message", percent_encode_message(status.status_message)))
        return fields

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

    def _pull(self) -> None:
        data = self.h2_connection.data_to_send()
        if data:
            self._outbound += data

    @property
    def pending_outbound_bytes(self) -> int:
        self._pull()
        return len(self._outbound)

    def data_to_send(self, amount: int | None = None) -> bytes:
        self._pull()
        if amount is None or amount >= len(self._outbound):
            data = bytes(self._outbound)
            self._outbound.clear()
            return data
        data = bytes(self._outbound[:amount])
        del self._outbound[:amount]
        return data
