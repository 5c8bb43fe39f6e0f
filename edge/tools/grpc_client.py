"""A small Trio gRPC client over h2 (sans-IO), for the operator tools: many streams, little memory.

    connection = await connect("localhost", 50051, ssl_context=client_ssl_context(ca_path))
    nursery.start_soon(connection.serve)            # the reader; ends every stream when it ends
    stream = await connection.open_stream("/pkg.Service/Method")
    await stream.send_message(b"...")
    reply = await stream.receive_message()          # None once the server ended the stream
    stream.status                                   # (code, message) once ended

One reader task per connection feeds h2 and wakes the streams; writes go out under one lock. Inbound
bytes are acknowledged (WINDOW_UPDATE) while fewer than INBOUND_QUEUE_LIMIT messages wait unread, so
a stream whose owner stops reading holds at most that many messages and one flow-control window.
Outbound messages wait for the server's window. Only what the tools need: no compression, no client
deadlines, no keepalive.
"""

from __future__ import annotations

import collections
import ssl
from typing import Final
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.errors
import trio

from edge.grpc.late_frames import LateFrameSplitter

#: gRPC status codes by number (the ones the tools report by name).
STATUS_NAMES: Final = {
    0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
    10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
    15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}
UNAVAILABLE: Final = 14
CANCELLED: Final = 1
INTERNAL: Final = 13
RECEIVE_CHUNK: Final = 64 * 1024
#: Largest message accepted from the server (the edge's own default limit).
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
#: Complete messages a stream holds unread before it stops acknowledging (flow control takes over).
INBOUND_QUEUE_LIMIT: Final = 16


class StreamEnded(Exception):
    """The stream is over: the server sent its status, reset it, or the connection went away."""


class ClientStream:
    """One call. `send_message`/`close_send` from one task, `receive_message` from one task."""

    def __init__(self, connection: GrpcClientConnection, stream_id: int) -> None:
        self._connection = connection
        self.stream_id = stream_id
        self._buffer = bytearray()
        self._messages: collections.deque[bytes] = collections.deque()
        self._unacked = 0
        self._readable = trio.Event()
        self._writable = trio.Event()
        self._send_lock = trio.Lock()
        #: True once we half-closed: h2 turns any later send into a closed stream, so none is made.
        self.local_closed = False
        self.status: tuple[int, str] | None = None
        self.headers_received = False

    @property
    def ended(self) -> bool:
        return self.status is not None

    @property
    def status_name(self) -> str | None:
        return None if self.status is None else STATUS_NAMES.get(self.status[0], str(self.status[0]))

    async def send_message(self, data: bytes) -> None:
        """Send one message (any number of tasks may send; messages never interleave)."""
        async with self._send_lock:
            if self.local_closed:
                raise StreamEnded("stream already half-closed by us")
            await self._connection._send_message(self, b"\x00" + len(data).to_bytes(4, "big") + data)

    async def close_send(self) -> None:
        """Half-close: no more messages from us (END_STREAM). Waits for a message being sent."""
        async with self._send_lock:
            if not self.local_closed:
                self.local_closed = True
                await self._connection._end_stream(self)

    async def cancel(self) -> None:
        """Reset the stream (what a cancelled call does)."""
        await self._connection._reset_stream(self)

    async def receive_message(self) -> bytes | None:
        """The next message; None once the stream ended (see `status`)."""
        while True:
            if self._messages:
                message = self._messages.popleft()
                await self._connection._acknowledge(self, self._take_ack())
                return message
            if self.status is not None:
                await trio.lowlevel.checkpoint()
                return None
            event = self._readable
            await event.wait()

    async def wait_ended(self) -> tuple[int, str]:
        while self.status is None:
            event = self._readable
            await event.wait()
        return self.status

    # --- called by the connection

    def _data(self, data: bytes, flow_controlled: int) -> None:
        self._buffer += data
        self._unacked += flow_controlled
        while len(self._buffer) >= 5:
            length = int.from_bytes(self._buffer[1:5], "big")
            if length > MAX_MESSAGE_BYTES:
                self._end(INTERNAL, f"message of {length} bytes from server exceeds the limit")
                self._buffer.clear()
                return
            if len(self._buffer) < 5 + length:
                break
            self._messages.append(bytes(self._buffer[5 : 5 + length]))
            del self._buffer[: 5 + length]
        self._wake_reader()

    def _take_ack(self) -> int:
        """Bytes to acknowledge now: all received so far, unless enough messages wait unread."""
        if len(self._messages) >= INBOUND_QUEUE_LIMIT:
            return 0
        unacked, self._unacked = self._unacked, 0
        return unacked

    def _end(self, code: int, message: str) -> None:
        if self.status is None:
            self.status = (code, message)
        self._wake_reader()
        self._wake_writer()

    def _wake_reader(self) -> None:
        self._readable.set()
        self._readable = trio.Event()

    def _wake_writer(self) -> None:
        self._writable.set()
        self._writable = trio.Event()


class GrpcClientConnection:
    """One HTTP/2 connection. Run `serve()` in a nursery (open_grpc_connection does)."""

    def __init__(self, transport: trio.abc.Stream, authority: str) -> None:
        self._transport = transport
        self._authority = authority
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self._h2 = h2.connection.H2Connection(config)
        self._streams: dict[int, ClientStream] = {}
        self._write_lock = trio.Lock()
        self.closed_reason: str | None = None
        self.goaway_received = False
        self._closed = trio.Event()
        self._window_opened = trio.Event()
        # h2 3.2 turns a WINDOW_UPDATE/RST_STREAM for a stream it already closed into a connection
        # error; the server's transport has the same problem and the same cure (edge.grpc.late_frames).
        self._splitter = LateFrameSplitter(server_side=False)

    @property
    def is_open(self) -> bool:
        return self.closed_reason is None and not self.goaway_received

    async def start(self) -> None:
        self._h2.initiate_connection()
        await self._flush()

    async def serve(self) -> None:
        """Read until the connection ends; every open stream then ends with UNAVAILABLE."""
        reason = "closed by server"
        try:
            while True:
                try:
                    data = await self._transport.receive_some(RECEIVE_CHUNK)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    reason = f"connection lost ({exc.__cause__ or exc})"
                    break
                if not data:
                    break
                try:
                    for piece, late_frame_stream in self._splitter.split(data):
                        if late_frame_stream is not None and self._stream_is_closed(late_frame_stream):
                            continue  # RFC 9113 5.1: ignore WINDOW_UPDATE/RST_STREAM on a closed stream
                        for event in self._h2.receive_data(piece):
                            self._handle(event)
                except h2.exceptions.ProtocolError as exc:
                    reason = f"protocol error ({type(exc).__name__} {exc})"
                    break
                await self._flush()
        finally:
            self.closed_reason = reason
            for stream in list(self._streams.values()):
                stream._end(UNAVAILABLE, reason)
            self._streams.clear()
            self._closed.set()
            self._wake_senders()
            await trio.aclose_forcefully(self._transport)

    def _stream_is_closed(self, stream_id: int) -> bool:
        """A stream we opened that h2 has closed (and may have forgotten)."""
        if stream_id % 2 == 0 or stream_id > self._h2.highest_outbound_stream_id:
            return False
        stream = self._h2.streams.get(stream_id)
        return stream is None or stream.closed

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def aclose(self) -> None:
        """GOAWAY and close (bounded by the caller's deadline)."""
        if self.closed_reason is None:
            try:
                self._h2.close_connection()
                await self._flush()
            except (h2.exceptions.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        await trio.aclose_forcefully(self._transport)

    async def open_stream(self, path: str, metadata: tuple[tuple[str, str], ...] = ()) -> ClientStream:
        if not self.is_open:
            raise StreamEnded(self.closed_reason or "connection is going away")
        async with self._write_lock:
            stream_id = self._h2.get_next_available_stream_id()
            headers = [
                (":method", "POST"),
                (":scheme", "https"),
                (":path", path),
                (":authority", self._authority),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *metadata,
            ]
            stream = ClientStream(self, stream_id)
            self._streams[stream_id] = stream
            self._h2.send_headers(stream_id, headers)
            await self._write_pending()
        return stream

    # --- events

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._data(event.data, event.flow_controlled_length)
                acknowledge = stream._take_ack()
                if acknowledge:
                    self._h2.acknowledge_received_data(acknowledge, event.stream_id)
            elif event.flow_controlled_length:
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.ResponseReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.headers_received = True
                self._maybe_trailers(stream, event.headers)  # trailers-only response
        elif isinstance(event, h2.events.TrailersReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                self._maybe_trailers(stream, event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None:
                stream._end(INTERNAL, "stream ended without a grpc-status")
        elif isinstance(event, h2.events.StreamReset):
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None:
                stream._end(CANCELLED, f"stream reset by server (h2 error {event.error_code})")
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._wake_senders()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway_received = True
            for stream_id, stream in list(self._streams.items()):
                if stream_id > (event.last_stream_id or 0):
                    self._streams.pop(stream_id)
                    stream._end(UNAVAILABLE, "server went away before the stream started")

    def _maybe_trailers(self, stream: ClientStream, headers: list[tuple[bytes, bytes]]) -> None:
        fields = {bytes(k).decode("latin-1"): bytes(v).decode("utf-8", "replace") for k, v in headers}
        if "grpc-status" in fields:
            try:
                code = int(fields["grpc-status"])
            except ValueError:
                code = 2
            stream._end(code, unquote(fields.get("grpc-message", "")))
            self._streams.pop(stream.stream_id, None)
        elif fields.get(":status", "200") != "200":
            stream._end(UNAVAILABLE if fields[":status"] in ("502", "503", "504") else 2, f"HTTP {fields[':status']}")

    # --- writing

    async def _send_message(self, stream: ClientStream, frame: bytes) -> None:
        view = memoryview(frame)
        sent = 0
        while sent < len(view):
            if stream.ended or self.closed_reason is not None:
                raise StreamEnded(stream.status[1] if stream.status else self.closed_reason or "")
            async with self._write_lock:
                try:
                    window = min(self._h2.local_flow_control_window(stream.stream_id), self._h2.max_outbound_frame_size)
                except h2.exceptions.ProtocolError:
                    raise StreamEnded("stream closed") from None
                if window > 0:
                    chunk = bytes(view[sent : sent + window])
                    try:
                        self._h2.send_data(stream.stream_id, chunk)
                    except h2.exceptions.ProtocolError:
                        raise StreamEnded("stream closed") from None
                    sent += len(chunk)
                    await self._write_pending()
                    continue
            event = self._window_opened
            await event.wait()

    async def _end_stream(self, stream: ClientStream) -> None:
        async with self._write_lock:
            try:
                self._h2.end_stream(stream.stream_id)
            except h2.exceptions.ProtocolError:
                return
            await self._write_pending()

    async def _reset_stream(self, stream: ClientStream) -> None:
        async with self._write_lock:
            try:
                self._h2.reset_stream(stream.stream_id, h2.errors.ErrorCodes.CANCEL)
            except h2.exceptions.ProtocolError:
                return
            self._streams.pop(stream.stream_id, None)
            stream._end(CANCELLED, "cancelled by client")
            await self._write_pending()

    async def _acknowledge(self, stream: ClientStream, wire_bytes: int) -> None:
        if not wire_bytes or self.closed_reason is not None:
            return
        try:
            self._h2.acknowledge_received_data(wire_bytes, stream.stream_id)
        except h2.exceptions.ProtocolError:
            return
        await self._flush()

    async def _flush(self) -> None:
        async with self._write_lock:
            await self._write_pending()

    async def _write_pending(self) -> None:
        data = self._h2.data_to_send()
        if data and self.closed_reason is None:
            try:
                await self._transport.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the reader notices and ends every stream

    def _wake_senders(self) -> None:
        self._window_opened.set()
        self._window_opened = trio.Event()


def client_ssl_context(ca_path: str | None = None, *, verify: bool = True) -> ssl.SSLContext:
    """TLS for gRPC: ALPN h2, the given CA (or the system's), optionally no verification (demos)."""
    context = ssl.create_default_context(cafile=ca_path)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    return context


async def connect(
    host: str, port: int, *, ssl_context: ssl.SSLContext | None, server_name: str | None = None
) -> GrpcClientConnection:
    """Open TCP (+TLS) and send the HTTP/2 preface. Run `serve()` of the result in a nursery."""
    tcp = await trio.open_tcp_stream(host, port)
    transport: trio.abc.Stream = tcp
    opened = False
    try:
        if ssl_context is not None:
            tls = trio.SSLStream(tcp, ssl_context, server_hostname=server_name or host, https_compatible=True)
            await tls.do_handshake()
            if tls.selected_alpn_protocol() != "h2":
                raise OSError("server did not agree to HTTP/2 (ALPN h2)")
            transport = tls
        connection = GrpcClientConnection(transport, f"{server_name or host}:{port}")
        await connection.start()
        opened = True
    finally:
        if not opened:  # failed or cancelled half-way: the socket must not outlive us
            await trio.aclose_forcefully(transport)
    return connection
