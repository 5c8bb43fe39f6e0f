"""Closing a connection never resets it under a client that has not read its last statuses yet.

Rules: real loopback TCP (the behaviour under test is the kernel's: closing a socket with unread inbound
bytes sends RST and throws away what was not yet transmitted), a raw h2 client whose socket has a small
receive buffer so the server's last bytes are still queued when it closes; waits for conditions under
deadlines, no sleeps.
"""

from __future__ import annotations

import socket

import h2.events
import trio

from edge.grpc import GrpcServerConfig, ServerStream, StatusCode
from edge.peers.limits import message_meter_factory
from testing.harness import running_server

from .support import RawH2Client, grpc_frame, own_tcp_sockets, wait_for

PATH = "/giggityflix.edge.v1.PeerEdgeService/Connect"
#: Response bytes the client leaves unread: more than its receive buffer, less than the server's send
#: buffer, so they (and the status after them) sit in the server's kernel when it closes.
RESPONSE_BYTES = 12_000
FLOOD_MESSAGES = 1000  # 100 bytes each: the server stops reading after the 10th, the rest stay unread


async def talk_then_read(stream: ServerStream) -> None:
    await stream.send_message(b"r" * RESPONSE_BYTES)
    while await stream.receive_message() is not None:
        pass


async def test_a_cut_off_client_that_reads_late_still_gets_its_status() -> None:
    """Over its message rate the client is told RESOURCE_EXHAUSTED and GOAWAY, and the server leaves the
    connection only after the client has read them and closed its side; no reset, though the server
    never read most of what the client sent."""
    config = GrpcServerConfig(
        host="127.0.0.1", port=0, ssl_context=None, message_meter=message_meter_factory(0.001, 10)
    )
    async with running_server(config, {PATH: talk_then_read}) as server:
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", server.port))
        client = RawH2Client(trio.SocketStream(sock))
        await client.start()
        with trio.fail_after(10):
            stream_id = client.open_call(PATH)
            await client.flush()
            # The server's window: the stream's grows from the initial 64 KiB once the server saw it.
            while client.h2.local_flow_control_window(stream_id) < FLOOD_MESSAGES * 105:
                assert await client.pump()
            client.send_raw(stream_id, grpc_frame(b"m" * 100) * FLOOD_MESSAGES)
            await client.flush()
            await server.stats.wait_until(lambda s: s.statuses["RESOURCE_EXHAUSTED"] == 1)
        # The server has finished with the connection (closed it, or shut down its write side and waits
        # for the client) before the client reads a byte of the response.
        await wait_for(lambda: "ESTABLISHED" not in own_tcp_sockets(server.port)["server"])
        with trio.fail_after(10):
            await client.run()
            await server.stats.wait_until(lambda s: s.connections_open == 0)
    assert client.messages(stream_id) == [b"r" * RESPONSE_BYTES]
    trailers = client.trailers(stream_id)
    assert trailers["grpc-status"] == str(StatusCode.RESOURCE_EXHAUSTED.value)
    assert any(isinstance(e, h2.events.ConnectionTerminated) for e in client.events)
    assert not any(isinstance(e, h2.events.StreamReset) and e.error_code != 0 for e in client.events)
