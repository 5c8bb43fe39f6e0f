"""One accepted TCP socket made ready for a gRPC connection: its peer address and TCP keepalive.

Plain functions over a socket, called by the accept loop (`listeners.py`) before the connection's shell
(`connection.py`) takes the stream over; no task of their own.
"""

from __future__ import annotations

import socket
from typing import Any, Final

import trio

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
