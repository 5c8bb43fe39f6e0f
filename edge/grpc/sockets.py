"""One accepted TCP socket made ready for a gRPC connection: its peer address, TCP keepalive, and a
close that lets the client read what was sent last (`LingeringSocketStream`).

Plain functions and a stream wrapper, used by the accept loop (`listeners.py`) before the connection's
shell (`connection.py`) takes the stream over; no task of their own. `LingeringSocketStream.aclose`
runs in the task that closes the connection, under that task's deadline; cancelled, it closes the socket
at once.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, Final

import trio

#: Bytes read (and thrown away) per read while a closing connection waits for the client's EOF.
DRAIN_CHUNK: Final = 64 * 1024

#: TCP keepalive on accepted sockets: a backstop for dead peers (the application heartbeat is primary).
TCP_KEEPALIVE: Final = (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4))


def socket_peer_address(sock: trio.socket.SocketType) -> tuple[str, int] | None:
    try:
        address = sock.getpeername()
    except OSError:  # the client is already gone
        return None
    if isinstance(address, tuple) and len(address) >= 2:
        return (str(address[0]), int(address[1]))
    return None


def set_keepalive(sock: trio.socket.SocketType) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in TCP_KEEPALIVE:
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:
        pass  # best effort; a dead socket shows up on first use


def reset_and_close(sock: trio.socket.SocketType) -> None:
    """Close at once with a TCP reset (SO_LINGER 0): a refused socket leaves no FIN_WAIT or TIME_WAIT
    state behind on the edge, whatever the client does next."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # already dead: a plain close is all there is to do
    sock.close()


def find_remote_address(stream: trio.abc.Stream) -> tuple[str, int] | None:
    """The TCP peer under `stream` (through any SSLStream/StapledStream layers), if there is one."""
    seen = 0
    current: Any = stream
    while current is not None and seen < 8:
        sock = getattr(current, "socket", None)
        if sock is not None:
            return socket_peer_address(sock)
        current = getattr(current, "transport_stream", None)
        seen += 1
    return None


class LingeringSocketStream(trio.abc.HalfCloseableStream):
    """A `trio.SocketStream` whose `aclose` does not reset the connection under the client's feet.

    Closing a TCP socket that still has unread inbound bytes makes the kernel send RST at once and throw
    away whatever it has not yet transmitted: the final statuses and GOAWAY the edge just sent (a rate-
    limited client, whose bytes the reader no longer reads, was told "connection reset" instead of
    RESOURCE_EXHAUSTED). So `aclose` first shuts down the write side (FIN after everything sent), then
    reads and discards until the client closes its side or `linger` seconds pass (or the caller's own
    deadline, whichever is first), and only then closes the socket. Under TLS it sits below the
    `SSLStream`, whose close_notify goes out first.
    """

    def __init__(self, stream: trio.SocketStream, *, linger: float) -> None:
        self.transport_stream = stream
        self.socket = stream.socket
        self._linger = linger
        self._closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.transport_stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.transport_stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            with trio.move_on_after(self._linger):
                await self.transport_stream.send_eof()
                while await self.transport_stream.receive_some(DRAIN_CHUNK):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client is gone already: nothing left to protect
        finally:
            await self.transport_stream.aclose()


def release_tls_stream(stream: trio.abc.Stream) -> None:
    """After a `trio.SSLStream` is closed: drop the bound method of itself it keeps (the once-guard of
    its handshake), the one cycle that would keep a closed stream, its `SSLObject` and buffers and the
    socket below alive until a full garbage collection (docs/design.md#no-cycles-per-connection).
    Anything else is left as it is."""
    if isinstance(stream, trio.SSLStream) and hasattr(stream, "_handshook"):
        stream._handshook = None  # type: ignore[assignment]
