"""One lean peer: a TLS connection, HTTP/2 (h2) and one `Connect` stream, in one Trio task.

Leaner than grpcio's or purerpc's client, so one load process holds thousands: the peer's only task
reads; whoever sends writes inline under the peer's send lock and never holds it while waiting for
flow-control window. Messages carry a wall-clock stamp (`time.time_ns()`) in their `request_id`, so
latency can be computed wherever they end up (a Kafka record, a bare server).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Sequence
from typing import Final

import h2.config
import h2.connection
import h2.errors
import h2.events
import trio

from edge.proto import CONNECT_PATH, pb

STREAM_ID: Final = 1
RECEIVE_CHUNK: Final = 64 * 1024
REQUEST_HEADERS: Final = [
    (":method", "POST"),
    (":scheme", "https"),
    (":path", CONNECT_PATH),
    (":authority", "localhost"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
]


def frame(payload: bytes) -> bytes:
    """One gRPC length-prefixed message, uncompressed."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def unframe(buffer: bytearray) -> list[bytes]:
    """Take every complete gRPC message off the front of `buffer` (which keeps the rest)."""
    messages = []
    while len(buffer) >= 5:
        length = int.from_bytes(buffer[1:5], "big")
        if len(buffer) < 5 + length:
            break
        messages.append(bytes(buffer[5 : 5 + length]))
        del buffer[: 5 + length]
    return messages


def stamp_of(request_id: str) -> int:
    """The send time (ns) a bench `request_id` ends with: "<kind><n>-<seq>-<time_ns>"."""
    return int(request_id.rsplit("-", 1)[1])


def client_ssl_context(ca_path: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_path)
    context.set_alpn_protocols(["h2"])
    return context


class RegistrationFailed(Exception):
    pass


class Peer:
    """One peer. `run` connects, registers and then reads until the connection ends."""

    def __init__(self, peer_id: str, on_message: Callable[[Peer, pb.EdgeMessage, int], None]) -> None:
        self.peer_id = peer_id
        self.on_message = on_message
        self.registered = trio.Event()
        self.ended = trio.Event()
        self.end_reason: str | None = None
        self.ended_ns: int | None = None
        self.grpc_status: int | None = None
        self._h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self._stream: trio.abc.Stream | None = None
        self._send_lock = trio.Lock()
        self._window = trio.Event()
        self._buffer = bytearray()

    async def run(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        registration: bytes,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Connect, register, report started, then read until the end. A failure before
        registration raises; after it, it only marks the peer ended (one peer never stops the load)."""
        tcp = await trio.open_tcp_stream(host, port)
        stream: trio.abc.Stream = tcp
        try:
            if ssl_context is not None:
                stream = trio.SSLStream(tcp, ssl_context, server_hostname="localhost")
                await stream.do_handshake()
            self._stream = stream
            self._h2.initiate_connection()
            self._h2.send_headers(STREAM_ID, REQUEST_HEADERS)
            self._h2.send_data(STREAM_ID, frame(registration))
            await self._flush()
            while not self.registered.is_set():
                if not await self._read_once():
                    raise RegistrationFailed(self.end_reason or "stream ended before registration")
            task_status.started()
            try:
                while await self._read_once():
                    pass
            except Exception as error:  # noqa: BLE001 - the boundary of this peer's task
                self._end(f"error: {type(error).__name__}: {error}")
        finally:
            self._end(self.end_reason or "closed")
            await trio.aclose_forcefully(stream)

    async def _read_once(self) -> bool:
        """Read and handle one chunk; False once the connection is over."""
        assert self._stream is not None
        try:
            data = await self._stream.receive_some(RECEIVE_CHUNK)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            self._end(f"connection lost ({error.__cause__ or error})")
            return False
        if not data:
            self._end("connection closed by server")
            return False
        now = time.time_ns()
        for event in self._h2.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                self._buffer += event.data
                for payload in unframe(self._buffer):
                    self._dispatch(pb.EdgeMessage.FromString(payload), now)
            elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                self._window.set()
            elif isinstance(event, h2.events.TrailersReceived):
                status = dict(event.headers).get("grpc-status")
                self.grpc_status = int(status) if status is not None else None
            elif isinstance(event, h2.events.StreamReset):
                self._end(f"stream reset by server ({event.error_code})")
            elif isinstance(event, h2.events.StreamEnded):
                self._end(f"grpc-status {self.grpc_status}")
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._end(f"goaway ({event.error_code})")
        data = self._h2.data_to_send()  # acks and window updates; frames are whole, order is free
        if data:
            async with self._send_lock:
                await self._stream.send_all(data)
        return True

    def _dispatch(self, message: pb.EdgeMessage, now: int) -> None:
        if message.WhichOneof("payload") == "registration_response" and not self.registered.is_set():
            if not message.registration_response.success:
                self._end(f"refused: {message.registration_response.error_message}")
                raise RegistrationFailed(self.end_reason)
            self.registered.set()
            return
        self.on_message(self, message, now)

    def _end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended_ns = time.time_ns()
            self.ended.set()
            self._window.set()  # wake a sender waiting for window

    async def _flush(self) -> None:
        async with self._send_lock:
            data = self._h2.data_to_send()
            if data and self._stream is not None:
                await self._stream.send_all(data)

    async def send(self, payloads: Sequence[bytes]) -> None:
        """Send `payloads` as gRPC messages in order, waiting for flow-control window as needed.
        Raises trio.BrokenResourceError once the stream has ended."""
        pending = list(payloads)
        while pending:
            if self.ended.is_set():
                raise trio.BrokenResourceError(self.end_reason)
            async with self._send_lock:
                if self.ended.is_set():  # checked again: the reader may have seen the end meanwhile
                    raise trio.BrokenResourceError(self.end_reason)
                while pending and self._h2.local_flow_control_window(STREAM_ID) >= len(pending[0]) + 5:
                    self._h2.send_data(STREAM_ID, frame(pending.pop(0)))
                data = self._h2.data_to_send()
                if data:
                    assert self._stream is not None
                    await self._stream.send_all(data)
            if pending:
                # Replaced only once set: a sender (heartbeats beside a flood) that replaced the event
                # another one waits on would leave that one waiting for ever.
                if self._window.is_set():
                    self._window = trio.Event()
                if self._h2.local_flow_control_window(STREAM_ID) < len(pending[0]) + 5:
                    await self._window.wait()

    async def reset(self) -> int:
        """Reset the stream (RST_STREAM CANCEL), keeping the connection; the wall time it was sent."""
        async with self._send_lock:
            self._h2.reset_stream(STREAM_ID, h2.errors.ErrorCodes.CANCEL)
            sent_ns = time.time_ns()
            assert self._stream is not None
            await self._stream.send_all(self._h2.data_to_send())
        self._end("reset by this peer")
        return sent_ns

    async def close(self) -> None:
        """GOAWAY and close; the reader ends."""
        with trio.move_on_after(5):
            try:
                async with self._send_lock:
                    self._end(self.end_reason or "closed by this peer")  # later sends raise BrokenResourceError
                    self._h2.close_connection()
                    if self._stream is not None:
                        await self._stream.send_all(self._h2.data_to_send())
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        if self._stream is not None:
            await trio.aclose_forcefully(self._stream)


# ------------------------------------------------------------------------------------- messages


def registration(peer_id: str, catalog_size: int) -> bytes:
    catalog = [f"{peer_id}-c{i:05d}" for i in range(catalog_size)]
    return pb.PeerMessage(
        request_id=f"reg-{peer_id}",
        registration_request=pb.PeerRegistrationRequest(peer_name=peer_id, catalog_uuids=catalog),
    ).SerializeToString()


def heartbeat() -> bytes:
    return pb.PeerMessage(heartbeat=pb.Heartbeat(sent_at_unix_ms=time.time_ns() // 1_000_000)).SerializeToString()


class HashResponses:
    """file_hash_response messages of realistic size, each stamped with its send time."""

    def __init__(self, peer_index: int) -> None:
        self._prefix = f"e{peer_index}-"
        self._seq = 0
        self._message = pb.PeerMessage(
            file_hash_response=pb.FileHashResponse(
                catalog_uuid="6f1c2a1e-8d1b-4a53-9a55-%012d" % peer_index,
                hashes={"sha256": "ab" * 32, "md5": "cd" * 16},
            )
        )

    def next(self) -> bytes:
        self._seq += 1
        self._message.request_id = f"{self._prefix}{self._seq}-{time.time_ns()}"
        return self._message.SerializeToString()
