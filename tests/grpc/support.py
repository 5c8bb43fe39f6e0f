"""Helpers for the transport tests: a raw-bytes grpcio method, socket counting from /proc, a raw h2 client.

The running server itself is `testing.harness.running_server`."""

from __future__ import annotations

import os
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio

# -------------------------------------------------------------------------------------------- grpcio


def bytes_stream_method(channel: Any, path: str) -> Any:
    """A stream-stream method whose messages are raw bytes (works for sync and aio channels)."""
    return channel.stream_stream(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)


# ------------------------------------------------------------------------------------------- sockets

_TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


def own_tcp_sockets(port: int) -> dict[str, list[str]]:
    """This process's open TCP sockets on `port`, by role: {"server": [states], "client": [states],
    "listen": [...]}. Read from /proc/self/fd and /proc/net/tcp{,6} (no psutil)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found: dict[str, list[str]] = {"server": [], "client": [], "listen": []}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            state = _TCP_STATES.get(fields[3], fields[3])
            if fields[9] not in inodes:
                continue
            if local_port == port:
                found["listen" if state == "LISTEN" else "server"].append(state)
            elif remote_port == port:
                found["client"].append(state)
    return found


async def wait_for(predicate: Any, *, timeout: float = 10.0, poll: float = 0.01) -> None:
    """For conditions outside Trio's reach (the kernel's socket table): poll under a deadline."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(poll)


# ------------------------------------------------------------------------------------ raw h2 client


class RawH2Client:
    """A bare h2 client over any Trio stream, for what grpcio will not do on purpose (bad framing,
    pings, exact flow-control bookkeeping) and for MockClock tests over memory streams."""

    #: A test peer treats a broken connection as closed instead of raising (RawH2Client raises).
    tolerant = False

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.events: list[h2.events.Event] = []
        self.data: dict[int, bytearray] = {}
        self.headers: dict[int, list[dict[str, str]]] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.closed = False
        self._changed = trio.Event()
        self._send_lock = trio.Lock()

    async def start(self) -> None:
        self.h2.initiate_connection()
        await self.flush()

    async def flush(self) -> None:
        async with self._send_lock:
            data = self.h2.data_to_send()
            if data:
                await self.stream.send_all(data)

    async def send_bytes(self, data: bytes) -> None:
        """Raw bytes on the wire, bypassing h2 (for protocol violations)."""
        async with self._send_lock:
            await self.stream.send_all(data)

    def open_call(self, path: str, *, extra_headers: tuple[tuple[str, str], ...] = (), end: bool = False) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "test"),
            ("te", "trailers"),
            ("content-type", "application/grpc"),
            *extra_headers,
        ]
        self.h2.send_headers(stream_id, headers, end_stream=end)
        return stream_id

    def send_raw(self, stream_id: int, payload: bytes, *, end: bool = False) -> None:
        """DATA, split to the peer's frame size; caller makes sure the window allows it."""
        size = self.h2.max_outbound_frame_size
        view = memoryview(payload)
        for start in range(0, max(len(payload), 1), size):
            chunk = bytes(view[start : start + size])
            last = start + size >= len(payload)
            self.h2.send_data(stream_id, chunk, end_stream=end and last)

    async def pump(self) -> bool:
        """Read once and process; False at EOF (or, for a `tolerant` client, a broken connection)."""
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.closed = True
            self._notify()
            return False
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.H2Error:
            if not self.tolerant:
                raise
            self.closed = True
            self._notify()
            return False
        for event in events:
            self.events.append(event)
            if isinstance(event, h2.events.DataReceived):
                self.data.setdefault(event.stream_id, bytearray()).extend(event.data)
                self._data_received(event)
            elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                self.headers.setdefault(event.stream_id, []).append(dict(event.headers))
            elif isinstance(event, h2.events.StreamEnded):
                self.ended.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.resets[event.stream_id] = int(event.error_code)
        try:
            await self.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if not self.tolerant:
                raise
        self._notify()
        return True

    def _data_received(self, event: h2.events.DataReceived) -> None:
        """Flow control: give the window back at once, as a client that keeps reading does."""
        self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)

    async def run(self) -> None:
        """Keep reading until EOF, then close our side as a real client does (start in a nursery)."""
        while await self.pump():
            pass
        await self.stream.aclose()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Any) -> None:
        while not predicate():
            if self.closed:
                raise AssertionError("connection closed while waiting")
            await self._changed.wait()

    async def wait_closed(self) -> None:
        while not self.closed:
            await self._changed.wait()

    def trailers(self, stream_id: int) -> dict[str, str]:
        merged: dict[str, str] = {}
        for block in self.headers.get(stream_id, []):
            merged.update(block)
        return merged

    def messages(self, stream_id: int) -> list[bytes]:
        raw = bytes(self.data.get(stream_id, b""))
        out = []
        while raw:
            length = int.from_bytes(raw[1:5], "big")
            out.append(raw[5 : 5 + length])
            raw = raw[5 + length :]
        return out


def grpc_frame(body: bytes, *, compressed: bool = False) -> bytes:
    return bytes([1 if compressed else 0]) + len(body).to_bytes(4, "big") + body


def raw_frame(
    frame_type: int, payload: bytes = b"", *, flags: int = 0, stream_id: int = 0, length: int | None = None
) -> bytes:
    """One HTTP/2 frame as bytes, with any declared `length` (for frames h2 would refuse to write)."""
    declared = len(payload) if length is None else length
    return declared.to_bytes(3, "big") + bytes([frame_type, flags]) + stream_id.to_bytes(4, "big") + payload


def ping_frame(n: int = 0) -> bytes:
    return raw_frame(0x6, n.to_bytes(8, "big"))
